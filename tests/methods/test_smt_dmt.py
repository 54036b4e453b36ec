"""method=smt-dmt: SMT hands over to DMT when the teacher has solved the task and its memories are
followable, DMT ends the run on a plateau; the decisions survive a resume."""
import json

import pytest
import torch
from safetensors.torch import load_file

from memtrain.methods.dmt import DMT, DMTConfig
from memtrain.methods.smt import SMTConfig
from memtrain.methods.dmt import kstep_at
from memtrain.methods.smt_dmt import DMT_PHASE, DONE, SMT_PHASE, SMTDMT, HandoverConfig, Plateau
from memtrain.presets import preset_config
from memtrain.training.trainer import train
from tests.conftest import tiny_cell, tiny_teacher


def _method(dmt=None, **handover):
    return SMTDMT(tiny_teacher(), tiny_cell("mlp"), (SMTConfig(future=4), dmt or DMTConfig(), HandoverConfig(**handover)))


def _ev(teacher_acc=0.5, teacher_ce=1.0, dyn_rel=0.5, rnn_acc=0.1, drift_end=1.0, T=1, **kstep):
    return {"teacher_acc": teacher_acc, "teacher_ce": teacher_ce, "dyn_rel": dyn_rel, "rnn_acc": rnn_acc,
            "drift": [0.0] * T + [drift_end], **{k.replace("k", "kstep@"): v for k, v in kstep.items()}}


def _to_dmt(m):
    """Hand `m` (teacher_acc=0.5, followable=1.0, smt_patience=1) over to DMT."""
    assert m.after_eval(_ev(teacher_acc=1.0, dyn_rel=0.01), 1) is None
    m.apply(m.after_eval(_ev(teacher_acc=1.0, dyn_rel=0.01), 2), 2)
    assert int(m.phase) == DMT_PHASE


def test_hands_over_once_solved_followable_and_smt_no_longer_helps_the_rnn():
    m = _method(teacher_acc=0.9, followable=0.1, followable_plateau=100, smt_patience=2)
    assert m.after_eval(_ev(teacher_acc=0.5, dyn_rel=0.05), 10) is None, "followable, not solved"
    assert m.after_eval(_ev(teacher_acc=0.95, dyn_rel=0.05), 20) is None, "solved just now"
    assert int(m.solved_step) == 20
    assert m.after_eval(_ev(teacher_acc=0.95, dyn_rel=0.05, rnn_acc=0.3), 30) is None, "SMT still improves the RNN"
    assert m.after_eval(_ev(teacher_acc=0.95, dyn_rel=0.3, rnn_acc=0.3), 40) is None, "1 stale evaluation"
    assert m.after_eval(_ev(teacher_acc=0.95, dyn_rel=0.3, rnn_acc=0.3), 50) is None, "2 stale, but not followable"
    d = m.after_eval(_ev(teacher_acc=0.92, dyn_rel=0.08, rnn_acc=0.301), 60)
    assert d.event == "handover" and "step 20" in d.why and "0.301" in d.why
    assert m.apply(d, 60) is False and int(m.phase) == DMT_PHASE and m.report() == {"handover_step": 60, "dmt_rollout": None}
    assert m.lr(2e-3, 3e-3) == pytest.approx(2e-4) and m.sequential_steps(16) == 16


def test_plateaus_count_evaluations_without_improvement():
    m = _method(teacher_acc=None, teacher_plateau=2, followable=1e-3, followable_plateau=2, smt_patience=1)
    for ce, dyn in ((2.0, 0.5), (1.5, 0.4), (1.499, 0.399)):  # improving by >= 1%, then not (1st)
        assert m.after_eval(_ev(teacher_ce=ce, dyn_rel=dyn), 0) is None
    assert m.after_eval(_ev(teacher_ce=1.6, dyn_rel=0.45), 0) is None  # 2nd: the loss has plateaued, solved
    d = m.after_eval(_ev(teacher_ce=1.6, dyn_rel=0.45), 0)  # dyn_rel plateaued, RNN alone stale once
    assert d is not None and "no longer improving" in d.why


def test_dmt_ends_the_run_on_a_plateau_of_accuracy_and_drift():
    m = _method(teacher_acc=0.5, followable=1.0, dmt_patience=2, smt_patience=1)
    assert m.after_eval(_ev(teacher_acc=1.0, dyn_rel=0.01), 4) is None
    m.apply(m.after_eval(_ev(teacher_acc=1.0, dyn_rel=0.01), 5), 5)
    assert m.after_eval(_ev(rnn_acc=0.5, drift_end=1.0), 6) is None
    assert m.after_eval(_ev(rnn_acc=0.6, drift_end=1.0), 7) is None, "accuracy still improves"
    assert m.after_eval(_ev(rnn_acc=0.601, drift_end=0.99), 8) is None, "1 evaluation without improvement"
    d = m.after_eval(_ev(rnn_acc=0.6, drift_end=0.995), 9)
    assert d.event == "dmt_plateau" and m.apply(d, 9) is True and m.finished() and int(m.phase) == DONE


