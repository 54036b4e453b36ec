"""DAgger Memory Training (paper, DMT): the teacher is frozen; the cell rolls out on its own memories
with teacher-forced inputs and is regressed onto the encoder's memories of the same inputs.

    loss = coef_dyn * mean_{s = k, 2k, ..} MSE(m^_s, M[:, s]) + coef_readout * CE(readout(sg(m^_s)), y_{s-1})

Legend: B batch, T time, Td rollout steps, Z memory size. M[:, s] = memory after s inputs.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..lengths import mask_targets
from ..models.cells import Cell, check_compatible
from ..models.inputs import flat, take
from ..models.teacher import Teacher
from .base import Decision, Method, Plateau
from .losses import readout_loss, shift_targets, upcast
from .rollout import Rollout, onpolicy_states, rollout

STARTS = ("empty", "encoder")
GROW_ON = ("next", "rollout")


@dataclass
class DMTConfig:
    """DAgger Memory Training: the cell rolls out on its own memories, regressed onto the frozen teacher's."""
    rollout: int | None = None  # Td: steps per rollout (None: the whole sequence)
    every: int = 1  # k: regress every k-th rollout memory
    start: str = "empty"  # "empty": from the cell's m_empty; "encoder": from M[:, s0] at a random s0
    grad_horizon: int | None = 1  # 1: one-step gradients (state detached); None: through the rollout
    coef_dyn: float = 1.0  # weight of the regression of the cell's rollout onto the teacher's memories
    coef_readout: float = 1.0  # weight of the readout's cross-entropy on the rolled-out memories
    readout_on_detached: bool = True  # readout CE trains the head only, never the memory path
    grow: int | None = None  # rollouts start at dmt.rollout steps and grow by this factor (up to the sequence) each time DMT stops improving at their length (None: fixed)
    grow_patience: int = 5  # ...that is, after this many evaluations without a 2% lower k-step error (see grow_on) or a better RNN alone (+0.005)
    grow_on: str = "next"  # the k-step error watched: "next": at the next length (grow x rollout, at most T) | "rollout": at the rollout's own
    grow_min_steps: int = 0  # ...and not before this many rollout steps (updates x rollout length) at the length now: the patience alone moved on too soon (EXPERIMENTS.md section 17)

    def validate(self) -> None:
        if self.start not in STARTS:
            raise ValueError(f"dmt.start must be one of {STARTS}, got {self.start!r}")
        for n in ("coef_dyn", "coef_readout"):
            if getattr(self, n) < 0:
                raise ValueError(f"dmt.{n} must be >= 0, got {getattr(self, n)}")
        if self.every < 1:
            raise ValueError(f"dmt.every must be >= 1, got {self.every}")
        if self.rollout is not None and self.rollout < 1:
            raise ValueError(f"dmt.rollout must be >= 1 or None, got {self.rollout}")
        if self.grad_horizon is not None and self.grad_horizon < 1:
            raise ValueError(f"dmt.grad_horizon must be >= 1 or None, got {self.grad_horizon}")
        if self.grow is not None and self.grow < 2:
            raise ValueError(f"dmt.grow must be >= 2 or null, got {self.grow}")
        if self.grow_patience < 1:
            raise ValueError(f"dmt.grow_patience must be >= 1, got {self.grow_patience}")
        if self.grow_on not in GROW_ON:
            raise ValueError(f"dmt.grow_on must be one of {GROW_ON}, got {self.grow_on!r}")
        if self.grow_min_steps < 0:
            raise ValueError(f"dmt.grow_min_steps must be >= 0, got {self.grow_min_steps}")
        if self.grow_min_steps and self.grow is None:
            raise ValueError(f"dmt.grow_min_steps={self.grow_min_steps} keeps each length of growing rollouts: set dmt.grow too")

    def check_growth(self, T: int) -> None:
        """dmt.grow needs a first rollout shorter than the sequences."""
        if self.grow is not None and not (self.rollout is not None and self.rollout < T):
            raise ValueError(f"dmt.grow grows DMT's rollouts from dmt.rollout: set dmt.rollout below the sequence "
                             f"length ({T}), got {self.rollout}")


