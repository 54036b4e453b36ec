"""Parallel-in-time rollouts: the trajectory of m_t = f(m_{t-1}, x_t) found as the root of the stacked
residual r_t = m_t - f(m_{t-1}, x_t), t = 1..T, by iterations that each call the cell once on all
B*T rows at once instead of T times on B rows (DEER, ELK, ParaRNN; ../docs/newton.md).

Every solver linearises f around the current guess and solves the linear recurrence

    m_t = A_t m_{t-1} + (f(g_{t-1}, x_t) - A_t g_{t-1})        g: the guess, m_0 given

with a parallel scan; they differ only in A_t:

    jacobi  A_t = 0                 no scan at all: m_t = f(g_{t-1}, x_t)
    picard  A_t = I                 a cumulative sum
    quasi   A_t = diag(df/dm)       an elementwise scan (quasi-DEER)
    newton  A_t = df/dm (dense)     a matrix scan (DEER); Z x Z per step, for small Z

Whatever A_t is, the first step is exact after one iteration, the first k after k, so every solver is
exact after at most T iterations. `damping` shrinks A_t to (1 - damping) A_t, which keeps that
property (ELK). A solve never returns an unconverged trajectory silently: sequences whose residual is
above tolerance when `max_iter` is spent are rolled out step by step (`on_fail="sequential"`) or the
solve raises (`on_fail="raise"`); the report says which happened.

Legend: B batch, T steps, Z memory size.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..models.cells import Cell
from ..models.scan import linear_scan, matrix_scan
from .rollout import rollout

SOLVERS = ("jacobi", "picard", "quasi", "newton")
ON_FAIL = ("sequential", "raise")


@dataclass
class SolveReport:
    """What a solve did: `iterations` linearised updates; per sequence whether it met the tolerance
    (`converged`, (B,) bool) and its final max |m_t - f(m_{t-1}, x_t)| (`residual`, (B,)), measured
    before any fallback; `fell_back` is true when unconverged sequences were rolled out step by step."""
    solver: str
    iterations: int
    converged: torch.Tensor
    residual: torch.Tensor
    fell_back: bool
    adjoint: SolveReport | None = None  # the backward pass's solve, once it has run (parallel_rollout)


def check_solver(solver: str, on_fail: str = "sequential", damping: float = 0.0) -> None:
    if solver not in SOLVERS:
        raise ValueError(f"rollout.solver must be one of {', '.join(SOLVERS)}, got {solver!r}")
    if on_fail not in ON_FAIL:
        raise ValueError(f"rollout.on_fail must be one of {', '.join(ON_FAIL)}, got {on_fail!r}")
    if not 0.0 <= damping < 1.0:
        raise ValueError(f"rollout.damping must be in [0, 1), got {damping}")


def step_all(cell: Cell, prev: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """f(prev_t, x_t) for every t in one cell call: prev (B, T, Z), x (B, T) -> (B, T, Z)."""
    B, T, Z = prev.shape
    return cell.update(prev.reshape(B * T, Z), x.reshape(B * T)).view(B, T, Z)


def jacobians(cell: Cell, prev: torch.Tensor, x: torch.Tensor, diagonal: bool, chunk: int = 256) -> torch.Tensor:
    """df/dm at every (prev_t, x_t): (B, T, Z, Z), or its diagonal (B, T, Z) with `diagonal`. A cell
    may provide `jacobian(m, x)` / `jacobian_diag(m, x)` over rows; otherwise torch.func, `chunk`
    rows at a time (the diagonal is taken per chunk, so only chunk x Z x Z floats live at once)."""
    B, T, Z = prev.shape
    m, xs = prev.reshape(B * T, Z), x.reshape(B * T)
    own = getattr(cell, "jacobian_diag" if diagonal else "jacobian", None)
    if own is not None:
        return own(m, xs).view(B, T, Z) if diagonal else own(m, xs).view(B, T, Z, Z)

    def one_row(m_row, x_row):
        return cell.update(m_row[None], x_row[None])[0]

    jac = torch.func.vmap(torch.func.jacrev(one_row))
    parts = []
    for lo in range(0, B * T, chunk):
        J = jac(m[lo:lo + chunk], xs[lo:lo + chunk])  # (rows, Z, Z)
        parts.append(J.diagonal(dim1=-2, dim2=-1) if diagonal else J)
    out = torch.cat(parts)
    return out.view(B, T, Z) if diagonal else out.view(B, T, Z, Z)


def linearised_step(solver: str, cell: Cell, m0: torch.Tensor, prev: torch.Tensor, x: torch.Tensor,
                    f: torch.Tensor, damping: float) -> torch.Tensor:
    """One iteration: the solution (B, T, Z) of m_t = A_t m_{t-1} + f_t - A_t prev_t from m0, where
    f_t = f(prev_t, x_t) and A_t is the solver's (module docstring)."""
    keep = 1.0 - damping
    if solver == "jacobi":
        return f
    if solver == "picard":
        if damping:  # A = keep * I: an elementwise scan with a constant
            a = torch.full_like(f, keep)
            return linear_scan(a, f - a * prev, m0)
        return m0[:, None] + torch.cumsum(f - prev, dim=1)
    if solver == "quasi":
        a = keep * jacobians(cell, prev, x, diagonal=True)
        return linear_scan(a, f - a * prev, m0)
    A = keep * jacobians(cell, prev, x, diagonal=False)
    return matrix_scan(A, f - (A @ prev[..., None])[..., 0], m0)


