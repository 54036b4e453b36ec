"""`memtrain plot`: the curves drawn are exactly the runs' metrics; bad input writes nothing."""
from __future__ import annotations

import json

import pytest

from memtrain.cli import main
from memtrain.plot import curves, figure, plot_runs
from tests.helpers import assert_readable, train_here


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("plot")
    for name, method in (("smt", "smt"), ("bptt", "bptt")):
        train_here([f"method={method}", "train.steps=8", "train.eval_every=2", "train.log_every=1"], root / name)
    return root


def _rows(d):
    return [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()]


def test_the_curves_are_the_metrics(two_runs, tmp_path):
    png, data = plot_runs([str(two_runs / "smt"), str(two_runs / "bptt")], str(tmp_path / "c.png"))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    rows = _rows(two_runs / "smt")
    smt = data[str(two_runs / "smt")]
    evals = [r for r in rows if "rnn_acc" in r]
    assert smt["rnn_acc"][0] == [r["step"] for r in evals] and smt["rnn_acc"][2] == [r["rnn_acc"] for r in evals]
    assert smt["teacher_acc"][1] == [r["time"] for r in evals] and smt["drift_end"][2] == [r["drift"][-1] for r in evals]
    assert smt["loss"][2] == [r["loss"] for r in rows if "loss" in r]
    bptt = data[str(two_runs / "bptt")]
    assert "teacher_acc" not in bptt and "dyn_rel" not in bptt and len(bptt["rnn_acc"][0]) == 4


def test_the_figure_is_two_columns_with_legends_off_the_curves(two_runs):
    import matplotlib.pyplot as plt

    fig = figure({str(two_runs / name): curves(_rows(two_runs / name)) for name in ("smt", "bptt")})
    assert {ax.get_subplotspec().get_geometry()[:2] for ax in fig.axes} == {(4, 2)}
    assert_readable(fig)
    plt.close(fig)


def test_seconds_of_old_rows_are_interpolated_and_events_kept():
    rows = [{"step": 0, "loss": 3.0}, {"step": 10, "time": 5.0, "rnn_acc": 0.1}, {"step": 15, "loss": 2.0},
            {"step": 20, "time": 15.0, "rnn_acc": 0.2}, {"step": 20, "event": "handover", "why": "x"},
            {"step": 21, "loss": None}]
    c = curves(rows)
    assert c["loss"] == ([0, 15], [0.0, 10.0], [3.0, 2.0]), "no time: linear between evaluations; null dropped"
    assert c["events"] == [(20, 15.0, "handover")]


def test_plot_cli_and_errors(two_runs, tmp_path, capsys):
    assert main(["plot", str(two_runs / "smt"), "--out", str(tmp_path / "one.png")]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "one.png") and (tmp_path / "one.png").is_file()
    rc = main(["plot", str(two_runs / "smt"), str(tmp_path / "nothing"), "--out", str(tmp_path / "two.png")])
    err = capsys.readouterr().err
    assert rc == 2 and "has no metrics.jsonl" in err and "nothing" in err and not (tmp_path / "two.png").exists()
    assert main(["plot", str(two_runs / "smt"), "--out", str(tmp_path / "c.jpg")]) == 2
    assert "must be a .png" in capsys.readouterr().err


def test_null_measurements_are_left_out_of_the_curves():
    """Issue 25: a diverged evaluation is logged with nulls (training/trainer.py); no point is drawn for them."""
    rows = [{"step": 5, "time": 1.0, "rnn_acc": 0.2, "teacher_acc": 0.5, "dyn_rel": None, "drift": [None, None]},
            {"step": 10, "time": 2.0, "rnn_acc": 0.3, "teacher_acc": 0.6, "dyn_rel": 0.5, "drift": [0.0, 0.25]},
            {"step": 10, "time": None, "loss": None, "grad_norm": None, "skipped": "non-finite loss"}]
    c = curves(rows)
    assert c["rnn_acc"] == ([5, 10], [1.0, 2.0], [0.2, 0.3])
    assert c["dyn_rel"] == ([10], [2.0], [0.5]) and c["drift_end"] == ([10], [2.0], [0.25]) and "loss" not in c


def test_a_return_panel_is_drawn_only_for_runs_that_log_a_return(two_runs):
    import matplotlib.pyplot as plt

    rows = _rows(two_runs / "bptt")
    with_return = [{**r, "rnn_return": 0.25 * i} if "rnn_acc" in r else r for i, r in enumerate(rows)]
    c = curves(with_return)
    evals = [r for r in with_return if "rnn_acc" in r]
    assert c["rnn_return"][2] == [r["rnn_return"] for r in evals] and c["rnn_return"][0] == [r["step"] for r in evals]
    fig = figure({"bc": c, "other": curves(rows)})
    assert {ax.get_subplotspec().get_geometry()[:2] for ax in fig.axes} == {(5, 2)}
    assert fig.axes[-1].get_title() == "mean return in the environment" and len(fig.axes[-1].lines) == 1
    plt.close(fig)