def dmt_loss(teacher: Teacher, cell: Cell, x, y, cfg: DMTConfig, s0: torch.Tensor, how: Rollout | None = None,
             lengths: torch.Tensor | None = None):
    """DMT objective for rollouts starting at memory positions s0 (B,) (all 0 for start='empty'); the
    cell runs through time as `how` says (the run's Rollout; None: stepped). With `lengths` (B,) a
    rollout stops moving at its row's end and only memories up to the end are regressed (each
    regressed memory weighs the same, whichever row it is in)."""
    B, T = x.shape[:2]
    y = mask_targets(y, lengths)
    Td = T - int(s0.max()) if cfg.rollout is None else cfg.rollout
    sel = torch.arange(cfg.every, Td + 1, cfg.every, device=x.device)  # regressed rollout steps
    if len(sel) == 0:
        raise ValueError(f"dmt.every={cfg.every} is longer than the rollout ({Td} steps)")
    need = s0[:, None] + F.pad(sel, (1, 0))  # (B, 1+n): the start memory and every regressed one
    with torch.no_grad():  # every target of the rollout from this one pass, only where it is read
        M_tgt = teacher.encode(x, None if need.shape[1] == T + 1 else need)  # (B, 1+n, Z)
    Z = M_tgt.shape[-1]
    idx = s0[:, None] + torch.arange(Td + 1, device=x.device)  # (B, Td+1) memory positions
    x_roll = take(x, idx[:, :-1])  # (B, Td[, F]) inputs x_{s0} .. x_{s0+Td-1}
    y_roll = take(shift_targets(y), idx[:, 1:])  # (B, Td[, G]): y_{s-1} for s = s0+1..
    m0 = cell.init_memory(B) if cfg.start == "empty" else M_tgt[:, 0]
    # each row's real steps within the rollout (padding past its end never moves the cell's memory)
    real = None if lengths is None else (lengths.to(x.device) - s0).clamp(0, Td)
    if cfg.grad_horizon == 1:
        # one-step gradients: a forward-only rollout, then one batched update from its states at the
        # steps the loss reads (the regressed ones; every step when the readout's loss also trains
        # the memory path): the rollout's values, each with its one-step graph
        m_own = onpolicy_states(cell, m0, x_roll, how, real)  # (B, Td+1, Z)
        m_in = torch.cat([m0[:, None], m_own[:, 1:-1]], dim=1)  # (B, Td, Z), keeping m0's own graph
        steps = sel - 1 if cfg.readout_on_detached else torch.arange(Td, device=x.device)
        m_next = cell.update(m_in[:, steps].reshape(-1, Z), flat(x_roll[:, steps])).view(B, -1, Z)
        m_reg, m_read = (m_next, m_own[:, 1:]) if cfg.readout_on_detached else (m_next[:, sel - 1], m_next)
    else:
        m_hat = rollout(cell, m0, x_roll, cfg.grad_horizon, how, real)  # (B, Td+1, Z)
        m_reg, m_read = m_hat[:, sel], m_hat[:, 1:].detach() if cfg.readout_on_detached else m_hat[:, 1:]
    drift = (upcast(m_reg) - upcast(M_tgt[:, 1:])).pow(2).mean(-1)  # (B, n)
    if real is None:
        loss_dyn, drift_end = drift.mean(), drift[:, -1].mean()
    else:  # the regressed memories inside each row, and each row's last one
        inside = sel[None, :] <= real[:, None]  # (B, n)
        loss_dyn = (drift * inside).sum() / inside.sum().clamp_min(1)
        last = (inside.sum(1) - 1).clamp_min(0)  # (B,)
        has = inside.any(1)
        drift_end = (drift.gather(1, last[:, None])[:, 0] * has).sum() / has.sum().clamp_min(1)
    loss_readout = readout_loss(cell.output, cell.readout, m_read, y_roll)
    loss = cfg.coef_dyn * loss_dyn + cfg.coef_readout * loss_readout
    return loss, {"loss_dyn": loss_dyn.detach(), "loss_readout": loss_readout.detach(), "drift_end": drift_end.detach()}