def test_bad_handover_settings_are_named():
    with pytest.raises(ValueError, match="handover.teacher_acc and handover.teacher_plateau"):
        HandoverConfig(teacher_acc=None).validate()
    with pytest.raises(ValueError, match="handover.dmt_lr_scale"):
        HandoverConfig(dmt_lr_scale=0).validate()
    with pytest.raises(ValueError, match="handover.smt_patience must be >= 1, got 0"):
        HandoverConfig(smt_patience=0).validate()


def _cfg(out, *over):
    # (the tiny teacher learns nothing in these few steps: the blank-teacher guard is switched off)
    return preset_config("tiny", ["method=smt-dmt", "train.eval_every=2", "train.log_every=1", "handover.smt_patience=1",
                                  "handover.teacher_min_gain=null",
                                  f"out_dir={out}", *over])


def test_a_run_switches_phase_freezes_the_teacher_and_stops_itself(tmp_path):
    out = tmp_path / "run"
    summary = train(_cfg(out, "train.steps=40", "handover.teacher_acc=0.01", "handover.followable=100",
                         "handover.dmt_patience=1", "handover.dmt_lr_scale=0.5", "train.ckpt_every=2", "train.keep_last=50"), progress=False)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    warnings = [r for r in rows if r.get("event") == "warning"]
    assert all(w["step"] >= 10 for w in warnings), "no warning before a quarter of the 40-update budget"
    events = [r for r in rows if "event" in r and r["event"] != "warning"]
    assert [e["event"] for e in events] == ["handover", "dmt_plateau"] and events[0]["step"] >= 4
    handover = events[0]["step"]
    assert summary["handover_step"] == handover and summary["steps"] == events[1]["step"] < 40
    assert summary["sequential_steps"] == 12  # the tiny preset's T: the run ended in DMT
    smt_rows = [r for r in rows if "loss" in r and r["step"] < handover]
    dmt_rows = [r for r in rows if "loss" in r and r["step"] >= handover]
    assert all("loss_dec" in r for r in smt_rows) and all("loss_readout" in r and "loss_dec" not in r for r in dmt_rows)
    assert all(r["lr"] == pytest.approx(0.5 * 1e-3) for r in dmt_rows)
    # the teacher does not move after the handover: the checkpoint at the handover holds the final teacher
    ckpt = load_file(str(out / "checkpoints" / f"step-{handover:08d}" / "model.safetensors"))
    final = load_file(str(out / "model.safetensors"))
    teacher = [k for k in final if k.startswith("teacher.")]
    assert teacher and all(torch.equal(ckpt[k], final[k]) for k in teacher)
    assert any(not torch.equal(ckpt[k], final[k]) for k in final if k.startswith("cell."))
    again = train(_cfg(out, "train.steps=80", "handover.teacher_acc=0.01", "handover.followable=100",
                       "handover.dmt_patience=1", "handover.dmt_lr_scale=0.5", "train.ckpt_every=2", "train.keep_last=50"), progress=False)
    assert again["steps"] == summary["steps"], "a run its method ended trains no further"


def test_resume_continues_in_the_phase_it_stopped_in(tmp_path):
    over = ["handover.teacher_acc=0.01", "handover.followable=100", "handover.dmt_patience=null", "train.ckpt_every=3"]

    def trace(d):
        return [(r["step"], r.get("loss"), r.get("event")) for r in map(json.loads, (d / "metrics.jsonl").read_text().splitlines())
                if "loss" in r or "event" in r]
    train(_cfg(tmp_path / "straight", "train.steps=24", *over), progress=False)
    handover = [t[0] for t in trace(tmp_path / "straight") if t[2] == "handover"]
    assert len(handover) == 1 and handover[0] < 22
    for stop in (handover[0] - 1, handover[0] + 1):  # stopped in SMT (trackers restored), in DMT (phase restored)
        split = tmp_path / f"split{stop}"
        train(_cfg(split, f"train.steps={stop}", *over), progress=False)
        train(_cfg(split, "train.steps=24", *over), progress=False)
        assert trace(tmp_path / "straight") == trace(split)
        a, b = load_file(str(tmp_path / "straight" / "model.safetensors")), load_file(str(split / "model.safetensors"))
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_phase_routes_gradients():
    """SMT phase: the teacher learns, the cell's copied readout does not; DMT phase: the reverse."""
    m = _method(teacher_acc=0.01, followable=100, smt_patience=1)
    x = torch.randint(0, 5, (3, 10))
    y = x.roll(1, 1)
    m.loss(x, y, torch.Generator().manual_seed(0))[0].backward()
    assert m.teacher.embed.weight.grad is not None and m.cell.head.head.weight.grad is None
    m.zero_grad(set_to_none=True)
    m.after_eval(_ev(teacher_acc=1.0, dyn_rel=0.0), 1)
    m.apply(m.after_eval(_ev(teacher_acc=1.0, dyn_rel=0.0), 2), 2)
    assert int(m.phase) == DMT_PHASE != SMT_PHASE
    m.loss(x, y, torch.Generator().manual_seed(0))[0].backward()
    assert all(p.grad is None for p in m.teacher.parameters()) and m.cell.head.head.weight.grad is not None


