"""Parallel-in-time rollouts: the trajectory of m_t = f(m_{t-1}, x_t) found as the root of the stacked
residual r_t = m_t - f(m_{t-1}, x_t), t = 1..T, by iterations that each call the cell once on all
B*T rows at once instead of T times on B rows (DEER, ELK, ParaRNN; measured in RESULTS.md section 9).

Every solver linearises f around the current guess and solves the linear recurrence

    m_t = A_t m_{t-1} + (f(g_{t-1}, x_t) - A_t g_{t-1})        g: the guess, m_0 given

with a parallel scan (models/scan.py; stepped on a CPU, where that is faster); they differ only in A_t:

    jacobi  A_t = 0                 no scan at all: m_t = f(g_{t-1}, x_t)
    picard  A_t = I                 a cumulative sum
    quasi   A_t = diag(df/dm)       an elementwise scan (quasi-DEER)
    block   A_t = blocks of df/dm   a scan of small matrices: per memory token, or the cell's own
                                    blocks (an LSTM's (h_i, c_i) pairs; ParaRNN)
    newton  A_t = df/dm (dense)     a matrix scan (DEER); Z x Z per step, for small Z

Whatever A_t is, the first step is exact after one iteration, the first k after k, so every solver is
exact after at most T iterations. `damping` shrinks A_t to (1 - damping) A_t, which keeps that
property (ELK). A solve never returns an unconverged trajectory silently: sequences whose residual is
above tolerance when `max_iter` is spent are rolled out step by step (`on_fail="sequential"`) or the
solve raises (`on_fail="raise"`); the report says which happened.

Legend: B batch, T steps, Z memory size.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import ClassVar

import torch

from ..models.cells import Cell
from ..models.scan import linear_recurrence, matrix_recurrence

SOLVERS = ("jacobi", "picard", "quasi", "block", "newton")
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


def closed_form(cell: Cell, solver: str) -> bool:
    """Whether `solver` runs on `cell` without torch.func Jacobians: it needs none (jacobi, picard) or
    the cell provides the part it keeps (`jacobian_diag` for quasi, `jacobian_block` for block)."""
    structure = Linearisation.STRUCTURE[solver]
    return structure in (None, "identity") or hasattr(cell, f"jacobian_{structure}")


def block_index(cell: Cell) -> torch.Tensor:
    """(n_blocks, s) memory positions of the blocks the `block` solver keeps of each Jacobian: the
    cell's own (`cell.jacobian_block_index()`: an LSTM's (h_i, c_i) pairs) or else one block per memory
    token (K blocks of D)."""
    own = getattr(cell, "jacobian_block_index", None)
    return own() if own is not None else torch.arange(cell.Z, device=cell.m_init.device).view(cell.K, cell.D)


def jacobians(cell: Cell, prev: torch.Tensor, x: torch.Tensor, structure: str, chunk: int = 256) -> torch.Tensor:
    """df/dm at every (prev_t, x_t), the part a structure keeps: "dense" (B, T, Z, Z), "diag"
    (B, T, Z), "block" (B, T, n_blocks, s, s) over `block_index`. A cell may provide
    `jacobian_<structure>(m, x)` over rows; otherwise torch.func, `chunk` rows at a time (the part is
    taken per chunk, so only chunk x Z x Z floats live at once)."""
    B, T, Z = prev.shape
    m, xs = prev.reshape(B * T, Z), x.reshape(B * T)
    own = getattr(cell, f"jacobian_{structure}", None)
    if own is not None:
        out = own(m, xs)
        return out.view(B, T, *out.shape[1:])
    idx = block_index(cell).to(m.device) if structure == "block" else None

    def one_row(m_row, x_row):
        return cell.update(m_row[None], x_row[None])[0]

    def part(J):  # (rows, Z, Z) -> the structure's part
        if structure == "diag":
            return J.diagonal(dim1=-2, dim2=-1)
        return J[:, idx[:, :, None], idx[:, None, :]] if structure == "block" else J

    jac = torch.func.vmap(torch.func.jacrev(one_row))
    out = torch.cat([part(jac(m[lo:lo + chunk], xs[lo:lo + chunk])) for lo in range(0, B * T, chunk)])
    return out.view(B, T, *out.shape[1:])


class Linearisation:
    """The A_t of a solver at one guess (module docstring), with the two operations the forward and
    adjoint solves need: A_t v_t for every t, and the scan of c_t = A_t c_{t-1} + b_t."""
    STRUCTURE: ClassVar[dict[str, str | None]] = {"jacobi": None, "picard": "identity", "quasi": "diag", "block": "block", "newton": "dense"}

    def __init__(self, solver: str, cell: Cell, prev: torch.Tensor, x: torch.Tensor, damping: float = 0.0):
        self.structure = self.STRUCTURE[solver]
        keep = 1.0 - damping
        self.idx = block_index(cell).to(prev.device) if self.structure == "block" else None
        if self.structure == "identity":
            self.A = torch.full_like(prev, keep)
            self.structure = "diag"
        elif self.structure is not None:
            self.A = keep * jacobians(cell, prev, x, self.structure)

    def later(self) -> Linearisation:
        """A_{t+1} at position t (zero at the last step): the coefficients of the adjoint recurrence."""
        out = Linearisation.__new__(Linearisation)
        out.structure, out.idx = self.structure, self.idx
        if self.structure is not None:
            out.A = _later(self.A).transpose(-1, -2) if self.structure in ("dense", "block") else _later(self.A)
        return out

    def apply(self, v: torch.Tensor) -> torch.Tensor:
        if self.structure is None:
            return torch.zeros_like(v)
        if self.structure == "diag":
            return self.A * v
        if self.structure == "dense":
            return (self.A @ v[..., None])[..., 0]
        return _unblock((self.A @ v[..., self.idx][..., None])[..., 0], self.idx)

    def scan(self, b: torch.Tensor, c0: torch.Tensor) -> torch.Tensor:
        """c (B, T, Z) of c_t = A_t c_{t-1} + b_t from c0 (B, Z)."""
        if self.structure is None:
            return b
        if self.structure == "diag":
            return linear_recurrence(self.A, b, c0)
        if self.structure == "dense":
            return matrix_recurrence(self.A, b, c0)
        return _unblock(matrix_recurrence(self.A, b[..., self.idx], c0[..., self.idx]), self.idx)

    def flipped(self) -> Linearisation:
        """The same coefficients in reversed time (a backward recurrence solved as a forward scan)."""
        out = Linearisation.__new__(Linearisation)
        out.structure, out.idx = self.structure, self.idx
        if self.structure is not None:
            out.A = self.A.flip(1)
        return out


def _unblock(vb: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """(..., n_blocks, s) back to (..., Z) through the block index (a permutation of 0..Z-1)."""
    out = vb.new_empty(*vb.shape[:-2], idx.numel())
    out[..., idx.reshape(-1)] = vb.reshape(*vb.shape[:-2], -1)
    return out


def linearised_step(solver: str, cell: Cell, m0: torch.Tensor, prev: torch.Tensor, x: torch.Tensor,
                    f: torch.Tensor, damping: float) -> torch.Tensor:
    """One iteration: the solution (B, T, Z) of m_t = A_t m_{t-1} + f_t - A_t prev_t from m0, where
    f_t = f(prev_t, x_t) and A_t is the solver's (module docstring)."""
    lin = Linearisation(solver, cell, prev, x, damping)
    return lin.scan(f - lin.apply(prev), m0)