def rollout_starts(cfg: DMTConfig, x: torch.Tensor, gen: torch.Generator | None,
                   lengths: torch.Tensor | None = None) -> torch.Tensor:
    """Where each sequence's rollout starts (B,): memory 0 for start='empty', else a random position
    that leaves room for the rollout (within each row's length, with `lengths`; a row shorter than
    the rollout starts at 0 and its rollout stops at its end)."""
    B, T = x.shape[:2]
    if cfg.rollout is not None and cfg.rollout > T:
        raise ValueError(f"dmt.rollout={cfg.rollout} is longer than the sequences (T={T})")
    if cfg.start == "empty":
        return torch.zeros(B, dtype=torch.long, device=x.device)
    if lengths is None:
        span = T - (cfg.rollout or T // 2)
        return torch.randint(0, span + 1, (B,), generator=gen).to(x.device)
    L = lengths.cpu().long()
    span = (L - (cfg.rollout if cfg.rollout is not None else L // 2)).clamp_min(0)  # (B,)
    u = torch.rand(B, generator=gen)
    return (u * (span + 1)).long().clamp(max=span).to(x.device)


class RolloutGrowth(nn.Module):
    """dmt.grow: DMT's rollouts start at dmt.rollout steps and grow by that factor, up to the whole
    sequence, each time DMT stops improving: neither the cell's k-step error (`kstep@k` of the
    evaluation, 2% lower) nor the RNN alone's accuracy (+0.005) better for dmt.grow_patience
    evaluations. The error watched is at the next length (k = grow x the rollout; dmt.grow_on="next",
    the default) or at the rollout's own (dmt.grow_on="rollout", the first version): n-step rollouts
    teach the cell to hold its memory a little beyond n steps, and that goes on after the n-step error
    itself has stopped falling (EXPERIMENTS.md section 16). A rollout short enough to keep what must be
    remembered gives targets the cell can reach; whole-sequence DMT straight after SMT pulled a cell
    that loses the needle towards an average (section 15). The length now and the trackers are
    buffers, so a resumed run goes on at the length it stopped at. Without dmt.grow: dmt.rollout."""

    def __init__(self, cfg: DMTConfig):
        super().__init__()
        self.cfg = cfg
        self.register_buffer("length", torch.tensor(cfg.rollout or 0))  # the rollout now (0: whole sequences)
        self.register_buffer("start", torch.tensor(0))  # the update at which the length now began
        self.err = Plateau(lambda v, b: v < 0.98 * b)
        self.acc = Plateau(lambda v, b: v > b + 0.005)

    def now(self) -> DMTConfig:
        """DMT's settings at the rollout length now."""
        n = int(self.length) or None
        return self.cfg if n == self.cfg.rollout else replace(self.cfg, rollout=n)

    def steps(self, T: int) -> int:
        return int(self.length) or T

    def growing(self, T: int) -> bool:
        """Still below the whole sequence, with dmt.grow."""
        return self.cfg.grow is not None and 0 < int(self.length) < T

    def begin(self, step: int) -> None:
        """DMT starts at `step` (smt-dmt's handover; method=dmt: 0)."""
        self.start.fill_(step)

    def decide(self, ev: dict, step: int) -> Decision | None:
        """After an evaluation at update `step`, while `growing`: a "dmt_grow" decision once DMT has
        stopped improving and has trained dmt.grow_min_steps rollout steps at this length."""
        T, n = len(ev["drift"]) - 1, int(self.length)
        longer = min(T, n * self.cfg.grow)
        k = longer if self.cfg.grow_on == "next" else n
        err = kstep_at(ev, k)
        stale = min(self.err.watch(err), self.acc.watch(rnn_score(ev)))
        updates = step - int(self.start)
        if stale < self.cfg.grow_patience or updates * n < self.cfg.grow_min_steps:
            return None
        return Decision("dmt_grow", f"no better kstep@{k} or RNN accuracy in {self.cfg.grow_patience} evaluations at "
                        f"{n}-step rollouts ({updates} updates there): {longer}-step rollouts from here",
                        {"rollout": longer, f"kstep@{k}": err, "rnn_acc": ev["rnn_acc"], "drift_end": ev["drift"][-1]})

    def apply(self, decision: Decision, step: int) -> None:
        self.length.fill_(int(decision.values["rollout"]))
        self.start.fill_(step)
        self.err.restart()
        self.acc.restart()

    @staticmethod
    def fresh_state(cfg: DMTConfig, prefix: str = "growth.") -> dict[str, torch.Tensor]:
        """The buffers of a run saved before rollouts could grow (format < 9): dmt.rollout, nothing watched."""
        return {f"{prefix}length": torch.tensor(cfg.rollout or 0), f"{prefix}start": torch.tensor(0),
                **{f"{prefix}{p}.{k}": v for p in ("err", "acc")
                   for k, v in (("best", torch.tensor(0.0, dtype=torch.float64)), ("since", torch.tensor(-1)))}}


class DMT(Method):
    """Fine-tunes the cell of a finished SMT run (`init_from=`) against its frozen teacher."""

    name, config_class, needs_teacher, needs_init = "dmt", DMTConfig, True, True

    def __init__(self, teacher: Teacher, cell: Cell, cfg: DMTConfig, rollout: Rollout | None = None):
        super().__init__(teacher, cell, cfg, rollout)
        check_compatible(cell.cfg, teacher.cfg)
        self.teacher.requires_grad_(False)
        self.growth = RolloutGrowth(cfg)

    @classmethod
    def check(cls, cfg: DMTConfig, T: int) -> None:
        if cfg.rollout is not None and cfg.rollout > T:
            raise ValueError(f"dmt.rollout={cfg.rollout} needs sequences at least that long; task length is {T}")
        if cfg.every > (cfg.rollout or T):
            raise ValueError(f"dmt.every={cfg.every} is longer than the rollout ({cfg.rollout or T} steps)")
        cfg.check_growth(T)

    def loss(self, x, y, gen=None, lengths=None):
        cfg = self.growth.now()
        return dmt_loss(self.teacher, self.cell, x, y, cfg, rollout_starts(cfg, x, gen, lengths), self.rollout, lengths)

    def sequential_steps(self, T: int) -> int:
        return self.growth.steps(T)

    def after_eval(self, ev: dict, step: int, budget_used: float = 0.0) -> Decision | None:
        return self.growth.decide(ev, step) if self.growth.growing(len(ev["drift"]) - 1) else None

    def apply(self, decision: Decision, step: int) -> bool:
        self.growth.apply(decision, step)
        return False

    def report(self) -> dict:
        return {"dmt_rollout": int(self.growth.length) or None}

    def upgrade_state(self, tensors: dict, version: int) -> dict:
        """Runs saved before format 9 have no growth buffers: dmt.rollout, nothing watched; format 9 not
        the update at which the length began (dmt.grow_min_steps was 0: read as 0)."""
        return {**RolloutGrowth.fresh_state(self.cfg), **tensors} if version < 10 else tensors


def kstep_at(ev: dict, n: int) -> float | None:
    """The evaluation's k-step error (`kstep@k`, methods/evaluate.py) at the largest measured k <= n
    (measured: powers of 2 and T); None where there is none."""
    ks = [int(key.split("@")[1]) for key in ev if key.startswith("kstep@")]
    ks = [k for k in ks if k <= n]
    return ev[f"kstep@{max(ks)}"] if ks else None


def rnn_score(ev: dict) -> float | None:
    """What "the RNN alone got better" watches in an evaluation: its accuracy on token targets, minus its
    loss per value on real-valued ones (which have no accuracy)."""
    if ev.get("rnn_acc") is not None:
        return ev["rnn_acc"]
    return None if ev.get("rnn_ce") is None else -ev["rnn_ce"]
