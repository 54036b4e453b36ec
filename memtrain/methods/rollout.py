"""The one place where a cell is stepped through time: BPTT, DMT, evaluation all call `rollout`.

Legend: B batch, T steps, Z memory size.
"""
from __future__ import annotations

import torch

from ..models.cells import Cell


def rollout(cell: Cell, m0: torch.Tensor, x: torch.Tensor, grad_horizon: int | None = None) -> torch.Tensor:
    """Run m_{s+1} = cell.update(m_s, x_s) from m0 (B, Z) over x (B, T) -> memories (B, T+1, Z),
    memories[:, 0] = m0.

    grad_horizon: None keeps the whole graph (full BPTT); h cuts it every h steps, so a loss on the
    memory after step s reaches back at most h updates (h = 1: one-step gradients, as in DMT;
    h = k: truncated BPTT with chunks of k steps).
    """
    if grad_horizon is not None and grad_horizon < 1:
        raise ValueError(f"grad_horizon must be >= 1 or None, got {grad_horizon}")
    if hasattr(cell, "sequence"):  # a whole-sequence fast path (torch's fused cells): one call per gradient chunk
        return _rollout_chunks(cell, m0, x, grad_horizon or max(x.shape[1], 1))
    m, out = m0, [m0]
    for s in range(x.shape[1]):
        if grad_horizon is not None and s > 0 and s % grad_horizon == 0:
            m = m.detach()
        m = cell.update(m, x[:, s])
        out.append(m)
    return torch.stack(out, dim=1)


@torch.no_grad()
def onpolicy_states(cell: Cell, m0: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The cell's own memories (B, T+1, Z) without a graph. With them, the one-step (grad_horizon=1)
    regression of every step is one batched `cell.update` call: the same gradient as stepping with
    the state detached, but the backward pass runs in parallel over time."""
    return rollout(cell, m0, x)


def _rollout_chunks(cell: Cell, m0: torch.Tensor, x: torch.Tensor, h: int) -> torch.Tensor:
    """`rollout` through `cell.sequence`, the state detached between chunks of h steps (as the loop)."""
    m, out = m0, [m0[:, None]]
    for lo in range(0, x.shape[1], h):
        chunk = cell.sequence(m.detach() if lo > 0 else m, x[:, lo:lo + h])  # (B, <=h, Z)
        out.append(chunk)
        m = chunk[:, -1]
    return torch.cat(out, dim=1)
