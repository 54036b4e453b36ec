"""Parallel scans for the linear recurrence c_t = a_t * c_{t-1} + b_t (elementwise, or with matrices), in O(log T)
sequential steps of whole-sequence tensor operations instead of T small ones. Two schemes: Hillis-Steele
(`linear_scan`, `matrix_scan`: log2 T rounds over all T steps, T log T work) and odd-even reduction
(`linear_scan_pairs`, `matrix_scan_pairs`: pairs of steps composed, the half-length problem solved
the same way, then the other half filled in; 2 log2 T rounds of shrinking size, about 2T work, as
Blelloch's scan).

Legend: B batch, T time, ... any trailing shape.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def linear_recurrence(a: torch.Tensor, b: torch.Tensor, c0: torch.Tensor) -> torch.Tensor:
    """c_t = a_t * c_{t-1} + b_t by the scheme fastest where the tensors live (module docstring)."""
    return (linear_scan_reference if a.device.type == "cpu" else linear_scan_pairs)(a, b, c0)


def matrix_recurrence(A: torch.Tensor, b: torch.Tensor, c0: torch.Tensor) -> torch.Tensor:
    """c_t = A_t c_{t-1} + b_t by the scheme fastest where the tensors live (module docstring)."""
    return (matrix_scan_reference if A.device.type == "cpu" else matrix_scan_pairs)(A, b, c0)


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


def linear_scan_pairs(a: torch.Tensor, b: torch.Tensor, c0: torch.Tensor) -> torch.Tensor:
    """`linear_scan` by odd-even reduction (work-efficient)."""
    return _pairs(a, _first_step(a, b, lambda a1, c: a1 * c, c0), lambda a2, a1: a2 * a1, lambda a, c: a * c)


def matrix_scan_pairs(A: torch.Tensor, b: torch.Tensor, c0: torch.Tensor) -> torch.Tensor:
    """`matrix_scan` by odd-even reduction (work-efficient)."""
    apply = lambda A, c: (A @ c[..., None])[..., 0]
    return _pairs(A, _first_step(A, b, apply, c0), lambda A2, A1: A2 @ A1, apply)


def _first_step(a, b, apply, c0):
    """b with c0 folded into the first step, so the rest starts from zero."""
    return torch.cat([b[:, :1] + apply(a[:, :1], c0[:, None]), b[:, 1:]], dim=1)


def _pairs(a, b, compose, apply):
    """c_t = a_t c_{t-1} + b_t from c_0 = 0. Steps (2i, 2i+1) (0-based) compose into one, whose
    values are the odd positions (the half-length problem, recursively); each even position is then
    one step from the odd one before it."""
    T = a.shape[1]
    if T == 1:
        return b
    n = T // 2
    a_even, a_odd, b_even, b_odd = a[:, 0:2 * n:2], a[:, 1:2 * n:2], b[:, 0:2 * n:2], b[:, 1:2 * n:2]
    odd = _pairs(compose(a_odd, a_even), apply(a_odd, b_even) + b_odd, compose, apply)
    even = b_even.clone()
    even[:, 1:] += apply(a_even[:, 1:], odd[:, :-1])
    c = torch.stack([even, odd], dim=2).flatten(1, 2)
    if T % 2:
        c = torch.cat([c, apply(a[:, -1:], odd[:, -1:]) + b[:, -1:]], dim=1)
    return c


def linear_scan_reference(a: torch.Tensor, b: torch.Tensor, c0: torch.Tensor) -> torch.Tensor:
    """The same recurrence stepped one t at a time (the reference; on a CPU also the fastest)."""
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
    """`matrix_scan` stepped one t at a time (the reference; on a CPU also the fastest)."""
    c, out = c0, []
    for t in range(A.shape[1]):
        c = (A[:, t] @ c[..., None])[..., 0] + b[:, t]
        out.append(c)
    return torch.stack(out, dim=1)