def test_dmt_target_ends_the_run_at_an_accuracy():
    m = _method(teacher_acc=0.5, followable=1.0, smt_patience=1, dmt_target=0.99, dmt_patience=100)
    m.after_eval(_ev(teacher_acc=1.0, dyn_rel=0.01), 1)
    m.apply(m.after_eval(_ev(teacher_acc=1.0, dyn_rel=0.01), 2), 2)
    assert m.after_eval(_ev(rnn_acc=0.98), 3) is None
    d = m.after_eval(_ev(rnn_acc=0.99), 4)
    assert d.event == "dmt_target" and m.apply(d, 4) is True and m.finished()
    with pytest.raises(ValueError, match="handover.dmt_target"):
        HandoverConfig(dmt_target=1.5).validate()


def test_a_teacher_that_has_learned_nothing_neither_solves_nor_is_followed():
    """At the targets' entropy (teacher_gain ~0) a plateaued loss and a tiny dyn_rel count for nothing;
    the same evaluations with a teacher that has learned hand over. SMT warns once after 3 blank ones
    (here a quarter of the budget is spent by then)."""
    blank = dict(teacher_gain=0.01, target_entropy=2.0, teacher_ce=1.98)
    m = _method(teacher_acc=None, teacher_plateau=1, followable=0.5, smt_patience=1)
    decisions = [m.after_eval({**_ev(dyn_rel=1e-4), **blank}, s, budget_used=s / 8) for s in range(6)]
    assert [d.event if d else None for d in decisions] == [None, None, "warning", None, None, None]
    assert "learned nothing in 3 evaluations" in decisions[2].why and int(m.solved_step) < 0
    assert m.apply(decisions[2], 2) is False and int(m.phase) == SMT_PHASE
    learned = dict(teacher_gain=0.4, target_entropy=2.0, teacher_ce=1.2)
    m = _method(teacher_acc=None, teacher_plateau=1, followable=0.5, smt_patience=1)
    events = [m.after_eval({**_ev(dyn_rel=1e-4), **learned}, s) for s in range(4)]
    assert [d.event if d else None for d in events[:3]] == [None, None, "handover"], "solved at 1 (plateau), over at 2"
    off = _method(teacher_acc=None, teacher_plateau=1, followable=0.5, smt_patience=1, teacher_min_gain=None)
    assert any(d and d.event == "handover" for d in (off.after_eval({**_ev(dyn_rel=1e-4), **blank}, s) for s in range(4))), \
        "teacher_min_gain=null: the old rule"
    with pytest.raises(ValueError, match="handover.teacher_min_gain must be < 1"):
        HandoverConfig(teacher_min_gain=1.0).validate()


def test_the_blank_teacher_warning_waits_for_a_fair_budget():
    """A teacher that has learned nothing is named once, and only after `patience` evaluations in a
    row AND a quarter of the run's budget: the demo's teacher sits at chance until ~12% of its run."""
    from memtrain.methods.smt import BlankTeacher

    blank = {"teacher_gain": 0.0, "teacher_ce": 2.0, "target_entropy": 2.0}
    learned = {**blank, "teacher_gain": 0.5}
    bt = BlankTeacher(patience=3, min_budget=0.25)
    assert [bt.check(blank, s, s / 3000) for s in (50, 100, 150, 200)] == [None] * 4, "the demo's false alarm at 150"
    assert bt.check(learned, 350, 350 / 3000) is None and int(bt.streak) == 0
    seen = [bt.check(blank, s, s / 3000) for s in range(400, 1100, 50)]
    said = [i for i, d in enumerate(seen) if d is not None]
    assert len(said) == 1 and range(400, 1100, 50)[said[0]] == 750, "named once, at a quarter of the budget"
    assert "learned nothing in" in seen[said[0]].why and "25% of the run's budget" in seen[said[0]].why
    late = BlankTeacher(patience=3)
    assert [late.check(blank, s, 0.9) is not None for s in (1, 2, 3)] == [False, False, True], "still needs patience"
    assert BlankTeacher().check({"rnn_acc": 0.1}, 5, 1.0) is None, "no teacher, nothing to say"


