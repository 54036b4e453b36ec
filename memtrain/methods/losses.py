"""Loss pieces shared by the training methods. Token targets use -1 for "unsupervised", real ones NaN."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..lengths import supervised
from ..models.heads import masked_ce  # noqa: F401  (one definition, in models/heads.py; the methods import it from here)


def upcast(t: torch.Tensor) -> torch.Tensor:
    """Half-precision values (bf16 autocast) to float32 for losses; float32/float64 unchanged."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def mse_rows(pred: torch.Tensor, target: torch.Tensor, w: torch.Tensor | None = None) -> torch.Tensor:
    """Mean square error of rows (N, Z); with weights w (N,) (0: padding) the weighted mean of the
    rows' mean squares (without: F.mse_loss, the same value when every row counts)."""
    if w is None:
        return F.mse_loss(upcast(pred), upcast(target))
    err = (upcast(pred) - upcast(target)).pow(2).mean(-1)
    return (err * w.reshape(-1)).sum() / w.sum().clamp_min(1e-12)


def uniformity(tokens: torch.Tensor, t: float = 2.0) -> torch.Tensor:
    """Wang & Isola (2020): log mean_{a != b} exp(-t ||a - b||^2) over unit-normalised rows (N, D)."""
    z = F.normalize(upcast(tokens), dim=-1)
    return torch.pdist(z).pow(2).mul(-t).exp().mean().log()


def target_loss(output, raw: torch.Tensor, y: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """The loss of raw predictions (..., output.dim) against targets y: masked cross-entropy for token
    ids (-1: unsupervised), the output's own loss for real values (NaN: unsupervised); `weight` per step."""
    if output.kind == "categorical":
        return masked_ce(raw, y, weight)
    return output.loss(upcast(raw), y, weight)


def readout_loss(output, readout, memories: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The loss of readout(memories) against y, evaluated only at supervised steps (the readout is a
    Transformer layer; most positions of most tasks are unsupervised): cross-entropy for token ids,
    the output's loss for real values (`output` None: token ids). memories (B, T, Z), y (B, T) or (B, T, G)."""
    mask = supervised(y)
    if not bool(mask.any()):
        return memories.sum() * 0.0
    if output is None or output.kind == "categorical":
        return F.cross_entropy(upcast(readout(memories[mask])), y[mask])
    return output.loss(upcast(readout(memories[mask])), y[mask])


def shift_targets(y: torch.Tensor) -> torch.Tensor:
    """y with one unsupervised step in front (B, 1+T[, G]): out[:, s] = y_{s-1}, what memory s predicts."""
    if y.is_floating_point():
        return F.pad(y, (0, 0, 1, 0), value=float("nan"))
    return F.pad(y, (1, 0), value=-1)
