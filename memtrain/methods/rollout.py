"""The one place where a cell is run through time: BPTT, DMT, evaluation and sampling all call
`rollout`. It steps the cell (`rollout.solver=sequential`, the default) or solves the whole trajectory
in parallel over time (methods/solve.py) with the solver a run's `rollout` section names, or
(`rollout.solver=auto`) with whichever of the two it measured to be faster for that kind of call.

How is run state, not part of a network: a `Rollout` (the settings and, for auto, what it measured)
is owned by the method (`Method.rollout`) and handed to every function that runs the cell; the cell
stays a pure network (init_memory, update, readout).

Legend: B batch, T steps, Z memory size.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from ..lengths import hold_after_end
from ..models.cells import Cell
from .solve import SOLVERS, check_solver, closed_form, parallel_rollout, solve_rollout, step_all

SOLVER_NAMES = ("sequential", *SOLVERS, "auto")
AUTO_CANDIDATES = ("jacobi", "quasi", "block")  # what auto tries beside stepping, where the cell has their Jacobian part


@dataclass
class RolloutConfig:
    """How a cell is run through time (the `rollout` section): stepped, or solved in parallel over time."""
    solver: str = "sequential"  # sequential | jacobi | picard | quasi | block | newton (methods/solve.py) | auto (AutoSolver)
    max_iter: int | None = None  # iterations before unconverged sequences fall back (None: T, enough for exactness)
    atol: float = 1e-5  # converged when max |m_t - f(m_{t-1}, x_t)| <= atol + rtol * max |m|
    rtol: float = 1e-4  # the tolerance relative to the largest |m| (see atol)
    damping: float = 0.0  # A_t -> (1 - damping) A_t (ELK's damping; keeps exactness after T iterations)
    on_fail: str = "sequential"  # what unconverged sequences get: sequential (stepped, exact) | raise

    def validate(self) -> None:
        if self.solver not in SOLVER_NAMES:
            raise ValueError(f"rollout.solver must be one of {', '.join(SOLVER_NAMES)}, got {self.solver!r}")
        check_solver("jacobi", self.on_fail, self.damping)  # (the settings every solver shares)
        if self.solver == "auto" and self.on_fail == "raise":
            raise ValueError("rollout.solver=auto falls back to stepping by design; rollout.on_fail=raise needs a named solver")
        if self.max_iter is not None and self.max_iter < 1:
            raise ValueError(f"rollout.max_iter must be >= 1 or None, got {self.max_iter}")
        if self.atol < 0 or self.rtol < 0:
            raise ValueError(f"rollout.atol and rollout.rtol must be >= 0, got {self.atol}, {self.rtol}")

    def settings(self) -> dict:
        return {"solver": self.solver, "max_iter": self.max_iter, "atol": self.atol, "rtol": self.rtol,
                "damping": self.damping, "on_fail": self.on_fail}


class Rollout:
    """How a run runs its cell through time: the `rollout` settings (`cfg`) and, for solver=auto, the
    AutoSolver that measures and chooses (`auto`, made on the first call for the cell it is given; a
    run has one cell). A method owns one and passes it to every function that runs its cell
    (`rollout`, `onpolicy_states`, `evaluate`, `sample.start_memory`); None there means stepped."""

    def __init__(self, cfg: RolloutConfig | None = None):
        self.cfg = cfg if cfg is not None else RolloutConfig()
        self.auto: AutoSolver | None = None

    def choices(self) -> list[dict]:
        """solver=auto: what it measured and chose, one entry per kind of call ([] before any call)."""
        return self.auto.choices() if self.auto is not None else []


def rollout(cell: Cell, m0: torch.Tensor, x: torch.Tensor, grad_horizon: int | None = None,
            how: Rollout | None = None, lengths: torch.Tensor | None = None) -> torch.Tensor:
    """Run m_{s+1} = cell.update(m_s, x_s) from m0 (B, Z) over x (B, T) -> memories (B, T+1, Z),
    memories[:, 0] = m0. With `lengths` (B,) the memory after a row's last real input is its memory
    from there on: padding never moves it (lengths.py).

    grad_horizon: None keeps the whole graph (full BPTT); h cuts it every h steps, so a loss on the
    memory after step s reaches back at most h updates (h = 1: one-step gradients, as in DMT;
    h = k: truncated BPTT with chunks of k steps).
    how: the run's Rollout (its settings; None: stepped). A parallel solve gives the same memories and
    gradients (methods/solve.py).
    """
    if grad_horizon is not None and grad_horizon < 1:
        raise ValueError(f"grad_horizon must be >= 1 or None, got {grad_horizon}")
    solver = how.cfg.solver if how is not None else "sequential"
    if solver == "auto" and x.shape[1] > 0:
        M = _auto(cell, m0, x, grad_horizon, how)
    elif solver != "sequential" and x.shape[1] > 0:
        M = _solved(cell, m0, x, grad_horizon, how.cfg.settings())[0]
    else:
        M = _stepped(cell, m0, x, grad_horizon)
    return hold_after_end(M, lengths)


def _stepped(cell: Cell, m0: torch.Tensor, x: torch.Tensor, grad_horizon: int | None) -> torch.Tensor:
    if hasattr(cell, "sequence"):  # a whole-sequence fast path (torch's fused cells): one call per gradient chunk
        return _rollout_chunks(cell, m0, x, grad_horizon or max(x.shape[1], 1))
    m, out = m0, [m0]
    for s in range(x.shape[1]):
        if grad_horizon is not None and s > 0 and s % grad_horizon == 0:
            m = m.detach()
        m = cell.update(m, x[:, s])
        out.append(m)
    return torch.stack(out, dim=1)


def _solved(cell: Cell, m0: torch.Tensor, x: torch.Tensor, grad_horizon: int | None, settings: dict
            ) -> tuple[torch.Tensor, bool]:
    """`rollout` by a parallel solve: the whole graph by the implicit adjoint, one-step gradients by one
    batched update from the solved memories, truncation by one solve per chunk. -> (memories, whether
    any forward solve fell back to stepping)."""
    if grad_horizon == 1:
        memories, report = solve_rollout(cell, m0.detach(), x, **settings)
        prev = torch.cat([m0[:, None], memories[:, 1:-1]], dim=1)  # m0 keeps its graph
        return torch.cat([m0[:, None], step_all(cell, prev, x)], dim=1), report.fell_back
    h = grad_horizon or x.shape[1]
    m, out, fell_back = m0, [m0[:, None]], False
    for lo in range(0, x.shape[1], h):
        chunk, report = parallel_rollout(cell, m.detach() if lo > 0 else m, x[:, lo:lo + h], **settings)
        out.append(chunk[:, 1:])
        m, fell_back = chunk[:, -1], fell_back or report.fell_back
    return torch.cat(out, dim=1), fell_back


class AutoSolver:
    """rollout.solver=auto: per kind of call (batch, length, gradient horizon, gradients on or off,
    device, dtype) the first calls are trials, stepping and each solver of AUTO_CANDIDATES that runs
    on the cell in closed form taking turns, `trials` times each; from then on that kind of call uses
    the one with the fastest forward rollout. A solver may take at most `slack` x the fastest time
    seen (in trials) or stepping's time (once chosen): past that it stops iterating and the unsolved
    sequences are stepped, so a call costs at most about slack + 1 steppings. A solver that falls
    back in a trial is not chosen; a chosen one that falls back is replaced by stepping for good.
    Every call returns the memories of stepping (to the solver's tolerance). What it measured and
    chose: `choices()`.

    Timed is the forward rollout only (the backward of a solve is another solve with the same
    convergence, and every candidate's readout and loss are the same)."""

    def __init__(self, cell: Cell, trials: int = 2, slack: float = 2.0):
        self.candidates = ["sequential", *(s for s in AUTO_CANDIDATES if closed_form(cell, s))]
        self.trials, self.slack = trials, slack
        self.seconds: dict[tuple, dict[str, list[float]]] = {}
        self.failed: dict[tuple, set[str]] = {}
        self.chosen: dict[tuple, str] = {}

    def next(self, key: tuple) -> tuple[str, float | None]:
        """The solver for this call and, for a solver, its time budget in seconds (None: no limit)."""
        seen, failed = self.seconds.setdefault(key, {n: [] for n in self.candidates}), self.failed.setdefault(key, set())
        ok = {n: min(ts) for n, ts in seen.items() if ts and n not in failed}
        if key not in self.chosen:
            todo = [n for n in self.candidates if len(seen[n]) < self.trials and n not in failed]
            if todo:
                name = min(todo, key=lambda n: len(seen[n]))  # taking turns, stepping first
                return name, (self.slack * min(ok.values()) if ok and name != "sequential" else None)
            self.chosen[key] = min(ok, key=ok.get)
        name = self.chosen[key]
        return name, (self.slack * ok["sequential"] if name != "sequential" and "sequential" in ok else None)

    def record(self, key: tuple, name: str, seconds: float, fell_back: bool) -> None:
        if fell_back:
            self.failed[key].add(name)
            if self.chosen.get(key) == name:
                self.chosen[key] = "sequential"
        elif key not in self.chosen:
            self.seconds[key][name].append(seconds)

    def choices(self) -> list[dict]:
        """One entry per kind of call seen: its key, the fastest time of each candidate, the failed ones
        and the choice (None while trials go on)."""
        names = ("batch", "length", "grad_horizon", "grad", "device", "dtype")
        return [{**dict(zip(names, key)), "seconds": {n: min(ts) for n, ts in seen.items() if ts},
                 "failed": sorted(self.failed.get(key, ())), "chosen": self.chosen.get(key)}
                for key, seen in self.seconds.items()]


def _auto(cell: Cell, m0: torch.Tensor, x: torch.Tensor, grad_horizon: int | None, how: Rollout) -> torch.Tensor:
    if how.auto is None:
        how.auto = AutoSolver(cell)  # its measurements live as long as the run's Rollout
    auto = how.auto
    key = (x.shape[0], x.shape[1], grad_horizon, torch.is_grad_enabled(), x.device.type, str(m0.dtype))
    name, budget = auto.next(key)
    sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)
    sync()
    t0 = time.perf_counter()
    if name == "sequential":
        memories, fell_back = _stepped(cell, m0, x, grad_horizon), False
    else:
        settings = {**how.cfg.settings(), "solver": name, "on_fail": "sequential"}
        if budget is not None:
            settings["deadline"] = t0 + budget
        memories, fell_back = _solved(cell, m0, x, grad_horizon, settings)
    sync()
    auto.record(key, name, time.perf_counter() - t0, fell_back)
    return memories


@torch.no_grad()
def onpolicy_states(cell: Cell, m0: torch.Tensor, x: torch.Tensor, how: Rollout | None = None,
                    lengths: torch.Tensor | None = None) -> torch.Tensor:
    """The cell's own memories (B, T+1, Z) without a graph (run as `how` says; held after each row's
    end with `lengths`). With them, the one-step (grad_horizon=1) regression of every step is one
    batched `cell.update` call: the same gradient as stepping with the state detached, but the
    backward pass runs in parallel over time."""
    return rollout(cell, m0, x, how=how, lengths=lengths)


def _rollout_chunks(cell: Cell, m0: torch.Tensor, x: torch.Tensor, h: int) -> torch.Tensor:
    """`rollout` through `cell.sequence`, the state detached between chunks of h steps (as the loop)."""
    m, out = m0, [m0[:, None]]
    for lo in range(0, x.shape[1], h):
        chunk = cell.sequence(m.detach() if lo > 0 else m, x[:, lo:lo + h])  # (B, <=h, Z)
        out.append(chunk)
        m = chunk[:, -1]
    return torch.cat(out, dim=1)
