"""The one place where a cell is run through time: BPTT, DMT, evaluation and sampling all call
`rollout`. It steps the cell (`rollout.solver=sequential`, the default) or solves the whole trajectory
in parallel over time (methods/solve.py) with the solver a run's `rollout` section names.

Legend: B batch, T steps, Z memory size.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..models.cells import Cell
from .solve import SOLVERS, check_solver, parallel_rollout, solve_rollout, step_all

SOLVER_NAMES = ("sequential", *SOLVERS)


@dataclass
class RolloutConfig:
    """How a cell is run through time (the `rollout` section): stepped, or solved in parallel over time."""
    solver: str = "sequential"  # sequential | jacobi | picard | quasi | block | newton (methods/solve.py)
    max_iter: int | None = None  # iterations before unconverged sequences fall back (None: T, enough for exactness)
    atol: float = 1e-5  # converged when max |m_t - f(m_{t-1}, x_t)| <= atol + rtol * max |m|
    rtol: float = 1e-4  # the tolerance relative to the largest |m| (see atol)
    damping: float = 0.0  # A_t -> (1 - damping) A_t (ELK's damping; keeps exactness after T iterations)
    on_fail: str = "sequential"  # what unconverged sequences get: sequential (stepped, exact) | raise

    def validate(self) -> None:
        if self.solver not in SOLVER_NAMES:
            raise ValueError(f"rollout.solver must be one of {', '.join(SOLVER_NAMES)}, got {self.solver!r}")
        check_solver("jacobi", self.on_fail, self.damping)  # (the settings every solver shares)
        if self.max_iter is not None and self.max_iter < 1:
            raise ValueError(f"rollout.max_iter must be >= 1 or None, got {self.max_iter}")
        if self.atol < 0 or self.rtol < 0:
            raise ValueError(f"rollout.atol and rollout.rtol must be >= 0, got {self.atol}, {self.rtol}")

    def settings(self) -> dict:
        return {"solver": self.solver, "max_iter": self.max_iter, "atol": self.atol, "rtol": self.rtol,
                "damping": self.damping, "on_fail": self.on_fail}


def rollout(cell: Cell, m0: torch.Tensor, x: torch.Tensor, grad_horizon: int | None = None,
            solver: RolloutConfig | None = None) -> torch.Tensor:
    """Run m_{s+1} = cell.update(m_s, x_s) from m0 (B, Z) over x (B, T) -> memories (B, T+1, Z),
    memories[:, 0] = m0.

    grad_horizon: None keeps the whole graph (full BPTT); h cuts it every h steps, so a loss on the
    memory after step s reaches back at most h updates (h = 1: one-step gradients, as in DMT;
    h = k: truncated BPTT with chunks of k steps).
    solver: how (None: the cell's `solver` attribute, which a run sets from its `rollout` section;
    unset: stepped). A parallel solve gives the same memories and gradients (methods/solve.py).
    """
    if grad_horizon is not None and grad_horizon < 1:
        raise ValueError(f"grad_horizon must be >= 1 or None, got {grad_horizon}")
    solver = solver or getattr(cell, "solver", None)
    if solver is not None and solver.solver != "sequential" and x.shape[1] > 0:
        return _solved(cell, m0, x, grad_horizon, solver.settings())
    if hasattr(cell, "sequence"):  # a whole-sequence fast path (torch's fused cells): one call per gradient chunk
        return _rollout_chunks(cell, m0, x, grad_horizon or max(x.shape[1], 1))
    m, out = m0, [m0]
    for s in range(x.shape[1]):
        if grad_horizon is not None and s > 0 and s % grad_horizon == 0:
            m = m.detach()
        m = cell.update(m, x[:, s])
        out.append(m)
    return torch.stack(out, dim=1)


def _solved(cell: Cell, m0: torch.Tensor, x: torch.Tensor, grad_horizon: int | None, settings: dict) -> torch.Tensor:
    """`rollout` by a parallel solve: the whole graph by the implicit adjoint, one-step gradients by one
    batched update from the solved memories, truncation by one solve per chunk."""
    if grad_horizon == 1:
        memories, _ = solve_rollout(cell, m0.detach(), x, **settings)
        prev = torch.cat([m0[:, None], memories[:, 1:-1]], dim=1)  # m0 keeps its graph
        return torch.cat([m0[:, None], step_all(cell, prev, x)], dim=1)
    h = grad_horizon or x.shape[1]
    m, out = m0, [m0[:, None]]
    for lo in range(0, x.shape[1], h):
        chunk, _ = parallel_rollout(cell, m.detach() if lo > 0 else m, x[:, lo:lo + h], **settings)
        out.append(chunk[:, 1:])
        m = chunk[:, -1]
    return torch.cat(out, dim=1)


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