def test_a_measurement_that_is_not_a_number_is_never_an_improvement():
    """Issue 25: dyn_rel is None where the teacher's memories do not move, the final drift of a
    diverged RNN inf or nan. Neither is an improvement, nor is it kept as the best value (a checkpoint
    holds no inf), and the plateaus still count the evaluations."""
    m = _method(teacher_acc=0.5, followable=0.1, followable_plateau=2, smt_patience=1, dmt_patience=2)
    for step, dyn in enumerate((None, None, None)):  # no dyn_rel ever: never below 0.1, but a plateau at last
        d = m.after_eval(_ev(teacher_acc=1.0, dyn_rel=dyn), step)
    assert d is not None and d.event == "handover" and d.values["dyn_rel"] is None and "dyn_rel null (no longer improving)" in d.why
    m.apply(d, 2)
    for step, drift in enumerate((float("inf"), float("nan"), float("inf")), 3):  # the RNN diverged, accuracy flat
        d = m.after_eval(_ev(rnn_acc=0.5, drift_end=drift), step)
    assert d is not None and d.event == "dmt_plateau"
    assert all(bool(torch.isfinite(p.best)) for p in (m.teacher_ce, m.dyn_rel, m.rnn_acc, m.drift)), "no inf or nan kept as a best value"
    fresh = Plateau(lambda v, b: v < 0.99 * b)
    fresh.watch(float("nan"))
    assert fresh.watch(5.0) == 0, "a first number improves on a first non-number"


def test_a_checkpoint_with_the_older_tracker_slots_loads_into_the_plateaus():
    """Checkpoints from before the Plateau trackers hold `best` and `since` (4,): they are translated
    into the four plateaus (teacher_ce, dyn_rel, rnn_acc, drift), so an older smt-dmt run resumes."""
    from memtrain.methods.smt_dmt import PLATEAUS

    m = _method(teacher_acc=0.9, followable=0.1, followable_plateau=100, smt_patience=2)
    for step, (acc, dyn) in enumerate(((0.5, 0.3), (0.95, 0.2), (0.95, 0.25))):
        m.after_eval(_ev(teacher_acc=acc, dyn_rel=dyn, rnn_acc=0.1 * step), step)
    state = m.extra_state()
    plateaus = [getattr(m, name) for name in PLATEAUS]
    old = {k: v for k, v in state.items() if (not k.endswith((".best", ".since")) or k.startswith("blank_teacher."))
           and not k.startswith("growth.")}  # (format 9 added the growth buffers)
    old["best"], old["since"] = torch.stack([p.best for p in plateaus]), torch.stack([p.since for p in plateaus])
    assert set(old) - set(state) == {"best", "since"}
    fresh = _method(teacher_acc=0.9, followable=0.1, followable_plateau=100, smt_patience=2)
    upgraded = fresh.upgrade_state(old, 6)
    assert set(upgraded) == set(state) and all(torch.equal(upgraded[k], state[k]) for k in state)
    fresh.load_extra_state(upgraded)
    assert [(float(p.best), int(p.since)) for p in (getattr(fresh, n) for n in PLATEAUS)] == \
        [(float(p.best), int(p.since)) for p in plateaus]
    assert fresh.upgrade_state(state, 9) == state, "today's keys pass as they are"


def test_solved_coef_dyn_teacher_applies_from_the_solving_evaluation_and_survives_a_state_round_trip():
    """handover.solved_coef_dyn_teacher: before the teacher solves the task the SMT phase's gradients are
    smt's own; from the evaluation where it does, those of smt.coef_dyn_teacher = that value (the same
    draw, float64), and a method rebuilt from the saved state (a resume) keeps them."""
    torch.manual_seed(0)
    teacher, cell = tiny_teacher().double(), tiny_cell("mlp").double()
    smt = SMTConfig(future=4, coef_dyn=0.1)
    m = SMTDMT(teacher, cell, (smt, DMTConfig(), HandoverConfig(teacher_acc=0.9, solved_coef_dyn_teacher=2.0))).double()
    x = torch.randint(0, 5, (3, 10))
    y = x.roll(1, 1)

    def grads(method, cfg=None):
        loss = method.loss(x, y, torch.Generator().manual_seed(1)) if cfg is None else \
            method._smt.loss(x, y, torch.Generator().manual_seed(1), cfg)
        return torch.cat([g.flatten() for g in torch.autograd.grad(loss[0], list(teacher.parameters()))])

    torch.testing.assert_close(grads(m), grads(m, smt))
    m.after_eval(_ev(teacher_acc=0.95), 10)
    assert int(m.solved_step) == 10
    solved = grads(m)
    torch.testing.assert_close(solved, grads(m, SMTConfig(future=4, coef_dyn=0.1, coef_dyn_teacher=2.0)))
    assert not torch.allclose(solved, grads(m, smt))
    again = SMTDMT(teacher, cell, (smt, DMTConfig(), HandoverConfig(teacher_acc=0.9, solved_coef_dyn_teacher=2.0))).double()
    again.load_extra_state(m.extra_state())
    torch.testing.assert_close(grads(again), solved)


def test_solved_coef_dyn_teacher_is_refused_without_a_dynamics_loss_on_the_teacher():
    with pytest.raises(ValueError, match="handover.solved_coef_dyn_teacher must be >= 0"):
        HandoverConfig(solved_coef_dyn_teacher=-0.5).validate()
    with pytest.raises(ValueError, match="handover.solved_coef_dyn_teacher weighs"):
        SMTDMT.check((SMTConfig(future=4, dyn_trains_teacher=False), DMTConfig(), HandoverConfig(solved_coef_dyn_teacher=1.0)), 16)


