"""Loss pieces shared by the training methods. Targets use -1 for "unsupervised"."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def upcast(t: torch.Tensor) -> torch.Tensor:
    """Half-precision values (bf16 autocast) to float32 for losses; float32/float64 unchanged."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def masked_ce(logits: torch.Tensor, y: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Mean cross-entropy over positions with y >= 0. logits (..., V), y (...), optional weight (...).
    Returns 0 (with a gradient path) when nothing is supervised."""
    mask = (y >= 0).to(logits.dtype)
    if weight is not None:
        mask = mask * weight
    ce = F.cross_entropy(upcast(logits.reshape(-1, logits.shape[-1])), y.clamp(min=0).reshape(-1), reduction="none")
    return (ce * mask.reshape(-1)).sum() / mask.sum().clamp(min=1e-12)


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


def readout_ce(readout, memories: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of readout(memories) against y, evaluated only where y >= 0 (the readout is a
    Transformer layer; most positions of most tasks are unsupervised). memories (B, T, Z), y (B, T)."""
    mask = y >= 0
    if not bool(mask.any()):
        return memories.sum() * 0.0
    return F.cross_entropy(upcast(readout(memories[mask])), y[mask])
