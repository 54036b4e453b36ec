"""Parallel scans for the linear recurrence c_t = a_t * c_{t-1} + b_t (elementwise, or with matrices), in O(log T)
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


def matrix_scan(A: torch.Tensor, b: torch.Tensor, c0: torch.Tensor) -> torch.Tensor:
    """c_t = A_t c_{t-1} + b_t for t = 1..T with matrices: A (B, T, ..., n, n), b (B, T, ..., n),
    c0 (B, ..., n) -> c (B, T, ..., n). The trailing dims before n are independent blocks (none:
    one dense n x n system; K blocks: a block-diagonal Jacobian). The same Hillis-Steele rounds as
    `linear_scan` with the composition (A', b') o (A, b) = (A A', A b' + b)."""
    T, n = A.shape[1], A.shape[-1]
    eye = torch.eye(n, dtype=A.dtype, device=A.device)
    d = 1
    while d < T:
        A_prev = torch.cat([eye.expand_as(A[:, :d]), A[:, : T - d]], dim=1)
        b_prev = torch.cat([torch.zeros_like(b[:, :d]), b[:, : T - d]], dim=1)
        A, b = A @ A_prev, (A @ b_prev[..., None])[..., 0] + b
        d *= 2
    return (A @ c0[:, None, ..., None])[..., 0] + b


def matrix_scan_reference(A: torch.Tensor, b: torch.Tensor, c0: torch.Tensor) -> torch.Tensor:
    """`matrix_scan` stepped one t at a time (for tests)."""
    c, out = c0, []
    for t in range(A.shape[1]):
        c = (A[:, t] @ c[..., None])[..., 0] + b[:, t]
        out.append(c)
    return torch.stack(out, dim=1)
