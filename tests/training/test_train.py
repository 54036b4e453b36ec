"""The one training loop: every cell x every method on a tiny config, determinism, resumable
pipeline (DMT/BPTT from an SMT run)."""
import io
import json
import sys

import numpy as np
import pytest
import torch

from memtrain.models.cells import CELLS, TEXTBOOK_KINDS
from memtrain.presets import preset_config
from memtrain.training.build import build
from memtrain.training.resume import RunState
from memtrain.training.monitor import Progress
from memtrain.training.trainer import train

FOLLOWERS = sorted(set(CELLS) - set(TEXTBOOK_KINDS))  # the cells that can follow a teacher


def _cfg(tmp_path, name, *over):
    return preset_config("tiny", [f"out_dir={tmp_path / name}", *over])


def _trace(path):
    return [json.loads(l)["loss"] for l in open(path / "metrics.jsonl") if '"loss"' in l]


@pytest.fixture(scope="module")
def smt_runs(tmp_path_factory):
    """One tiny SMT run per cell kind, shared by the DMT/BPTT-after-SMT tests."""
    root = tmp_path_factory.mktemp("smt")
    out = {}
    for kind in FOLLOWERS:
        cfg = preset_config("tiny", [f"cell.kind={kind}", f"out_dir={root / kind}"])
        out[kind] = (train(cfg, progress=False), root / kind)
    return out


@pytest.mark.parametrize("kind", FOLLOWERS)
def test_smt_trains_every_cell(smt_runs, kind):
    summary, path = smt_runs[kind]
    assert summary["steps"] == 5 and summary["sequential_steps"] == 1
    for k in ("rnn_acc", "teacher_acc"):
        assert 0.0 <= summary[k] <= 1.0
    assert len(summary["drift"]) == 13 and summary["drift"][0] == pytest.approx(0.0, abs=1e-6)  # m_empty copied
    trace = _trace(path)
    assert len(trace) == 2 and all(torch.isfinite(torch.tensor(trace)))


@pytest.mark.parametrize("kind", FOLLOWERS)
@pytest.mark.parametrize("method", ["dmt", "bptt"])
def test_dmt_and_bptt_start_from_smt(smt_runs, tmp_path, kind, method):
    from memtrain.runs import load_run

    _, smt_path = smt_runs[kind]
    cfg = _cfg(tmp_path, method, f"cell.kind={kind}", f"method={method}", f"init_from={smt_path}", "train.steps=3")
    summary = train(cfg, progress=False)
    assert summary["sequential_steps"] == 12
    # the cell actually moved away from the SMT weights
    _, _, _, before = load_run(str(smt_path))
    _, _, _, after = load_run(str(tmp_path / method))
    changed = [not torch.equal(a, b) for a, b in zip(before.state_dict().values(), after.state_dict().values())]
    assert any(changed)


@pytest.mark.parametrize("kind", sorted(CELLS))
def test_bptt_from_scratch(tmp_path, kind):
    summary = train(_cfg(tmp_path, "b", "method=bptt", f"cell.kind={kind}"), progress=False)
    assert "teacher_acc" not in summary and 0 <= summary["rnn_acc"] <= 1


def test_same_seed_same_loss_trace(tmp_path):
    a = _cfg(tmp_path, "a", "train.steps=12", "train.eval_every=100")
    b = _cfg(tmp_path, "b", "train.steps=12", "train.eval_every=100")
    c = _cfg(tmp_path, "c", "train.steps=12", "train.eval_every=100", "train.seed=1")
    for cfg in (a, b, c):
        train(cfg, progress=False)
    ta, tb, tc = _trace(tmp_path / "a"), _trace(tmp_path / "b"), _trace(tmp_path / "c")
    assert ta == tb and len(ta) == 3
    assert ta != tc


