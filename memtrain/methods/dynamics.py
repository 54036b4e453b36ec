"""How predictable a cell's dynamics are: the largest Lyapunov exponent along its own trajectories.

A parallel trajectory solver (methods/solve.py) converges in few iterations on contracting dynamics
(exponent < 0) and needs up to T on chaotic ones (> 0) (Gonzalez et al., "Predictability enables
parallelization of nonlinear state space models", 2025). The estimate is the classic renormalised
product: push a tangent vector v through the Jacobians along the trajectory, m_t = f(m_{t-1}, x_t),
v <- J_t v / |J_t v|, and average log |J_t v| over the steps.

Legend: B batch, T steps, Z memory size.
"""
from __future__ import annotations

import torch

from ..models.cells import Cell


@torch.no_grad()
def largest_lyapunov(cell: Cell, m0: torch.Tensor, x: torch.Tensor, burn_in: int = 0,
                     v0: torch.Tensor | None = None, gen: torch.Generator | None = None) -> torch.Tensor:
    """(B,) the largest Lyapunov exponent (nats per step) of each sequence's trajectory from m0 (B, Z)
    over x (B, T): the mean of log |J_t v_{t-1}| over steps burn_in+1 .. T (the first burn_in steps
    only align v with the leading direction). v0 (B, Z): the starting tangent vectors (default: random
    from `gen`)."""
    B, T = x.shape
    if not 0 <= burn_in < T:
        raise ValueError(f"burn_in must be in [0, T-1] = [0, {T - 1}], got {burn_in}")
    if v0 is None:
        v0 = torch.randn(m0.shape, generator=gen, dtype=m0.dtype).to(m0.device)
    v = v0 / v0.norm(dim=-1, keepdim=True)
    m, total = m0.clone(), torch.zeros(B, dtype=torch.float64, device=m0.device)
    for t in range(T):
        m, v = torch.func.jvp(lambda state, t=t: cell.update(state, x[:, t]), (m,), (v,))
        norm = v.norm(dim=-1)
        if t >= burn_in:
            total += norm.double().log()
        v = v / norm.clamp_min(torch.finfo(v.dtype).tiny)[:, None]
    return total / (T - burn_in)
