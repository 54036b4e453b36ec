"""Degenerate data and diverged evaluations (issue 25): data that cannot train is refused before
anything is written, data too small for a batch is warned about, and an evaluation of a diverged
RNN is a measurement (null in metrics.jsonl, run.json and the summary) after which training goes on."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from memtrain.training import trainer
from memtrain.training.build import SettingWarning
from tests.helpers import train_here

INF, NAN = float("inf"), float("nan")


def _strict(text: str):
    """JSON as the standard has it: NaN or Infinity is an error."""
    def refuse(name):
        raise AssertionError(f"{name} in JSON")
    return json.loads(text, parse_constant=refuse)


def _evals(out):
    return [_strict(line) for line in (out / "metrics.jsonl").read_text().splitlines() if '"rnn_acc"' in line]


def _diverging(monkeypatch, bad_calls, **values):
    """trainer.evaluate, but the evaluations numbered in `bad_calls` (from 0) have every drift inf and
    `values` set: an RNN that diverged there."""
    real, calls = trainer.evaluate, []

    def evaluate(*args, **kwargs):
        ev = real(*args, **kwargs)
        if len(calls) in bad_calls:
            ev = {**ev, **values, "drift": [INF] * len(ev["drift"])}
        calls.append(ev)
        return ev

    monkeypatch.setattr(trainer, "evaluate", evaluate)
    return calls


SMT = ["method=smt", "train.steps=15", "train.eval_every=5"]


def test_a_diverged_evaluation_is_logged_as_null_said_once_and_training_goes_on(tmp_path, monkeypatch, capsys):
    calls = _diverging(monkeypatch, {0, 1}, rnn_ce=NAN, rel_drift=INF)
    summary = train_here(SMT, tmp_path / "r")
    assert len(calls) == 3, "evaluations at updates 5, 10 and the final one at 15: the run went on"
    first, second, last = _evals(tmp_path / "r")
    assert [first["step"], second["step"], last["step"]] == [5, 10, 15]
    for row in (first, second):
        assert row["rnn_ce"] is None and row["drift@12"] is None and row["rel_drift"] is None
        assert row["drift"] == [None] * 13
        assert 0 <= row["rnn_acc"] <= 1, "the finite measurements are kept"
    assert all(isinstance(v, float) for v in (last["rnn_ce"], last["drift@12"], last["rel_drift"]))
    err = capsys.readouterr().err
    assert err.count("not finite") == 1, "said once"
    line = next(line for line in err.splitlines() if "not finite" in line)
    assert line == ("memtrain: evaluation at update 5: rnn_ce, rel_drift, drift@3, drift@6, drift@12, drift are not finite "
                    "(inf/nan); logged as null in metrics.jsonl (so is any later one), training goes on")
    assert summary["steps"] == 15 and summary["rnn_ce"] == last["rnn_ce"]


def test_a_diverged_final_evaluation_still_writes_run_json_and_the_summary(tmp_path, monkeypatch):
    _diverging(monkeypatch, {0, 1, 2}, dyn_rel=INF, rel_drift=NAN)
    summary = train_here(SMT, tmp_path / "r")
    meta = _strict((tmp_path / "r" / "run.json").read_text())
    assert meta["summary"]["drift@12"] is None and meta["summary"]["dyn_rel"] is None and meta["step"] == 15
    assert summary["drift"] == [None] * 13 and summary["rel_drift"] is None
    _strict(json.dumps(summary, allow_nan=False))
    checkpoint = sorted((tmp_path / "r" / "checkpoints").iterdir())[-1]
    assert _strict((checkpoint / "run.json").read_text())["train"]["summary"]["drift@12"] is None


def test_a_cell_that_really_diverges_is_measured_and_trained_on(tmp_path, monkeypatch):
    """No faked evaluation: a residual MLP cell without memory normalisation, its weights x30, blows up
    within 64 steps; the run goes on to its end and writes its model."""
    real = trainer.build_parts

    def huge_init(cfg, task):
        parts = real(cfg, task)
        with torch.no_grad():
            for p in parts.cell.parameters():
                p.mul_(30.0)
        return parts

    monkeypatch.setattr(trainer, "build_parts", huge_init)
    summary = train_here(["method=smt", "cell.kind=mlp", "cell.norm_memory=false", 'task_args={"length": 64}',
                          "train.steps=4", "train.eval_every=2", "train.max_bad_steps=100"], tmp_path / "r")
    rows = _evals(tmp_path / "r")
    assert [r["step"] for r in rows] == [2, 4]
    assert all(r["drift@64"] is None and r["drift"][-1] is None and r["rnn_ce"] is None for r in rows)
    assert summary["steps"] == 4 and (tmp_path / "r" / "model.safetensors").is_file()


def test_keep_best_never_takes_a_loss_that_is_not_finite(tmp_path, monkeypatch):
    """-inf is below every loss and nan compares false: neither may become the best model."""
    real, calls = trainer.evaluate, []

    def evaluate(*args, **kwargs):
        ev = real(*args, **kwargs)
        ev = {**ev, "rnn_ce": [ev["rnn_ce"], -INF, NAN][len(calls)]}
        calls.append(ev)
        return ev

    monkeypatch.setattr(trainer, "evaluate", evaluate)
    summary = train_here([*SMT, "train.keep_best=true"], tmp_path / "r")
    assert len(calls) == 3
    assert summary["best"]["step"] == 5 and summary["best"]["rnn_ce"] == calls[0]["rnn_ce"]
    assert _strict((tmp_path / "r" / "best" / "run.json").read_text())["step"] == 5


def _npz(path, x, y):
    np.savez(path, x=x, y=y)
    return str(path)


def test_a_held_out_batch_without_a_supervised_position_is_refused_before_anything_is_written(tmp_path):
    x = np.arange(2000 * 12).reshape(2000, 12) % 5
    y = np.full((2000, 12), -1)
    y[0, -1] = 1  # one supervised row in 2,000: the 16 drawn for evaluation miss it
    data = _npz(tmp_path / "d.npz", x, y)
    out = tmp_path / "r"
    with pytest.raises(ValueError, match=r"^train.eval_batch=16: the held-out sequences drawn for evaluation \(task "
                                         r"'npz'\) have no supervised position .*train.eval_rows=all"):
        train_here(["method=smt", "task=npz", f"task_args.path={data}"], out)
    assert not out.exists()


@pytest.mark.parametrize("eval_rows", ["batch", "all"])
def test_data_that_cannot_fill_a_batch_is_warned_about_once_each(tmp_path, eval_rows):
    x = np.array([[1, 2, 3, 0], [2, 3, 1, 0], [3, 1, 2, 0]])
    y = np.full((3, 4), -1)
    y[:, -1] = x[:, 0]
    data = _npz(tmp_path / "three.npz", x, y)
    with pytest.warns(SettingWarning) as seen:
        train_here(["method=smt", "task=npz", f'task_args={{"path": "{data}"}}', "train.steps=2", "train.eval_every=2",
                    f"train.eval_rows={eval_rows}"], tmp_path / "r")
    small = [str(w.message) for w in seen if "distinct sequences" in str(w.message)]
    assert small[0] == ("task 'npz': the training data holds 3 distinct sequences of length 4, fewer than "
                        "train.batch_size=4: every batch repeats sequences (drawn with replacement)")
    if eval_rows == "batch":
        assert len(small) == 2 and small[1].startswith("task 'npz': the held-out data holds 3 distinct sequences of "
                                                       "length 4, fewer than train.eval_batch=16: each evaluation draws 16")
    else:
        assert len(small) == 1, "every held-out row once: nothing repeats"


def test_synthetic_tasks_never_warn_about_their_size(tmp_path, recwarn):
    train_here(["method=smt", "train.steps=1", "train.eval_every=1"], tmp_path / "r")
    assert not [w for w in recwarn if "distinct sequences" in str(w.message)]