def test_smt_learns_something(tmp_path):
    """A real (small) learning signal: 40 SMT steps lower the decoder loss on retrieval (at least
    the answer is never the marker: ln 9 -> ln 8 = -0.118)."""
    cfg = _cfg(tmp_path, "p", "train.steps=40", "train.lr=0.003",
               "train.batch_size=16", "train.eval_every=1000")
    train(cfg, progress=False)
    rows = [json.loads(l) for l in open(tmp_path / "p" / "metrics.jsonl") if '"loss_dec"' in l]
    assert rows[-1]["loss_dec"] < rows[0]["loss_dec"] - 0.05


def test_errors_before_any_work(tmp_path):
    with pytest.raises(ValueError, match="dmt.rollout"):
        build(_cfg(tmp_path, "x", "method=dmt", "dmt.rollout=100", f"init_from={tmp_path}"))
    with pytest.raises(ValueError, match="vocab"):
        build(_cfg(tmp_path, "x", "teacher.vocab_size=3", "cell.vocab_size=3"))
    with pytest.raises(ValueError, match="init_from"):
        build(_cfg(tmp_path, "x", "method=dmt"))
    assert not (tmp_path / "x").exists()


def test_time_limit_stops_training(tmp_path):
    summary = train(_cfg(tmp_path, "t", "train.steps=1000000", "train.eval_every=1000000", "train.time_limit=0.3"), progress=False)
    assert 1 <= summary["steps"] < 1000000 and summary["train_seconds"] >= 0.3
    with pytest.raises(ValueError, match="train.time_limit"):
        build(_cfg(tmp_path, "u", "train.time_limit=0"))


def test_progress_bar_counts_the_time_budget(tmp_path, capsys, monkeypatch):
    """Under train.time_limit the bar counts seconds of the budget, not 0/1000000 steps."""
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)  # (captured stderr is no terminal)
    train(_cfg(tmp_path, "p", "train.steps=1000000", "train.eval_every=1000000", "train.time_limit=0.5"), progress=True)
    err = capsys.readouterr().err
    assert "/0.5 s [" in err and "1000000" not in err, err[-300:]
    train(_cfg(tmp_path, "q", "train.steps=3", "train.eval_every=1000"), progress=True)
    assert "3/3" in capsys.readouterr().err, "without a time limit it counts steps"


def test_progress_on_a_log_file_is_a_plain_line_every_few_seconds():
    """Not a terminal: one line per train.progress_every seconds (of the clock), no carriage returns."""
    clock = iter(range(1000))
    stream = io.StringIO()
    tc = preset_config("tiny", ["train.steps=100", "train.progress_every=30"]).train
    bar = Progress(tc, RunState(), True, "smt", stream=stream, clock=lambda: next(clock))
    for step in range(1, 101):  # one clock second per update
        bar.advance(step, step * 0.5, loss="2.000")
    bar.write("memtrain: step 50: handover")
    bar.close()
    lines = stream.getvalue().splitlines()
    assert "\r" not in stream.getvalue() and len(lines) == 4, lines
    assert lines[0] == "memtrain: smt step 30/100, 15.0 s of training loss=2.000"
    assert lines[1:] == ["memtrain: smt step 60/100, 30.0 s of training loss=2.000",
                         "memtrain: smt step 90/100, 45.0 s of training loss=2.000", "memtrain: step 50: handover"]
    quiet = io.StringIO()
    Progress(tc, RunState(), False, "smt", stream=quiet, clock=lambda: 0).advance(1, 1.0)
    assert quiet.getvalue() == "", "disabled: nothing at all"
    timed = io.StringIO()
    tc = preset_config("tiny", ["train.steps=100000000", "train.time_limit=60", "train.progress_every=30"]).train
    bar = Progress(tc, RunState(), True, "bptt", stream=timed, clock=lambda: next(clock))
    for step in range(1, 31):
        bar.advance(step, step * 2.0)
    assert timed.getvalue().splitlines() == ["memtrain: bptt 60.0/60 s of training, update 30"], \
        "under a time limit: the seconds of the budget, never the step bound 100000000"