def test_smt_steps_hands_over_at_the_stall_once_the_teacher_has_solved_the_task():
    m = _method(teacher_acc=0.9, followable=1e-6, followable_plateau=100, smt_patience=100, smt_steps=50)
    assert m.after_eval(_ev(teacher_acc=0.5, rnn_acc=0.1), 60) is None, "past smt_steps, but the teacher has not solved it"
    d = m.after_eval(_ev(teacher_acc=0.95, rnn_acc=0.3), 70)  # solved now; not followable by the other criteria
    assert d.event == "handover" and "handover.smt_steps=50" in d.why and d.values["rnn_acc"] == 0.3
    early = _method(teacher_acc=0.9, followable=1e-6, followable_plateau=100, smt_patience=100, smt_steps=50)
    for step, acc in ((10, 0.95), (40, 0.95), (45, 0.96)):
        assert early.after_eval(_ev(teacher_acc=0.95, rnn_acc=acc), step) is None, "solved, SMT still within its updates"
    assert early.after_eval(_ev(teacher_acc=0.95, rnn_acc=0.97), 50).event == "handover"


def test_dmt_rate_follows_the_schedule_or_stays_at_its_peak():
    for schedule, want in (("follow", 0.1 * 1e-4), ("constant", 0.1 * 3e-3)):
        m = _method(teacher_acc=0.5, followable=1.0, smt_patience=1, dmt_schedule=schedule)
        assert m.lr(1e-4, 3e-3) == 1e-4, "SMT: the schedule's rate"
        _to_dmt(m)
        assert m.lr(1e-4, 3e-3) == pytest.approx(want)


def test_kstep_at_reads_the_largest_measured_k_within_the_rollout():
    ev = {"kstep@1": 0.1, "kstep@2": 0.2, "kstep@4": 0.4, "kstep@8": 0.8, "kstep_growth": 2.0}
    assert (kstep_at(ev, 4), kstep_at(ev, 6), kstep_at(ev, 100), kstep_at(ev, 1)) == (0.4, 0.4, 0.8, 0.1)
    assert kstep_at({"rnn_acc": 1.0}, 4) is None


def test_dmt_rollouts_grow_when_dmt_stops_improving_at_their_length():
    m = _method(DMTConfig(rollout=4, start="encoder", grow=2, grow_patience=2, grow_on="rollout"), teacher_acc=0.5,
                followable=1.0, smt_patience=1, dmt_patience=2)
    assert m.growth.now().rollout == 4 and m.sequential_steps(16) == 1, "SMT steps once"
    _to_dmt(m)
    assert m.sequential_steps(16) == 4
    assert m.after_eval(_ev(T=16, rnn_acc=0.2, k4=1.0, k8=2.0), 3) is None
    assert m.after_eval(_ev(T=16, rnn_acc=0.2, k4=0.5, k8=2.0), 4) is None, "kstep@4 improves"
    assert m.after_eval(_ev(T=16, rnn_acc=0.3, k4=0.5, k8=2.0), 5) is None, "the RNN alone improves"
    assert m.after_eval(_ev(T=16, rnn_acc=0.3, k4=0.495, k8=2.0, drift_end=0.1), 6) is None, "stale once (1% is no gain)"
    d = m.after_eval(_ev(T=16, rnn_acc=0.3, k4=0.5, k8=1.0), 7)
    assert d.event == "dmt_grow" and d.values["rollout"] == 8 and d.values["kstep@4"] == 0.5
    assert m.apply(d, 7) is False and m.growth.now().rollout == 8 and m.sequential_steps(16) == 8
    assert m.report()["dmt_rollout"] == 8 and m.dmt_cfg.rollout == 4, "the settings as written are kept"
    for step in (8, 9):  # watched afresh at 8 steps: kstep@8 is now the measure
        assert m.after_eval(_ev(T=16, rnn_acc=0.3, k4=0.5, k8=1.0), step) is None
    m.apply(m.after_eval(_ev(T=16, rnn_acc=0.3, k4=0.5, k8=1.0), 10), 10)
    assert m.growth.now().rollout == 16, "8 x 2, the whole sequence"
    # at full length the plateau of accuracy and final drift ends the run, as without growth
    for step in (11, 12):
        assert m.after_eval(_ev(T=16, rnn_acc=0.3, drift_end=1.0), step) is None
    d = m.after_eval(_ev(T=16, rnn_acc=0.3, drift_end=1.0), 13)
    assert d.event == "dmt_plateau" and m.apply(d, 13) is True