@torch.no_grad()
def solve_rollout(cell: Cell, m0: torch.Tensor, x: torch.Tensor, solver: str = "quasi", max_iter: int | None = None,
                  atol: float = 1e-5, rtol: float = 1e-4, damping: float = 0.0, on_fail: str = "sequential",
                  guess: torch.Tensor | None = None) -> tuple[torch.Tensor, SolveReport]:
    """The memories (B, T+1, Z) that `rollout(cell, m0, x)` returns (memories[:, 0] = m0), found in
    parallel over time, and a SolveReport. No graph: `parallel_rollout` adds the gradients.

    A sequence has converged when max_t,z |m_t - f(m_{t-1}, x_t)| <= atol + rtol * max |m|; it is
    then frozen while the others iterate. max_iter: None = T (enough for exactness in exact
    arithmetic). guess (B, T, Z): the starting trajectory (default m_t = f(m0, x_t), one batched call).
    """
    check_solver(solver, on_fail, damping)
    B, T = x.shape
    if T == 0:
        return m0[:, None], SolveReport(solver, 0, torch.ones(B, dtype=torch.bool), torch.zeros(B), False)
    max_iter = T if max_iter is None else max_iter
    m = step_all(cell, m0[:, None].expand(B, T, m0.shape[-1]), x) if guess is None else guess.clone()
    iterations = 0
    while True:
        prev = torch.cat([m0[:, None], m[:, :-1]], dim=1)
        f = step_all(cell, prev, x)
        residual = (m - f).abs().amax(dim=(1, 2))
        done = residual <= atol + rtol * f.abs().amax(dim=(1, 2))  # NaN never counts as done
        if bool(done.all()) or iterations >= max_iter:
            break
        new = linearised_step(solver, cell, m0, prev, x, f, damping)
        m = torch.where(done[:, None, None], m, new)
        iterations += 1
    fell_back = not bool(done.all())
    if fell_back:
        bad = int((~done).sum())
        if on_fail == "raise":
            raise RuntimeError(f"rollout.solver={solver!r} did not converge in {iterations} iterations on {bad} of {B} "
                               f"sequences (largest residual {residual.max().item():.3g}); raise rollout.max_iter, "
                               "add rollout.damping, or set rollout.on_fail=sequential")
        m = m.clone()
        m[~done] = rollout(cell, m0[~done], x[~done])[:, 1:]
    report = SolveReport(solver, iterations, done, residual, fell_back)
    return torch.cat([m0[:, None], m], dim=1), report


def parallel_rollout(cell: Cell, m0: torch.Tensor, x: torch.Tensor, solver: str = "quasi", **settings
                     ) -> tuple[torch.Tensor, SolveReport]:
    """`solve_rollout` with the gradients of BPTT through the whole sequence, by the implicit adjoint:
    the forward pass keeps no graph of its iterations; the backward pass solves the adjoint recurrence
    lam_t = dL/dm_t + J_{t+1}^T lam_{t+1} with the same solver and exact vector-Jacobian products,
    then one batched VJP of `update` over all steps gives the parameters' and m0's gradients
    (ParaRNN's scheme). Valid because the trajectory is converged or was rolled out step by step."""
    memories, report = solve_rollout(cell, m0.detach(), x, solver, **settings)
    if not torch.is_grad_enabled() or x.shape[1] == 0:
        return memories, report
    prev = torch.cat([m0[:, None], memories[:, 1:-1]], dim=1)  # m0 keeps its graph, the solved memories none
    backward = {k: v for k, v in settings.items() if k != "guess"}
    f = _ImplicitAdjoint.apply(step_all(cell, prev, x), prev.detach(), x, cell, solver, backward, report)
    return torch.cat([m0[:, None], f], dim=1), report


