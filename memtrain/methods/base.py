"""What a training method is: an nn.Module wrapping the networks it trains, with its loss.

The training loop (training/trainer.py) knows methods only through this class, and finds them by
name in the registry (`memtrain.methods.METHODS`). Adding a method is one new file with a subclass
plus one registry line; nothing in the trainer changes.

Legend: B batch, T time, Z memory size.
"""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn as nn

from .rollout import Rollout


@dataclass
class Decision:
    """A method's decision after an evaluation (`Method.after_eval`): `event` names it, `why` says why
    in a sentence, `values` are the measurements it rests on (JSON values). Logged as one row of
    metrics.jsonl, {"step": ..., **row()}."""
    event: str
    why: str
    values: dict = field(default_factory=dict)

    def row(self) -> dict:
        return {"event": self.event, **self.values, "why": self.why}


class Method(nn.Module):
    """A training method over a cell and, for methods with `needs_teacher`, a teacher.

    Subclasses set the class attributes, implement `loss`, and override what differs:
        name            the value of the `method=` setting
        config_class    the dataclass of its settings (RunConfig section `name`, or `method_args`)
        sections        or: the RunConfig sections it reads, passed as a tuple (smt-dmt: smt, dmt, handover)
        needs_teacher   the run builds a teacher (SMT, DMT) and saves it with the cell
        needs_init      the run fine-tunes a finished run: `init_from=` is required (DMT)

    Its settings come checked (`training.config.resolve`). `rollout` is how its cell runs through
    time, a `Rollout` of the run's `rollout` section (None: stepped): the method owns it and passes it
    to every function that runs the cell (`rollout(..., how=self.rollout)`), and the trainer evaluates
    with it. A subclass with an __init__ of its own passes `rollout` on.
    """

    name: ClassVar[str] = ""
    config_class: ClassVar[type | None] = None
    needs_teacher: ClassVar[bool] = False
    needs_init: ClassVar[bool] = False
    sections: ClassVar[tuple[str, ...]] = ()

    def __init__(self, teacher: nn.Module | None, cell: nn.Module, cfg=None, rollout: Rollout | None = None):
        super().__init__()
        if self.needs_teacher and teacher is None:
            raise ValueError(f"method {self.name!r} needs a teacher")
        self.teacher, self.cell, self.cfg = teacher, cell, cfg
        self.rollout = rollout if rollout is not None else Rollout()

    @classmethod
    def check(cls, cfg, T: int) -> None:
        """Refuse settings `cfg` that cannot work on sequences of length T (before anything is built)."""

    def trainable(self) -> list[nn.Parameter]:
        """The parameters the optimizer updates (default: the cell's)."""
        return list(self.cell.parameters())

    def loss(self, x: torch.Tensor, y: torch.Tensor, gen: torch.Generator | None = None,
             lengths: torch.Tensor | None = None):
        """x, y (B, T) -> (scalar loss, {name: detached scalar} metrics); `gen` draws any randomness.
        `lengths` (B,): where each row ends (lengths.py; None: every row is T long); nothing past a
        row's end may reach the loss or move a memory."""
        raise NotImplementedError

    def forward(self, x, y, gen=None, lengths=None):  # what DistributedDataParallel calls
        return self.loss(x, y, gen) if lengths is None else self.loss(x, y, gen, lengths=lengths)

    def before_eval(self) -> None:
        """Run before the cell is evaluated alone (SMT hands it the teacher's readout and m_empty)."""

    def sequential_steps(self, T: int) -> int:
        """Cell updates that must run one after another in one training update (default: T)."""
        return T

    # ---- a method that changes course during a run (smt-dmt) --------------------------------
    def after_eval(self, ev: dict, step: int, budget_used: float = 0.0) -> Decision | None:
        """Called on the main process with each evaluation's results (methods/evaluate.py) and the
        fraction of the run's budget spent so far (updates of train.steps or seconds of
        train.time_limit, whichever is further); -> None, or a Decision that the trainer logs and
        hands to `apply` on every process."""
        return None

    def apply(self, decision: Decision, step: int) -> bool:
        """Carry out a decision of `after_eval`; -> True when the run should end here."""
        return False

    def schedule_step(self, step: int, warmup: int) -> int:
        """The update at which the learning-rate schedule is read for update `step` (train.warmup
        given); default: `step` itself (a method may hold the schedule until an event of its own)."""
        return step

    def lr(self, scheduled: float, peak: float) -> float:
        """The learning rate of the next update, given the schedule's rate now and its peak (train.lr);
        default: the schedule's (a later phase may train more gently, or leave the schedule)."""
        return scheduled

    def finished(self) -> bool:
        """True once the method has ended the run by itself (a resumed run then trains no further)."""
        return False

    def report(self) -> dict:
        """The method's own entries for the run's summary."""
        return {}

    def extra_state(self) -> dict[str, torch.Tensor]:
        """The method's own tensors, without the networks it wraps (e.g. SMT's last-input probe,
        trained but not part of the final model): a training checkpoint holds them for an exact resume."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith(("cell.", "teacher."))}

    def load_extra_state(self, tensors: dict[str, torch.Tensor]) -> None:
        self.load_state_dict({**self.state_dict(), **tensors})

    def upgrade_state(self, tensors: dict[str, torch.Tensor], version: int) -> dict[str, torch.Tensor]:
        """The method's own tensors from a training checkpoint of format `version` (as `extra_state`
        names them) in today's names and layout, before they are loaded (default: as they are)."""
        return tensors


class Plateau(nn.Module):
    """One watched quantity: its best value so far and the evaluations since it last improved, as
    buffers (saved with the run's method state, so a resumed run goes on counting). `better(value,
    best)` says what counts as an improvement."""

    def __init__(self, better):
        super().__init__()
        self.better = better
        self.register_buffer("best", torch.tensor(0.0, dtype=torch.float64))
        self.register_buffer("since", torch.tensor(-1))  # -1: nothing recorded yet

    def watch(self, value: float | None) -> int:
        """Record `value`; -> evaluations since it last improved. A value that is not a number (None:
        an undefined ratio; inf or nan: a diverged RNN) is no improvement; as the first one it records
        the worst value there is (finite: a checkpoint holds no inf), which any measurement improves on."""
        measured = value is not None and math.isfinite(value)
        if int(self.since) < 0:
            worst = sys.float_info.max if self.better(0.0, sys.float_info.max) else -sys.float_info.max
            self.best.fill_(value if measured else worst)
            self.since.fill_(0)
        elif measured and self.better(value, float(self.best)):
            self.best.fill_(value)
            self.since.fill_(0)
        else:
            self.since += 1
        return int(self.since)

    def restart(self) -> None:
        """Forget what was recorded: the next value is the first."""
        self.since.fill_(-1)
