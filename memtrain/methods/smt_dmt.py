"""SMT, then DMT, in one run, handing over on measured criteria instead of a step count.

    SMT phase   teacher and cell jointly (methods/smt.py), until the teacher has solved the task
                (accuracy >= handover.teacher_acc, or its loss has stopped improving), its memories
                are followable (the cell's one-step error relative to the teacher's step, `dyn_rel`
                at evaluation, <= handover.followable, or no longer improving) AND, since the
                teacher solved it, SMT has stopped improving the RNN alone (neither its accuracy nor
                its final drift better for handover.smt_patience evaluations): the memories settle
                into a followable (Markov) form only as joint training goes on, and a handover at the
                moment the teacher solves the task left DMT at chance (EXPERIMENTS.md section 8)
                (or, with handover.smt_steps, once SMT has had that many updates and the teacher has
                solved the task: the hand-over at the stall, for a cell that SMT alone never makes follow)
    DMT phase   the teacher frozen, the cell rolled out on its own memories (methods/dmt.py) at
                handover.dmt_lr_scale x the learning rate (the schedule's, or with
                handover.dmt_schedule="constant" its peak, train.lr), until neither the RNN-alone
                accuracy nor the drift at the last step has improved for handover.dmt_patience
                evaluations at full length, or the RNN alone has reached handover.dmt_target. With
                dmt.grow the rollouts start at dmt.rollout steps and grow, up to the whole sequence,
                each time DMT stops improving at their length (`RolloutGrowth`, methods/dmt.py)

A teacher that has learned nothing (held-out loss within handover.teacher_min_gain = 5% of the
targets' entropy, methods/evaluate.py) never counts as solved, by its plateau or otherwise, and its tiny `dyn_rel` never
counts as followable; SMT warns once when that lasts three evaluations.

Decisions are taken at evaluations (train.eval_every), from the held-out batch, as `Decision`s logged
as rows {"event": "handover" | "dmt_grow" | "dmt_plateau" | "dmt_target" | "warning", ...} in metrics.jsonl. The
phase, the rollout length and the plateau trackers (`Plateau`, one per watched quantity) are buffers,
so a resumed run continues in the phase and at the rollout length it stopped at.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn as nn

from .base import Decision, Method, Plateau
from .dmt import DMT, DMTConfig, RolloutGrowth, dmt_loss, rnn_score, rollout_starts
from .evaluate import teacher_learned
from .rollout import Rollout
from .smt import SMT, SMTConfig

SMT_PHASE, DMT_PHASE, DONE = 0, 1, 2
DMT_SCHEDULES = ("follow", "constant")
COUNT_FROM = ("start", "solved")
PLATEAUS = ("teacher_ce", "dyn_rel", "rnn_acc", "drift")  # the watched quantities, in the order of older checkpoints' slots


@dataclass
class HandoverConfig:
    """method=smt-dmt: when SMT hands over to DMT, and when DMT is done (checked at every evaluation)."""
    teacher_acc: float | None = 0.95  # the teacher has solved the task at this held-out accuracy (None: use teacher_plateau)
    teacher_plateau: int | None = None  # ...or after this many evaluations without a 1% better teacher loss (None: off)
    teacher_min_gain: float | None = 0.05  # a teacher counts (as solved, its memories as followable) only once its loss is this fraction below the targets' entropy (None: always)
    followable: float = 0.1  # and its memories are followable at this dyn_rel (cell's one-step error / teacher's step)
    followable_plateau: int = 3  # ...or once dyn_rel has not improved by 1% for this many evaluations
    smt_patience: int = 3  # and SMT has not improved the RNN alone (accuracy +0.005, final drift -2%) for this many evaluations since the teacher solved the task
    solved_coef_dyn_teacher: float | None = None  # once the teacher has solved the task, smt.coef_dyn_teacher becomes this: a stronger pull towards memories the cell can follow, after (not before) the teacher has found what to remember (None: unchanged)
    smt_steps: int | None = None  # ...or hand over after this many SMT updates once the teacher has solved the task, whatever the RNN alone does (None: only on the criteria above)
    count_from: str = "start"  # where smt_steps and SMT's cosine schedule (train.schedule_steps) count from: "start": the run's first update | "solved": the evaluation at which the teacher solved the task, the rate held at its peak until then (a teacher that learns late still gets the whole schedule)
    dmt_lr_scale: float = 0.1  # DMT's learning rate as a fraction of the schedule's (train.lr)
    dmt_schedule: str = "follow"  # DMT's rate is dmt_lr_scale x: "follow": the schedule's rate at each update | "constant": its peak, train.lr
    dmt_target: float | None = None  # also end the run once the RNN alone reaches this held-out accuracy (None: only on the plateau)
    dmt_patience: int | None = 5  # end the run after this many evaluations with neither RNN accuracy (+0.005) nor final drift (-2%) improving (None: train to train.steps)

    def validate(self) -> None:
        if self.teacher_acc is None and self.teacher_plateau is None:
            raise ValueError("handover.teacher_acc and handover.teacher_plateau are both null: SMT would never hand over")
        if self.teacher_acc is not None and not 0 < self.teacher_acc <= 1:
            raise ValueError(f"handover.teacher_acc must be in (0, 1] or null, got {self.teacher_acc}")
        for n in ("teacher_plateau", "followable_plateau", "smt_patience", "dmt_patience", "smt_steps"):
            v = getattr(self, n)
            if v is not None and v < 1:
                raise ValueError(f"handover.{n} must be >= 1{' or null' if n in ('teacher_plateau', 'dmt_patience', 'smt_steps') else ''}, got {v}")
        if self.teacher_min_gain is not None and not self.teacher_min_gain < 1:
            raise ValueError(f"handover.teacher_min_gain must be < 1 or null, got {self.teacher_min_gain}")
        if self.solved_coef_dyn_teacher is not None and self.solved_coef_dyn_teacher < 0:
            raise ValueError(f"handover.solved_coef_dyn_teacher must be >= 0 or null, got {self.solved_coef_dyn_teacher}")
        if self.followable <= 0:
            raise ValueError(f"handover.followable must be > 0, got {self.followable}")
        if self.dmt_target is not None and not 0 < self.dmt_target <= 1:
            raise ValueError(f"handover.dmt_target must be in (0, 1] or null, got {self.dmt_target}")
        if not 0 < self.dmt_lr_scale <= 1:
            raise ValueError(f"handover.dmt_lr_scale must be in (0, 1], got {self.dmt_lr_scale}")
        if self.count_from not in COUNT_FROM:
            raise ValueError(f"handover.count_from must be one of {COUNT_FROM}, got {self.count_from!r}")
        if self.dmt_schedule not in DMT_SCHEDULES:
            raise ValueError(f"handover.dmt_schedule must be one of {DMT_SCHEDULES}, got {self.dmt_schedule!r}")


def _said(ev: dict, who: str) -> str:
    """A network's evaluation in a sentence: its accuracy, or its loss where targets are real-valued."""
    if ev.get(f"{who}_acc") is not None:
        return f"acc {ev[f'{who}_acc']:.3f}"
    return f"loss {ev[f'{who}_ce']:.3f}"