class _ImplicitAdjoint(torch.autograd.Function):
    """Identity on f_t = f(m_{t-1}, x_t) forward; backward turns dL/dm_t into the adjoint lam_t."""

    @staticmethod
    def forward(ctx, f, prev, x, cell, solver, settings, report):
        ctx.save_for_backward(prev, x)
        ctx.cell, ctx.solver, ctx.settings, ctx.report = cell, solver, settings, report
        return f.clone()

    @staticmethod
    def backward(ctx, g):
        prev, x = ctx.saved_tensors
        lam, ctx.report.adjoint = solve_adjoint(ctx.cell, prev, x, g, ctx.solver, **ctx.settings)
        return lam, None, None, None, None, None, None


def _later(v: torch.Tensor) -> torch.Tensor:
    """v_{t+1} at position t, zero at the last step: what step t receives from the step after it."""
    return torch.cat([v[:, 1:], torch.zeros_like(v[:, :1])], dim=1)


def solve_adjoint(cell: Cell, prev: torch.Tensor, x: torch.Tensor, g: torch.Tensor, solver: str = "quasi",
                  max_iter: int | None = None, atol: float = 1e-5, rtol: float = 1e-4, damping: float = 0.0,
                  on_fail: str = "sequential") -> tuple[torch.Tensor, SolveReport]:
    """lam (B, T, Z) with lam_t = g_t + J(prev_{t+1})^T lam_{t+1}, lam_T = g_T, where prev_t = m_{t-1} of
    a solved trajectory: the same linearised iterations as the forward solve, run backwards in time
    (newton solves this linear system exactly in one iteration)."""
    check_solver(solver, on_fail, damping)
    B, T, _ = prev.shape
    max_iter = T if max_iter is None else max_iter
    with torch.enable_grad():
        p = prev.detach().requires_grad_()
        out = step_all(cell, p, x)

    def from_later(lam):  # J(prev_{t+1})^T lam_{t+1} at position t
        return _later(torch.autograd.grad(out, p, lam, retain_graph=True)[0])

    A = None
    if solver in ("quasi", "newton"):
        A = (1.0 - damping) * _later(jacobians(cell, prev.detach(), x, diagonal=solver == "quasi"))
    lam, iterations = g.clone(), 0
    while True:
        carried = from_later(lam)
        residual = (lam - g - carried).abs().amax(dim=(1, 2))
        done = residual <= atol + rtol * lam.abs().amax(dim=(1, 2))
        if bool(done.all()) or iterations >= max_iter:
            break
        new = _adjoint_step(solver, A, g + carried, _later(lam), damping)
        lam = torch.where(done[:, None, None], lam, new)
        iterations += 1
    fell_back = not bool(done.all())
    if fell_back:
        if on_fail == "raise":
            raise RuntimeError(f"the adjoint of rollout.solver={solver!r} did not converge in {iterations} iterations on "
                               f"{int((~done).sum())} of {B} sequences; raise rollout.max_iter or set rollout.on_fail=sequential")
        lam = lam.clone()
        lam[~done] = _adjoint_sequential(cell, prev[~done].detach(), x[~done], g[~done])
    return lam, SolveReport(solver, iterations, done, residual, fell_back)


def _adjoint_step(solver: str, A: torch.Tensor | None, c: torch.Tensor, lam_later: torch.Tensor,
                  damping: float) -> torch.Tensor:
    """Solve lam_t = A_t^T lam_{t+1} + (c_t - A_t^T lam_later_t) backwards in time (A already shifted
    by `_later`; None for jacobi / picard), by flipping time and scanning from lam_{T+1} = 0."""
    if solver == "jacobi":
        return c
    if solver == "picard":
        a = torch.full_like(c, 1.0 - damping)
        b = c - a * lam_later
    elif solver == "quasi":
        a, b = A, c - A * lam_later
    else:
        a = A.transpose(-1, -2)
        b = c - (a @ lam_later[..., None])[..., 0]
    zero = torch.zeros_like(c[:, 0])
    scan = matrix_scan if solver == "newton" else linear_scan
    return scan(a.flip(1), b.flip(1), zero).flip(1)


def _adjoint_sequential(cell: Cell, prev: torch.Tensor, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """The adjoint stepped from the last step back, one VJP per step (the fallback)."""
    lam, out = g[:, -1], [g[:, -1]]
    for t in range(prev.shape[1] - 1, 0, -1):
        with torch.enable_grad():
            p = prev[:, t].detach().requires_grad_()
            (back,) = torch.autograd.grad(cell.update(p, x[:, t]), p, lam)
        lam = g[:, t - 1] + back
        out.append(lam)
    return torch.stack(out[::-1], dim=1)