def test_compile_networks_keeps_values_and_gradients():
    """The compiled cell step and encoder give the eager values and the same gradients into every
    parameter (float64; aot_eager traces the same graphs inductor compiles, without a C compiler)."""
    from memtrain.methods.smt import SMT, SMTConfig
    from memtrain.training.build import compile_networks
    from tests.conftest import tiny_cell, tiny_teacher

    torch.manual_seed(0)
    teacher, cell = tiny_teacher().double(), tiny_cell().double()
    x = torch.randint(0, 7, (3, 10))
    y = torch.randint(0, 7, (3, 10))
    grads = []
    for compiled in (False, True):
        t, c = tiny_teacher().double(), tiny_cell().double()
        t.load_state_dict(teacher.state_dict()), c.load_state_dict(cell.state_dict())
        if compiled:
            compile_networks(c, t, backend="aot_eager")
            assert "update" in vars(c) and "encode" in vars(t)  # the instances' methods are shadowed
        m = SMT(t, c, SMTConfig(future=4, dec_samples=None, coef_last_input=0))  # (no probe: its own random init)
        loss, _ = m.loss(x, y, torch.Generator().manual_seed(0))
        loss.backward()
        grads.append((loss.detach(), [p.grad.clone() for p in m.trainable()]))
        assert set(c.state_dict()) == set(cell.state_dict())  # checkpoints unchanged
    (l0, g0), (l1, g1) = grads
    torch.testing.assert_close(l1, l0, rtol=1e-12, atol=1e-12)
    assert len(g0) == len(g1) and all(a.abs().sum() > 0 for a in g0[:3])
    for a, b in zip(g0, g1):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-12)


def test_train_compile_flag_same_trace(tmp_path, monkeypatch):
    """train.compile=true routes through compile_networks and trains the same (loss trace)."""

    import memtrain.training.trainer as trainer_mod

    calls = []
    real = trainer_mod.compile_networks

    def spy(cell, teacher=None):
        calls.append((cell, teacher))
        real(cell, teacher, backend="aot_eager")

    monkeypatch.setattr(trainer_mod, "compile_networks", spy)
    train(_cfg(tmp_path, "eager", "train.steps=3"), progress=False)
    train(_cfg(tmp_path, "compiled", "train.steps=3", "train.compile=true"), progress=False)
    assert len(calls) == 1 and calls[0][1] is not None
    assert _trace(tmp_path / "compiled") == pytest.approx(_trace(tmp_path / "eager"), rel=1e-5)


@pytest.mark.parametrize("flush", [True, False])
def test_flush_denormal_flag(tmp_path, monkeypatch, flush):
    """train.flush_denormal: while the method's loss runs, a denormal float32 reads as zero (flushed)
    or keeps its value; after the run torch's default (keep) is back."""
    from memtrain.methods.bptt import BPTT

    seen, loss = [], BPTT.loss
    tiny = torch.tensor([1e-40], dtype=torch.float32)  # below float32's smallest normal, 1.2e-38

    def spy(self, x, y, gen=None):
        seen.append(float((tiny * 1.0).item()))
        return loss(self, x, y, gen)

    monkeypatch.setattr(BPTT, "loss", spy)
    train(_cfg(tmp_path, "d", "method=bptt", f"train.flush_denormal={str(flush).lower()}", "train.steps=2"), progress=False)
    assert seen and all((v == 0.0) == flush for v in seen)
    assert float((tiny * 1.0).item()) > 0