def test_by_default_rollouts_grow_once_the_next_lengths_error_stops_falling():
    """grow_on="next": at n-step rollouts the watched error is kstep@(2n): DMT goes on while the error
    beyond its rollouts still falls, though the error at n has stopped."""
    m = _method(DMTConfig(rollout=4, start="encoder", grow=2, grow_patience=2), teacher_acc=0.5, followable=1.0, smt_patience=1)
    _to_dmt(m)
    assert m.dmt_cfg.grow_on == "next"
    steps = [(1.0, 2.0), (1.0, 1.5), (1.0, 1.2), (1.0, 1.0)]  # (kstep@4, kstep@8): @4 flat from the start, @8 falling
    for i, (k4, k8) in enumerate(steps):
        assert m.after_eval(_ev(T=16, k4=k4, k8=k8), 3 + i) is None, f"kstep@8 still falls ({i})"
    assert m.after_eval(_ev(T=16, k4=1.0, k8=0.995), 7) is None, "stale once"
    d = m.after_eval(_ev(T=16, k4=1.0, k8=0.99), 8)
    assert d.event == "dmt_grow" and d.values["rollout"] == 8 and "kstep@8" in d.why and d.values["kstep@8"] == 0.99
    with pytest.raises(ValueError, match="dmt.grow_on must be one of"):
        DMTConfig(grow_on="both").validate()


def test_smt_dmts_minimum_stage_counts_from_the_handover():
    """The SMT updates before the handover are not rollout steps at dmt.rollout: the first length's
    minimum counts from the handover (update 2 here)."""
    m = _method(DMTConfig(rollout=4, start="encoder", grow=2, grow_patience=1, grow_min_steps=20), teacher_acc=0.5,
                followable=1.0, smt_patience=1)
    _to_dmt(m)
    assert int(m.growth.start) == 2
    assert [m.after_eval(_ev(T=16, k8=1.0), s) for s in (3, 4, 6)] == [None] * 3, "16 rollout steps < 20"
    d = m.after_eval(_ev(T=16, k8=1.0), 7)
    assert d.event == "dmt_grow" and "5 updates there" in d.why


def test_growth_stops_at_the_sequence_length():
    m = _method(DMTConfig(rollout=5, grow=4, grow_patience=1, grow_on="rollout"), teacher_acc=0.5, followable=1.0, smt_patience=1)
    _to_dmt(m)
    m.after_eval(_ev(T=12, k4=1.0), 3)
    d = m.after_eval(_ev(T=12, k4=1.0), 4)
    assert d.values["rollout"] == 12 and "kstep@5" in d.why


def test_growing_rollouts_change_the_dmt_loss_they_train():
    """The loss after a growth step is DMT's loss at the new rollout length (same draws), not the old one's."""
    from memtrain.methods.dmt import dmt_loss, rollout_starts
    m = _method(DMTConfig(rollout=2, start="encoder", grow=3, grow_patience=1), teacher_acc=0.5, followable=1.0, smt_patience=1)
    _to_dmt(m)
    x = torch.randint(0, 5, (3, 10))
    y = x.roll(1, 1)
    assert m.after_eval(_ev(T=10, k2=1.0), 3) is None
    m.apply(m.after_eval(_ev(T=10, k2=1.0), 4), 4)
    assert int(m.growth.length) == 6
    got, _ = m.loss(x, y, torch.Generator().manual_seed(3))
    cfg6 = DMTConfig(rollout=6, start="encoder")
    want, _ = dmt_loss(m.teacher, m.cell, x, y, cfg6, rollout_starts(cfg6, x, torch.Generator().manual_seed(3)))
    assert torch.equal(got, want)
    got.backward()
    assert all(p.grad is None for p in m.teacher.parameters()) and m.cell.head.head.weight.grad is not None


def test_bad_growth_settings_are_named():
    with pytest.raises(ValueError, match="dmt.grow must be >= 2"):
        DMTConfig(grow=1).validate()
    with pytest.raises(ValueError, match="dmt.grow_patience must be >= 1"):
        DMTConfig(grow=2, grow_patience=0).validate()
    with pytest.raises(ValueError, match="handover.dmt_schedule must be one of"):
        HandoverConfig(dmt_schedule="cosine").validate()
    with pytest.raises(ValueError, match="handover.smt_steps must be >= 1 or null, got 0"):
        HandoverConfig(smt_steps=0).validate()
    for rollout in (None, 16):
        with pytest.raises(ValueError, match="dmt.grow grows DMT's rollouts from dmt.rollout"):
            SMTDMT.check((SMTConfig(future=4), DMTConfig(rollout=rollout, grow=2), HandoverConfig()), 16)
        with pytest.raises(ValueError, match="dmt.grow grows DMT's rollouts from dmt.rollout"):
            DMT.check(DMTConfig(rollout=rollout, grow=2), 16)
    SMTDMT.check((SMTConfig(future=4), DMTConfig(rollout=4, grow=2), HandoverConfig()), 16)


