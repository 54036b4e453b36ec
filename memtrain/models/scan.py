"""A parallel scan for the linear recurrence c_t = a_t * c_{t-1} + b_t (elementwise), in O(log T)
sequential steps of whole-sequence tensor operations instead of T small ones.

Legend: B batch, T time, ... any trailing shape.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def linear_scan(a: torch.Tensor, b: torch.Tensor, c0: torch.Tensor) -> torch.Tensor:
    """c_t = a_t * c_{t-1} + b_t for t = 1..T from c0 (B, ...); a, b (B, T, ...) -> c (B, T, ...),
    c[:, t-1] = c_t. Hillis-Steele: after the round with stride d, (a_t, b_t) composes the steps
    t-2d+1 .. t, so log2(T) rounds compose every prefix. Differentiable; exact up to rounding."""
    T = a.shape[1]
    d = 1
    while d < T:
        # compose each step with the one d earlier: (a', b') o (a, b) = (a a', a b' + b)
        a_prev = F.pad(a[:, : T - d].movedim(1, -1), (d, 0), value=1.0).movedim(-1, 1)
        b_prev = F.pad(b[:, : T - d].movedim(1, -1), (d, 0), value=0.0).movedim(-1, 1)
        a, b = a * a_prev, a * b_prev + b
        d *= 2
    return a * c0[:, None] + b


def linear_scan_reference(a: torch.Tensor, b: torch.Tensor, c0: torch.Tensor) -> torch.Tensor:
    """The same recurrence stepped one t at a time (for tests)."""
    c, out = c0, []
    for t in range(a.shape[1]):
        c = a[:, t] * c + b[:, t]
        out.append(c)
    return torch.stack(out, dim=1)