def _rows(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_keep_best_keeps_the_evaluation_with_the_lowest_rnn_loss_across_a_resume(tmp_path):
    from memtrain.data.tasks import sample_eval
    from memtrain.methods.evaluate import evaluate
    from memtrain.runs import load_run

    out = tmp_path / "b"
    settings = ["train.keep_best=true", "train.eval_every=2", "train.lr=3e-2", "train.warmup=0"]
    train(_cfg(tmp_path, "b", *settings, "train.steps=6"), progress=False)
    summary = train(_cfg(tmp_path, "b", *settings, "train.steps=12"), progress=False)  # resumed to 12
    evals = [r for r in _rows(out) if "rnn_acc" in r]
    assert [r["step"] for r in evals] == [2, 4, 6, 8, 10, 12]
    best = min(evals, key=lambda r: r["rnn_ce"])
    meta = json.loads((out / "best" / "run.json").read_text())
    assert meta["step"] == best["step"] == summary["best"]["step"] and summary["best"]["rnn_ce"] == best["rnn_ce"]
    cfg, task, teacher, cell = load_run(str(out / "best"))  # the saved model gives that loss again
    x, y = sample_eval(task, cfg.train.eval_batch, torch.Generator().manual_seed(cfg.train.seed + 10_000))
    assert evaluate(cell, teacher, x, y)["rnn_ce"] == pytest.approx(best["rnn_ce"], rel=1e-5)
    assert len({round(r["rnn_ce"], 6) for r in evals}) > 1, "the runs' losses differ, so the choice is a real one"


def test_eval_seconds_are_counted_apart_from_the_training_time(tmp_path):
    summary = train(_cfg(tmp_path, "e", "train.steps=6", "train.eval_every=1"), progress=False)
    rows = _rows(tmp_path / "e")
    assert summary["eval_seconds"] > 0 and summary["train_seconds"] > 0
    assert all("time" in r for r in rows if "loss" in r), "training rows carry their training seconds"
    state = json.loads(next((tmp_path / "e" / "checkpoints").glob("step-*/run.json")).read_text())["train"]
    assert state["eval_seconds"] == pytest.approx(summary["eval_seconds"], abs=2e-3)


def test_eval_rows_all_evaluates_every_held_out_row_once(tmp_path):
    text = tmp_path / "corpus.txt"
    text.write_bytes(bytes(range(32, 127)) * 9)  # 855 bytes, the last 10% (86) held out
    base = ["task=tokens", f'task_args={{"path": "{text}", "length": 12}}', "train.steps=2", "train.eval_every=2",
            "train.eval_batch=3"]
    summary = train(_cfg(tmp_path, "all", *base, "train.eval_rows=all"), progress=False)
    assert summary["rows"] == (86 - 1) // 12 == 7, "every window of the held-out split, 3 at a time"
    assert train(_cfg(tmp_path, "batch", *base), progress=False)["rows"] == 3
    with pytest.raises(ValueError, match="train.eval_rows=all"):
        train(_cfg(tmp_path, "synthetic", "train.eval_rows=all"), progress=False)
    assert not (tmp_path / "synthetic").exists(), "refused before anything is written"
    with pytest.raises(ValueError, match="train.eval_rows must be one of"):
        build(_cfg(tmp_path, "x", "train.eval_rows=some"))


def test_tensorboard_mirrors_the_metrics(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    train(_cfg(tmp_path, "tb", "train.steps=6", "train.eval_every=2", "train.log_every=1", "train.tensorboard=true"),
          progress=False)
    acc = EventAccumulator(str(tmp_path / "tb" / "tensorboard"))
    acc.Reload()
    rows = _rows(tmp_path / "tb")
    evals = [(r["step"], r["rnn_acc"]) for r in rows if "rnn_acc" in r]
    logged = [(e.step, e.value) for e in acc.Scalars("eval/rnn_acc")]
    assert [s for s, _ in logged] == [s for s, _ in evals] and [v for _, v in logged] == pytest.approx([v for _, v in evals])
    losses = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    assert [(e.step, pytest.approx(e.value, rel=1e-6)) for e in acc.Scalars("train/loss")] == losses


def test_a_decoder_future_shorter_than_the_recall_gap_is_warned_about(tmp_path):
    from memtrain.training.build import SettingWarning, assemble

    with pytest.warns(SettingWarning, match=r"smt.future=8 .* recall gap .* 10 steps .* smt.future >= 11"):
        assemble(preset_config("tiny", ["smt.future=8"]))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", SettingWarning)
        assemble(preset_config("tiny", ["smt.future=11"]))
        assemble(preset_config("tiny"))  # the smoke-test preset itself raises no warning
        assemble(preset_config("tiny", ["method=bptt"]))  # BPTT has no decoder


def test_rollout_solver_auto_trains_like_stepping_and_says_what_it_chose(tmp_path):
    common = ["method=bptt", "cell.kind=para-gru", "train.steps=12", "train.eval_every=6"]
    train(_cfg(tmp_path, "stepped", *common), progress=False)
    s = train(_cfg(tmp_path, "auto", *common, "rollout.solver=auto", "rollout.atol=1e-7"), progress=False)
    assert _trace(tmp_path / "auto") == pytest.approx(_trace(tmp_path / "stepped"), rel=1e-4, abs=1e-5)
    training = [c for c in s["rollout_auto"] if c["grad"]]  # the training updates' kind of call (and the evaluations')
    assert len(training) == 1 and training[0]["chosen"] in ("sequential", "jacobi", "quasi", "block")
    assert set(training[0]["seconds"]) | set(training[0]["failed"]) == {"sequential", "jacobi", "quasi", "block"}
    assert json.loads((tmp_path / "auto" / "run.json").read_text())["summary"]["rollout_auto"] == s["rollout_auto"]


@pytest.mark.parametrize("method, kind, solver", [("bptt", "mlp", "quasi"), ("dmt", "mlp", "quasi"),
                                                  ("bptt", "para-lstm", "block"), ("bptt", "para-gru", "newton")])
def test_a_run_with_a_parallel_solver_trains_like_the_stepped_one(smt_runs, tmp_path, method, kind, solver, monkeypatch):
    """rollout.solver reaches every rollout of the run (training and evaluation) and changes nothing
    but rounding: the same loss trace and accuracy as stepping, and run.json keeps the setting."""
    import memtrain.methods.rollout as r
    solves = []
    for name in ("solve_rollout", "parallel_rollout"):
        monkeypatch.setattr(r, name, lambda *a, _f=getattr(r, name), **k: solves.append(k["solver"]) or _f(*a, **k))
    init = [f"init_from={smt_runs['mlp'][1]}"] if method == "dmt" else []
    common = [f"method={method}", f"cell.kind={kind}", "train.steps=6", "train.eval_every=3", *init]
    train(_cfg(tmp_path, "stepped", *common), progress=False)
    assert solves == []
    solved = train(_cfg(tmp_path, "solved", *common, f"rollout.solver={solver}", "rollout.atol=1e-7", "rollout.on_fail=raise"),
                   progress=False)
    assert len(solves) >= 6 + 2 and set(solves) == {solver}  # every update and both evaluations
    assert _trace(tmp_path / "solved") == pytest.approx(_trace(tmp_path / "stepped"), rel=1e-4, abs=1e-5)
    stepped = json.loads((tmp_path / "stepped" / "metrics.jsonl").read_text().splitlines()[-1])
    assert solved["rnn_acc"] == stepped["rnn_acc"]
    assert json.loads((tmp_path / "solved" / "run.json").read_text())["config"]["rollout"]["solver"] == solver
    # a loaded run rolls out with its saved rollout settings: `memtrain eval` and `memtrain sample`
    from memtrain.runs import evaluate_run
    from memtrain.sample import sample_run

    solves.clear()
    evaluate_run(str(tmp_path / "solved"), lengths=[12], batch_size=4)
    assert solves and set(solves) == {solver}
    solves.clear()
    sample_run(str(tmp_path / "solved"), n_tokens=2, prompt="1 2 3")
    assert solves and set(solves) == {solver}


def _counting(monkeypatch, target, name, counts):
    """Wrap `target.name` so that its calls are counted in counts["<target's last name>.name"]."""
    real, key = getattr(target, name), f"{target.__name__.rpartition('.')[2]}.{name}"

    def counted(*a, **k):
        counts[key] = counts.get(key, 0) + 1
        return real(*a, **k)

    monkeypatch.setattr(target, name, counted)


@pytest.mark.parametrize("method", ["smt-dmt", "dmt", "bptt"])
def test_settings_are_derived_and_checked_once_per_run(smt_runs, tmp_path, monkeypatch, method):
    """One run resolves and validates its settings once, picks its device once and checks that cell and
    teacher fit once, however many evaluations it makes; the networks' own checks run once, when built."""
    import memtrain.methods.dmt as dmt
    import memtrain.methods.smt as smt
    import memtrain.training.trainer as trainer
    from memtrain.models.cells import CellConfig
    from memtrain.models.teacher import TeacherConfig
    from memtrain.training.config import RunConfig

    counts = {}
    for target, name in ((trainer, "resolve"), (trainer, "pick_device"), (RunConfig, "validate"), (smt, "check_compatible"),
                         (dmt, "check_compatible"), (CellConfig, "validate"), (CellConfig, "filled"), (TeacherConfig, "validate")):
        _counting(monkeypatch, target, name, counts)
    init = [f"init_from={smt_runs['mlp'][1]}"] if method == "dmt" else []
    settings = [f"method={method}", "train.steps=8", "handover.teacher_acc=0.01", "handover.teacher_min_gain=null",
                "handover.followable=100", "handover.smt_patience=1", "handover.dmt_patience=null", *init]
    seen = {}
    for every in (8, 1):  # one evaluation (the final one), then nine
        counts.clear()
        train(_cfg(tmp_path, f"every{every}", *settings, f"train.eval_every={every}"), progress=False)
        seen[every] = dict(counts)
    rows = [json.loads(l) for l in open(tmp_path / "every1" / "metrics.jsonl")]
    assert sum("rows" in r for r in rows) == 8 and (method != "smt-dmt" or any(r.get("event") == "handover" for r in rows))
    assert seen[1] == seen[8], "nothing is derived or checked again per evaluation"
    assert (seen[1]["trainer.resolve"], seen[1]["trainer.pick_device"], seen[1]["RunConfig.validate"]) == (1, 1, 1)
    assert seen[1].get("smt.check_compatible", 0) + seen[1].get("dmt.check_compatible", 0) == (0 if method == "bptt" else 1)
    assert seen[1]["CellConfig.validate"] == 2 and seen[1].get("TeacherConfig.validate", 0) == (1 if method == "bptt" else 2), \
        "in `resolve`, and by the network when it is built"


def test_the_cell_is_a_pure_network_and_the_method_owns_the_rollout():
    """build stamps nothing on the cell: the run's rollout settings and the auto solver's
    measurements live in the method's Rollout, which training and evaluation share."""
    from memtrain.methods.evaluate import evaluate
    from memtrain.methods.rollout import AutoSolver, Rollout, RolloutConfig
    from memtrain.training.build import assemble

    parts = assemble(preset_config("tiny", ["method=bptt", "cell.kind=para-gru", "rollout.solver=auto"]))
    run_state = (Rollout, RolloutConfig, AutoSolver)
    assert not hasattr(parts.cell, "solver") and not hasattr(parts.cell, "_auto_solver")
    assert isinstance(parts.method.rollout, Rollout) and parts.method.rollout.cfg == parts.cfg.rollout
    x, y = parts.task.sample(4, torch.Generator().manual_seed(0))
    parts.method.loss(x, y)[0].backward()
    evaluate(parts.cell, None, x, y, how=parts.method.rollout)
    assert {c["grad"] for c in parts.method.rollout.choices()} == {True, False}, "one Rollout measured both"
    assert not any(isinstance(v, run_state) for v in vars(parts.cell).values())
    assert not any(isinstance(v, run_state) for m in parts.cell.modules() for v in vars(m).values())


def test_the_cosine_schedule_ends_at_schedule_steps_and_stays_at_zero():
    """Written out: lr (1 + cos(pi (s - warmup) / (S - warmup))) / 2 after the warmup, S = schedule_steps
    (unset: train.steps), and 0 past S."""
    import math
    from memtrain.training.config import TrainConfig
    from memtrain.training.trainer import lr_at
    tc = TrainConfig(lr=2e-3, warmup=4, steps=1000, schedule="cosine", schedule_steps=20)
    want = [2e-3 * (s + 1) / 4 for s in range(4)] + [1e-3 * (1 + math.cos(math.pi * (s - 4) / 16)) for s in range(4, 21)]
    assert [lr_at(s, tc) for s in range(21)] == pytest.approx(want, abs=1e-15)
    assert lr_at(20, tc) == pytest.approx(0.0, abs=1e-15) and all(lr_at(s, tc) == pytest.approx(0.0, abs=1e-15) for s in (21, 500, 999))
    spanning = TrainConfig(lr=2e-3, warmup=4, steps=20, schedule="cosine")
    assert [lr_at(s, spanning) for s in range(21)] == [lr_at(s, tc) for s in range(21)], "unset: train.steps"
    assert lr_at(500, TrainConfig(lr=2e-3, schedule="constant", schedule_steps=20)) == 2e-3


def _ragged_npz(path, n=40, T=12, seed=0):
    """Retrieval-like rows of lengths 4..T: the first token is to be recalled at the row's last step."""
    import numpy as np
    from memtrain.lengths import pad
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for _ in range(n):
        L = int(rng.integers(4, T + 1))
        x = rng.integers(1, 7, L)
        y = np.full(L, -1)
        y[-1] = x[0]
        xs.append(x)
        ys.append(y)
    x, lengths = pad(xs, pad_value=3)
    y, _ = pad(ys, pad_value=2)
    np.savez(path, x=x, y=y, lengths=lengths)
    return str(path)


@pytest.mark.parametrize("method", ["smt-dmt", "smt", "bptt"])
def test_every_method_trains_on_sequences_of_different_lengths(tmp_path, method):
    data = _ragged_npz(tmp_path / "ragged.npz")
    over = [f"method={method}", "task=npz", f'task_args={{"path": "{data}", "vocab": 7}}', "train.steps=6", "train.eval_every=3", "train.log_every=1",
            f"out_dir={tmp_path / 'run'}"]
    if method == "smt-dmt":  # hand over at the first evaluation, so both phases train on the ragged rows
        over += ["handover.teacher_acc=0.01", "handover.teacher_min_gain=null", "handover.smt_steps=1",
                 "handover.dmt_patience=null"]
    summary = train(preset_config("tiny", over), progress=False)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert len(losses) == 6 and all(np.isfinite(losses)), "every update of the ragged batches is finite"
    assert 0 <= summary["rnn_acc"] <= 1 and summary["steps"] == 6
    if method == "smt-dmt":
        assert summary["handover_step"] == 3 and any("loss_readout" in r for r in rows if r.get("step", 0) >= 3)
    if method != "bptt":
        ev = [r for r in rows if "rows" in r]  # the evaluation rows
        assert all(r["kstep@1"] is not None and r["kstep@8"] is not None for r in ev) and "kstep@16" not in ev[-1]
    from memtrain.runs import evaluate_run
    every = evaluate_run(str(tmp_path / "run"), data=data)  # `memtrain eval --data` on the ragged file
    assert every[0]["length"] == 12 and every[0]["rows"] == 40 and 0 <= every[0]["rnn_acc"] <= 1


def test_a_method_that_takes_no_lengths_is_refused_on_rows_of_different_lengths(tmp_path, monkeypatch):
    from memtrain.methods.bptt import BPTT
    data = _ragged_npz(tmp_path / "ragged.npz")

    def loss(self, x, y, gen=None):  # a method written before rows had lengths
        raise AssertionError("never called")
    monkeypatch.setattr(BPTT, "loss", loss)
    cfg = preset_config("tiny", ["method=bptt", "task=npz", f'task_args={{"path": "{data}", "vocab": 7}}', f"out_dir={tmp_path / 'run'}"])
    with pytest.raises(ValueError, match="different lengths, and method 'bptt' takes none"):
        train(cfg, progress=False)
    assert not (tmp_path / "run").exists(), "nothing written"