class SMTDMT(Method):
    """SMT until the handover criteria hold, then DMT until it plateaus. Settings: the `smt`, `dmt` and
    `handover` sections of the run configuration."""

    name, needs_teacher, sections = "smt-dmt", True, ("smt", "dmt", "handover")

    def __init__(self, teacher, cell, cfg: tuple[SMTConfig, DMTConfig, HandoverConfig], rollout: Rollout | None = None):
        super().__init__(teacher, cell, cfg, rollout)
        self.smt_cfg, self.dmt_cfg, self.ho = cfg
        # the SMT settings once the teacher has solved the task (derived once; chosen by `solved_step`)
        self.solved_smt_cfg = (self.smt_cfg if self.ho.solved_coef_dyn_teacher is None
                               else replace(self.smt_cfg, coef_dyn_teacher=self.ho.solved_coef_dyn_teacher))
        smt = SMT(teacher, cell, self.smt_cfg, self.rollout)  # (checks that the cell can follow the teacher)
        object.__setattr__(self, "_smt", smt)  # not a submodule: its teacher and cell are ours already
        self.last_input_head = smt.last_input_head  # the probe is trained and saved with the run
        self.far_head = smt.far_head  # (so is the far-future head)
        self.blank_teacher = smt.blank_teacher  # (its count is saved with the run too)
        self.register_buffer("phase", torch.tensor(SMT_PHASE))
        self.register_buffer("handover_step", torch.tensor(-1))
        self.register_buffer("solved_step", torch.tensor(-1))  # the evaluation at which the teacher first solved the task (set on the main process; DDP broadcasts buffers before each forward)
        self.teacher_ce = Plateau(lambda v, b: v < 0.99 * b)  # the teacher's loss, 1% better
        self.dyn_rel = Plateau(lambda v, b: v < 0.99 * b)  # followability, 1% better
        self.rnn_acc = Plateau(lambda v, b: v > b + 0.005)  # the RNN alone's accuracy, +0.005
        self.drift = Plateau(lambda v, b: v < 0.98 * b)  # the RNN alone's final drift, 2% lower
        self.growth = RolloutGrowth(self.dmt_cfg)  # DMT's rollout length now (dmt.grow)

    @classmethod
    def check(cls, cfg, T: int) -> None:
        SMT.check(cfg[0], T)
        DMT.check(cfg[1], T)
        if cfg[2].solved_coef_dyn_teacher is not None:
            cfg[0].require_dyn_on_teacher("handover.solved_coef_dyn_teacher")

    def trainable(self):
        # SMT's (teacher, cell without the copied readout, probe) and the cell's readout and start for
        # DMT; a parameter outside the current phase's loss gets no gradient and AdamW leaves it alone
        seen, out = set(), []
        for p in self._smt.trainable() + list(self.cell.parameters()):
            if id(p) not in seen:
                seen.add(id(p))
                out.append(p)
        return out

    def loss(self, x, y, gen=None, lengths=None):
        if int(self.phase) == SMT_PHASE:
            return self._smt.loss(x, y, gen, self.solved_smt_cfg if int(self.solved_step) >= 0 else self.smt_cfg, lengths=lengths)
        cfg = self.growth.now()
        return dmt_loss(self.teacher, self.cell, x, y, cfg, rollout_starts(cfg, x, gen, lengths), self.rollout, lengths)

    def before_eval(self):
        if int(self.phase) == SMT_PHASE:
            self._smt.before_eval()  # the cell runs alone with the teacher's readout and m_empty

    def sequential_steps(self, T: int) -> int:
        return 1 if int(self.phase) == SMT_PHASE else self.growth.steps(T)

    def schedule_step(self, step: int, warmup: int) -> int:
        """With handover.count_from=solved the schedule waits at its peak (after warmup) until the
        teacher has solved the task at update s, then runs from there: update s + k reads the schedule
        at warmup + k. (On other processes `solved_step` arrives with the next forward's buffers; the
        update in between reads the peak either way: k = 0.)"""
        if self.ho.count_from == "start":
            return step
        solved = int(self.solved_step)
        if solved < 0:
            return min(step, warmup)
        return min(step, warmup) + max(0, step - max(solved, warmup))

    def _smt_steps_done(self, step: int) -> bool:
        """SMT has had handover.smt_steps updates, counted as handover.count_from says."""
        start = int(self.solved_step) if self.ho.count_from == "solved" else 0
        return self.ho.smt_steps is not None and step >= start + self.ho.smt_steps

    def lr(self, scheduled: float, peak: float) -> float:
        if int(self.phase) == SMT_PHASE:
            return scheduled
        return self.ho.dmt_lr_scale * (peak if self.ho.dmt_schedule == "constant" else scheduled)

    def finished(self) -> bool:
        return int(self.phase) == DONE

    def report(self) -> dict:
        return {"handover_step": int(self.handover_step) if int(self.handover_step) >= 0 else None,
                "dmt_rollout": int(self.growth.length) or None}

    def upgrade_state(self, tensors: dict, version: int) -> dict:
        """Checkpoints from before the `Plateau` trackers keep them as slots of two buffers, `best` and
        `since` (4,), in PLATEAUS order; before format 5 have no blank-teacher count (SMT's); before
        format 9 no rollout length (dmt.rollout's) or stage tracker (unused); before 10 not the
        update at which the length began (read as 0: dmt.grow_min_steps was 0)."""
        tensors = self._smt.upgrade_state(tensors, version)
        if version < 10:  # what the file lacks (< 9: DMT at dmt.rollout, nothing watched; 9: the start)
            tensors = {**RolloutGrowth.fresh_state(self.dmt_cfg), **tensors}
        if "best" in tensors and "since" in tensors:
            best, since = tensors["best"], tensors["since"]
            tensors = {k: v for k, v in tensors.items() if k not in ("best", "since")}
            for i, name in enumerate(PLATEAUS):
                tensors[f"{name}.best"], tensors[f"{name}.since"] = best[i].clone(), since[i].clone()
        return tensors

    # ---- decisions ----------------------------------------------------------------------------
    def _rnn_stale(self, ev: dict) -> int:
        """Evaluations since the RNN alone last improved its accuracy (+0.005) or final drift (-2%)."""
        return min(self.rnn_acc.watch(rnn_score(ev)), self.drift.watch(ev["drift"][-1]))

    def _restart_rnn_watch(self) -> None:
        self.rnn_acc.restart()
        self.drift.restart()

    def after_eval(self, ev: dict, step: int, budget_used: float = 0.0) -> Decision | None:
        if int(self.phase) == SMT_PHASE:
            return self._smt_decision(ev, step, budget_used)
        if int(self.phase) != DMT_PHASE:
            return None
        if self.ho.dmt_target is not None and ev.get("rnn_acc") is not None and ev["rnn_acc"] >= self.ho.dmt_target:
            return Decision("dmt_target", f"the RNN alone reached {ev['rnn_acc']:.3f} >= handover.dmt_target={self.ho.dmt_target}",
                            {"rnn_acc": ev["rnn_acc"], "drift_end": ev["drift"][-1]})
        if self.growth.growing(len(ev["drift"]) - 1):
            return self.growth.decide(ev, step)
        if self.ho.dmt_patience is not None and self._rnn_stale(ev) >= self.ho.dmt_patience:
            return Decision("dmt_plateau", f"no better RNN accuracy or final drift in {self.ho.dmt_patience} evaluations",
                            {"rnn_acc": ev["rnn_acc"], "drift_end": ev["drift"][-1]})
        return None

    def _smt_decision(self, ev: dict, step: int, budget_used: float) -> Decision | None:
        warning = self.blank_teacher.check(ev, step, budget_used)  # said once, when the teacher stays blank
        return self._handover(ev, step) or warning

    def _handover(self, ev: dict, step: int) -> Decision | None:
        ho = self.ho
        stale_ce = self.teacher_ce.watch(ev["teacher_ce"])
        stale_dyn = self.dyn_rel.watch(ev["dyn_rel"])
        if ho.teacher_min_gain is not None and not teacher_learned(ev, ho.teacher_min_gain):
            return None  # a teacher that has learned nothing neither solves the task nor is followed
        if int(self.solved_step) < 0:
            if ((ho.teacher_acc is not None and ev.get("teacher_acc") is not None and ev["teacher_acc"] >= ho.teacher_acc)
                    or (ho.teacher_plateau is not None and stale_ce >= ho.teacher_plateau)):
                self.solved_step.fill_(step)
                self._restart_rnn_watch()  # from here on: is SMT still improving the RNN alone?
            else:
                return None
        dyn = ev["dyn_rel"]  # None where the teacher's memories do not move (evaluate.py)
        low = dyn is not None and dyn <= ho.followable
        stale_rnn = self._rnn_stale(ev)
        if self._smt_steps_done(step):
            since = " since then" if ho.count_from == "solved" else ""
            return Decision("handover",
                            (f"teacher solved the task at step {int(self.solved_step)} ({_said(ev, 'teacher')}); SMT "
                             f"has had handover.smt_steps={ho.smt_steps} updates{since} (RNN alone {_said(ev, 'rnn')})"),
                            {"teacher_acc": ev["teacher_acc"], "dyn_rel": dyn, "rnn_acc": ev["rnn_acc"]})
        if stale_rnn < ho.smt_patience or not (low or stale_dyn >= ho.followable_plateau):
            return None
        return Decision("handover",
                        (f"teacher solved the task at step {int(self.solved_step)} ({_said(ev, 'teacher')}); dyn_rel "
                         f"{'null' if dyn is None else f'{dyn:.3f}'} ({'<= ' + str(ho.followable) if low else 'no longer improving'}); "
                         f"RNN alone {_said(ev, 'rnn')}, not improved by SMT in {ho.smt_patience} evaluations"),
                        {"teacher_acc": ev["teacher_acc"], "dyn_rel": dyn, "rnn_acc": ev["rnn_acc"]})

    def apply(self, decision: Decision, step: int) -> bool:
        """Carry out a decision of `after_eval` (on every process); -> True when the run should end."""
        if decision.event == "warning":
            return False
        if decision.event == "handover":
            self._smt.before_eval()  # the cell takes the teacher's readout and m_empty once more, then owns them
            self.phase.fill_(DMT_PHASE)
            self.handover_step.fill_(step)
            self.growth.begin(step)
            self._restart_rnn_watch()  # DMT's plateau is counted from the handover
            return False
        if decision.event == "dmt_grow":
            self.growth.apply(decision, step)
            return False
        self.phase.fill_(DONE)
        return True
