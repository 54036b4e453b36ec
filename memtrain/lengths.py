"""Batches of sequences of different lengths: right-padded to the longest, with `lengths` (B,) saying
where each row ends. Step t of row b is real when t < lengths[b]; memory s (after s inputs) is real
when s <= lengths[b]. Everything past a row's end is padding: its targets are unsupervised (-1), it is
never read by a loss, and it never moves a memory (`hold_after_end`: the memory after the last real
input is the row's memory from there on). `lengths=None` everywhere means every row is full length.

Legend: B batch, T steps (the longest row), S = T + 1 memories, Z memory size.
"""
from __future__ import annotations

import numpy as np
import torch


def check_lengths(lengths: torch.Tensor | None, B: int, T: int, what: str = "lengths") -> None:
    """Refuse lengths that are not B integers in 1..T."""
    if lengths is None:
        return
    if lengths.shape != (B,) or lengths.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"{what} must be {B} integers (one per sequence), got {tuple(lengths.shape)} {lengths.dtype}")
    if B and (int(lengths.min()) < 1 or int(lengths.max()) > T):
        raise ValueError(f"{what} must lie in 1..{T} (the padded length), got {int(lengths.min())}..{int(lengths.max())}")


def step_mask(lengths: torch.Tensor | None, B: int, T: int, device=None) -> torch.Tensor:
    """(B, T) True at the real steps t < lengths[b] (all True without lengths)."""
    if lengths is None:
        return torch.ones(B, T, dtype=torch.bool, device=device)
    return torch.arange(T, device=lengths.device)[None, :] < lengths[:, None]


def supervised(y: torch.Tensor) -> torch.Tensor:
    """(B, T) True at the steps with a target: token targets y (B, T) >= 0; real ones y (B, T, G) with a
    value that is not NaN."""
    return ~torch.isnan(y).all(-1) if y.is_floating_point() else y >= 0


def mask_targets(y: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
    """y (B, T) or (B, T, G) with every padding step unsupervised (-1, or NaN for real targets); y
    itself where there are no lengths."""
    if lengths is None:
        return y
    inside = step_mask(lengths, *y.shape[:2])
    if y.is_floating_point():
        return torch.where(inside[..., None], y, torch.full_like(y, float("nan")))
    return torch.where(inside, y, torch.full_like(y, -1))


def last_index(lengths: torch.Tensor | None, B: int, T: int, device=None) -> torch.Tensor:
    """(B,) the index of each row's last memory (after its last real input): lengths, or T."""
    return torch.full((B,), T, dtype=torch.long, device=device) if lengths is None else lengths.long()


def hold_after_end(M: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
    """Memories (B, S, ...) with every memory past a row's end replaced by its memory at the end,
    M[b, min(s, lengths[b])]: padding never moves a memory. The real memories are untouched (a causal
    network's memory at s <= lengths[b] does not depend on what comes after), and so are their
    gradients; the held copies pass theirs to the memory at the end."""
    if lengths is None:
        return M
    B, S = M.shape[:2]
    idx = torch.minimum(torch.arange(S, device=M.device)[None, :], lengths.to(M.device)[:, None])  # (B, S)
    return torch.gather(M, 1, idx.view(B, S, *([1] * (M.dim() - 2))).expand_as(M))


def pad(rows: list, pad_value=0) -> tuple[np.ndarray, np.ndarray]:
    """Sequences of different lengths (each (L_i, ...), the same trailing shape) -> (padded (N, T, ...)
    with T the longest, lengths (N,) int64)."""
    if not rows:
        raise ValueError("no sequences to pad")
    arrays = [np.asarray(r) for r in rows]
    tail = arrays[0].shape[1:]
    if any(a.shape[1:] != tail for a in arrays):
        raise ValueError(f"sequences must share their trailing shape {tail}, got {sorted({a.shape[1:] for a in arrays})}")
    lengths = np.array([len(a) for a in arrays], dtype=np.int64)
    if int(lengths.min()) < 1:
        raise ValueError(f"every sequence needs at least one step; sequence {int(lengths.argmin())} is empty")
    out = np.full((len(arrays), int(lengths.max()), *tail), pad_value, dtype=np.result_type(*arrays))
    for i, a in enumerate(arrays):
        out[i, : len(a)] = a
    return out, lengths


def unpack(batch: tuple) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """A task's batch -> (x, y, lengths): tasks of one length give (x, y), ragged ones (x, y, lengths)."""
    if len(batch) == 2:
        return batch[0], batch[1], None
    x, y, lengths = batch
    return x, y, lengths