def test_a_growing_run_resumes_at_the_rollout_length_it_stopped_at(tmp_path):
    """Stopped after a growth step, the run resumes at the grown length with its trackers: the same
    losses and decisions as a run straight through."""
    over = ["train.steps=30", "handover.teacher_acc=0.01", "handover.followable=100", "dmt.rollout=3", "dmt.start=encoder",
            "dmt.grow=2", "dmt.grow_patience=1", "handover.dmt_patience=1", "handover.dmt_schedule=constant", "train.ckpt_every=3",
            "train.schedule=cosine", "train.schedule_steps=8", "handover.smt_steps=4"]

    def trace(d):
        return [(r["step"], r.get("loss"), r.get("event"), r.get("rollout"), r.get("lr"))
                for r in map(json.loads, (d / "metrics.jsonl").read_text().splitlines()) if "loss" in r or "event" in r]
    straight = train(_cfg(tmp_path / "straight", *over), progress=False)
    t = trace(tmp_path / "straight")
    grows = [e for e in t if e[2] == "dmt_grow"]
    assert [g[3] for g in grows] == [6, 12], "3 -> 6 -> 12 (the tiny preset's T)"
    handover = next(e[0] for e in t if e[2] == "handover")
    assert all(e[4] == pytest.approx(0.1 * 1e-3) for e in t if e[1] is not None and e[0] >= handover), "constant DMT rate"
    assert straight["dmt_rollout"] == 12
    split = tmp_path / "split"
    stop = grows[0][0] + 1
    train(_cfg(split, *[o if not o.startswith("train.steps=") else f"train.steps={stop}" for o in over]), progress=False)
    train(_cfg(split, *over), progress=False)
    assert trace(tmp_path / "straight") == trace(split)
    a, b = load_file(str(tmp_path / "straight" / "model.safetensors")), load_file(str(split / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_dmt_alone_grows_its_rollouts_by_the_same_rule_and_reads_older_runs():
    from memtrain.methods.dmt import DMT
    m = DMT(tiny_teacher(), tiny_cell("mlp"), DMTConfig(rollout=4, start="encoder", grow=2, grow_patience=1, grow_on="rollout"))
    assert m.sequential_steps(16) == 4 and m.report() == {"dmt_rollout": 4}
    assert m.after_eval(_ev(T=16, k4=1.0), 1) is None
    d = m.after_eval(_ev(T=16, k4=1.0), 2)
    assert d.event == "dmt_grow" and m.apply(d, 2) is False and m.sequential_steps(16) == 8
    assert m.after_eval(_ev(T=16, k8=1.0), 3) is None, "watched afresh at 8 steps"
    m.apply(m.after_eval(_ev(T=16, k8=1.0), 4), 4)
    assert m.sequential_steps(16) == 16 and m.after_eval(_ev(T=16), 5) is None, "at full length: trains on"
    fixed = DMT(tiny_teacher(), tiny_cell("mlp"), DMTConfig(rollout=4))
    assert all(fixed.after_eval(_ev(T=16, k4=1.0), s) is None for s in range(5)) and fixed.sequential_steps(16) == 4
    old = {k: v for k, v in fixed.extra_state().items() if not k.startswith("growth.")}
    assert fixed.upgrade_state(old, 8).keys() == fixed.extra_state().keys(), "a format-8 DMT run resumes"
    nine = {k: v for k, v in m.extra_state().items() if k != "growth.start"}
    up = m.upgrade_state(nine, 9)
    assert up.keys() == m.extra_state().keys() and int(up["growth.length"]) == 16, "a format-9 run keeps its length"


def test_growth_waits_for_the_minimum_rollout_steps_at_each_length():
    """dmt.grow_min_steps: stale for the patience is not enough before that many rollout steps (updates x
    length) at the length; counted afresh from each growth."""
    from memtrain.methods.dmt import DMT
    m = DMT(tiny_teacher(), tiny_cell("mlp"), DMTConfig(rollout=4, start="encoder", grow=2, grow_patience=1,
                                                          grow_on="rollout", grow_min_steps=40))
    assert [m.after_eval(_ev(T=16, k4=1.0), s) for s in (2, 5, 9)] == [None] * 3, "stale, but 36 < 40 rollout steps"
    d = m.after_eval(_ev(T=16, k4=1.0), 10)
    assert d.event == "dmt_grow" and "10 updates there" in d.why
    m.apply(d, 10)
    assert int(m.growth.start) == 10 and m.sequential_steps(16) == 8
    assert [m.after_eval(_ev(T=16, k8=1.0), s) for s in (11, 12, 14)] == [None] * 3, "32 < 40 at 8 steps"
    assert m.after_eval(_ev(T=16, k8=1.0), 15).values["rollout"] == 16, "5 updates x 8 steps"
    with pytest.raises(ValueError, match="dmt.grow_min_steps must be >= 0"):
        DMTConfig(grow=2, grow_min_steps=-1).validate()
    with pytest.raises(ValueError, match="dmt.grow_min_steps=10 keeps each length of growing rollouts: set dmt.grow"):
        DMTConfig(grow_min_steps=10).validate()


def test_real_valued_evaluations_hand_over_on_the_teachers_plateau_and_watch_the_rnns_loss():
    """Real targets have no accuracy: the teacher counts as solved when its loss plateaus, and the RNN
    alone improves when its loss falls (by 0.005)."""
    m = _method(teacher_acc=None, teacher_plateau=1, teacher_min_gain=None, followable=1.0, smt_patience=2)

    def ev(teacher_ce, rnn_ce):
        return {"teacher_acc": None, "rnn_acc": None, "teacher_ce": teacher_ce, "rnn_ce": rnn_ce, "dyn_rel": 0.01,
                "teacher_gain": None, "drift": [0.0, 1.0]}
    assert m.after_eval(ev(1.0, 2.0), 1) is None
    assert m.after_eval(ev(1.0, 2.0), 2) is None and int(m.solved_step) == 2, "the loss stopped falling: solved"
    assert m.after_eval(ev(1.0, 1.5), 3) is None, "the RNN's loss still falls"
    assert m.after_eval(ev(1.0, 1.498), 4) is None, "stale once (0.002 is no gain)"
    d = m.after_eval(ev(1.0, 1.497), 5)
    assert d.event == "handover" and "loss 1.000" in d.why and "RNN alone loss 1.497" in d.why


def test_count_from_solved_holds_the_schedule_and_counts_smt_steps_from_the_solving_evaluation():
    start = _method(teacher_acc=0.9, followable=1e-6, followable_plateau=100, smt_patience=100, smt_steps=50)
    assert [start.schedule_step(s, 5) for s in (0, 3, 40)] == [0, 3, 40], "count_from=start: the run's own update"
    m = _method(teacher_acc=0.9, followable=1e-6, followable_plateau=100, smt_patience=100, smt_steps=50, count_from="solved")
    assert [m.schedule_step(s, 5) for s in (0, 3, 5, 40)] == [0, 3, 5, 5], "warmup as usual, then held at the peak"
    assert m.after_eval(_ev(teacher_acc=0.5), 60) is None
    assert m.after_eval(_ev(teacher_acc=0.95), 70) is None, "solved at 70: SMT's 50 updates start here"
    assert [m.schedule_step(s, 5) for s in (70, 71, 100)] == [5, 6, 35]
    assert m.after_eval(_ev(teacher_acc=0.95), 110) is None and start.after_eval(_ev(teacher_acc=0.95), 70).event == "handover"
    d = m.after_eval(_ev(teacher_acc=0.95, rnn_acc=0.2), 120)
    assert d.event == "handover" and "smt_steps=50 updates since then" in d.why
    early = _method(teacher_acc=0.9, smt_steps=50, count_from="solved")
    early.after_eval(_ev(teacher_acc=0.95), 2)  # solved within warmup: the schedule runs as if counted from the start
    assert [early.schedule_step(s, 5) for s in (1, 2, 5, 9)] == [1, 2, 5, 9]
    with pytest.raises(ValueError, match="handover.count_from must be one of"):
        HandoverConfig(count_from="handover").validate()


def test_a_run_counting_from_the_solved_teacher_reads_the_schedule_from_there_and_resumes_exactly(tmp_path):
    """The logged rate: warmup, the peak until the teacher solves the task (its plateau here), then the
    cosine over train.schedule_steps - warmup updates (a plain reference), handed over smt_steps later."""
    import math
    over = ["train.steps=20", "handover.teacher_acc=null", "handover.teacher_plateau=2", "handover.followable=1e-9",
            "handover.followable_plateau=100", "handover.smt_patience=100", "train.schedule=cosine", "train.warmup=2",
            "train.lr=1e-3", "train.schedule_steps=8", "handover.smt_steps=6", "handover.count_from=solved",
            "handover.dmt_patience=null", "train.ckpt_every=1", "train.keep_last=50"]

    def trace(d):
        return [(r["step"], r.get("loss"), r.get("event"), r.get("lr"))
                for r in map(json.loads, (d / "metrics.jsonl").read_text().splitlines()) if "loss" in r or r.get("event") == "handover"]
    train(_cfg(tmp_path / "straight", *over), progress=False)
    t = trace(tmp_path / "straight")
    handover = next(e for e in t if e[2] == "handover")
    solved = int(json.loads(next(line for line in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()
                                 if '"handover"' in line))["why"].split("at step ")[1].split(" ")[0])
    assert solved >= 4 and handover[0] == solved + 6, "solved at an evaluation past warmup; handed over 6 updates later"
    for step, _, event, lr in t:
        if event is None and step < handover[0]:
            want = (1e-3 * (step + 1) / 2 if step < 2 else 1e-3 if step <= solved
                    else 1e-3 * 0.5 * (1 + math.cos(math.pi * min(1.0, (step - solved) / 6))))
            assert lr == pytest.approx(want, abs=1e-12), step
    split = tmp_path / "split"  # stopped just after the teacher solved the task: the count is restored
    train(_cfg(split, *[o if not o.startswith("train.steps=") else f"train.steps={solved + 1}" for o in over]), progress=False)
    train(_cfg(split, *over), progress=False)
    assert trace(tmp_path / "straight") == trace(split)