@torch.no_grad()
def solve_rollout(cell: Cell, m0: torch.Tensor, x: torch.Tensor, solver: str = "quasi", max_iter: int | None = None,
                  atol: float = 1e-5, rtol: float = 1e-4, damping: float = 0.0, on_fail: str = "sequential",
                  guess: torch.Tensor | None = None, deadline: float | None = None) -> tuple[torch.Tensor, SolveReport]:
    """The memories (B, T+1, Z) that `rollout(cell, m0, x)` returns (memories[:, 0] = m0), found in
    parallel over time, and a SolveReport. No graph: `parallel_rollout` adds the gradients.

    A sequence has converged when max_t,z |m_t - f(m_{t-1}, x_t)| <= atol + rtol * max |m|; it is
    then frozen while the others iterate. max_iter: None = T (enough for exactness in exact
    arithmetic). guess (B, T, Z): the starting trajectory (default m_t = f(m0, x_t), one batched call).
    deadline: a time.perf_counter() reading after which no new iteration starts (the unconverged
    sequences then fall back as when max_iter is spent; rollout.solver=auto bounds its trials so).
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
        if bool(done.all()) or iterations >= max_iter or (deadline is not None and time.perf_counter() > deadline):
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
        m[~done] = _stepped(cell, m0[~done], x[~done])
    report = SolveReport(solver, iterations, done, residual, fell_back)
    return torch.cat([m0[:, None], m], dim=1), report


def _stepped(cell: Cell, m0: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The fallback: m_1..m_T (B, T, Z) one step after another (no graph; torch's fused cells in one call)."""
    if hasattr(cell, "sequence"):
        return cell.sequence(m0, x)
    m, out = m0, []
    for t in range(x.shape[1]):
        m = cell.update(m, x[:, t])
        out.append(m)
    return torch.stack(out, dim=1)


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
    backward = {k: v for k, v in settings.items() if k not in ("guess", "deadline")}
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

    coef = Linearisation(solver, cell, prev.detach(), x, damping).later()  # A_{t+1}^T at position t
    reverse = coef.flipped()
    lam, iterations = g.clone(), 0
    while True:
        carried = from_later(lam)
        residual = (lam - g - carried).abs().amax(dim=(1, 2))
        done = residual <= atol + rtol * lam.abs().amax(dim=(1, 2))
        if bool(done.all()) or iterations >= max_iter:
            break
        b = g + carried - coef.apply(_later(lam))  # lam_t = A_{t+1}^T lam_{t+1} + b_t, from lam_{T+1} = 0
        new = reverse.scan(b.flip(1), torch.zeros_like(g[:, 0])).flip(1)
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
