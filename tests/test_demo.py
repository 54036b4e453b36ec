"""The main job (`memtrain demo`) end to end on tiny sizes: SMT -> DMT as one run, BPTT on the same
cell and on torch's LSTM for the same wall-clock, one table."""
import json

import pytest

from memtrain.cli import main
from memtrain.demo import compare, format_table
from memtrain.presets import PRESETS

TINY = [o for o in PRESETS["tiny"][1] if not o.startswith("train.steps")]
# hand over at the first evaluation (step 2), end DMT after two evaluations without improvement
EASY = [*TINY, "train.eval_every=2", "handover.teacher_acc=0.01", "handover.followable=100", "handover.smt_patience=1",
        "handover.dmt_patience=2", "handover.teacher_min_gain=null"]

pytestmark = pytest.mark.usefixtures("ctrl_c_interrupts")  # tests here send themselves SIGINT


def test_compare_rows_and_budget(tmp_path):
    rows = compare(str(tmp_path), EASY, steps=40, bptt_seconds=0.2, progress=False, log=lambda *_: None)
    assert [r["method"] for r in rows] == ["SMT (RNN at the handover)", "SMT -> DMT", "BPTT, same cell", "BPTT, torch LSTM"]
    smt, dmt, bptt, lstm = rows
    assert smt["handover"] and 4 <= smt["updates"] < dmt["updates"] < 40, "DMT ended the run on its plateau"
    assert (smt["sequential_steps"], dmt["sequential_steps"], bptt["sequential_steps"], lstm["sequential_steps"]) == (1, 12, 12, 12)
    assert dmt["seconds"] >= smt["seconds"] and bptt["teacher_acc"] is None and lstm["teacher_acc"] is None
    assert dmt["teacher_acc"] == smt["teacher_acc"]  # DMT freezes the teacher
    assert bptt["seconds"] >= 0.2 and lstm["seconds"] >= 0.2
    for sub in ("smt-dmt", "bptt", "bptt-lstm"):
        assert (tmp_path / sub / "model.safetensors").is_file()
    lstm_cfg = json.loads((tmp_path / "bptt-lstm" / "run.json").read_text())["config"]
    assert lstm_cfg["cell"]["kind"] == "torch-lstm" and lstm_cfg["method"] == "bptt"
    saved = json.loads((tmp_path / "compare.json").read_text())
    assert saved["rows"] == rows
    table = format_table(rows)
    assert table.count("\n") == 5 and "| SMT -> DMT |" in table and "| BPTT, torch LSTM |" in table
    assert all("to_095" in r for r in rows) and "first at 0.95" in table
    # each trained RNN is also run alone at 8T = 96, its figure that of `memtrain eval --rnn-only`
    from memtrain.runs import evaluate_run
    assert smt["longer"] is None and "RNN alone at T=96 (never trained there)" in table
    for r, sub in zip(rows[1:], ("smt-dmt", "bptt", "bptt-lstm")):
        (want,) = evaluate_run(str(tmp_path / sub), lengths=[96], batch_size=256, rnn_only=True)
        assert r["longer"] == {"length": 96, "rnn_acc": want["rnn_acc"]}
        assert f"| {r['sequential_steps']} | {want['rnn_acc']:.3f} |" in table.splitlines()[rows.index(r) + 2]


def test_baselines_get_the_main_runs_wall_clock(tmp_path):
    said = []
    rows = compare(str(tmp_path), EASY, steps=6, progress=False, log=said.append)
    assert said[0].startswith("[1/3] SMT -> DMT") and "6 updates" in said[0]
    assert said[1].startswith("[2/3] BPTT on the same cell") and said[2].startswith("[3/3] BPTT on torch's fused LSTM")
    clock = rows[1]["seconds"]
    assert f"{clock:.1f} s" in said[1] or abs(float(said[1].split(": ")[-1].split(" s")[0]) - clock) < 0.1
    assert all(r["seconds"] >= clock - 0.05 for r in rows[2:])


def test_without_a_handover_the_first_row_says_so(tmp_path):
    rows = compare(str(tmp_path), [*TINY, "train.eval_every=2", "handover.teacher_acc=1.0", "handover.followable=1e-9"],
                   steps=4, bptt_seconds=0.1, progress=False, log=lambda *_: None)
    assert rows[0]["handover"] is False and rows[0]["updates"] == rows[1]["updates"] == 4
    assert rows[1]["sequential_steps"] == 1  # still in SMT


def test_demo_cli(tmp_path, capsys):
    rc = main(["demo", "--quiet", "--length", "12", "--steps", "4", "--out", str(tmp_path), *EASY])
    assert rc == 0
    cap = capsys.readouterr()
    assert "retrieval, T=12" in cap.out and "| BPTT, same cell |" in cap.out and "| BPTT, torch LSTM |" in cap.out
    assert cap.out.splitlines()[-4].startswith("At T=12 "), "the table is read in one sentence"
    assert cap.out.splitlines()[-3].startswith("Run alone at T=96, a length none of them was trained at: ")
    assert cap.out.splitlines()[-2].startswith("Why T=32") and "RESULTS.md" in cap.out.splitlines()[-2], \
        "and the choice of the demo's length is explained, with where it was measured"
    assert "warning" not in cap.err.lower(), cap.err


def test_the_demos_own_settings_raise_no_warning(tmp_path):
    """`memtrain demo` as shipped (T=32, its overrides from the CLI): every stage's settings assemble
    without a SettingWarning (the tiny preset and smt.future once warned on every use)."""
    import warnings

    from memtrain.demo import _baselines, demo_config
    from memtrain.training.build import SettingWarning, assemble

    cfg = demo_config(tmp_path, ['task_args={"length": 32}', "smt.future=32", "cell.kind=mlp", "train.seed=0"])
    assert (cfg.method, cfg.teacher.token_shift, cfg.smt.coef_last_input, cfg.task_args["length"]) == ("smt-dmt", True, 0.1, 32)
    with warnings.catch_warnings():
        warnings.simplefilter("error", SettingWarning)
        for c in (cfg, *_baselines(cfg, tmp_path, 1.0)):
            assemble(c)


def _row(method, acc, to=None):
    return {"method": method, "rnn_acc": acc, "to_095": to}


def test_the_verdict_reads_the_table():
    from memtrain.demo import verdict

    rows = [_row("SMT (RNN at the handover)", 0.73), _row("SMT -> DMT", 1.0, [107.0, 900]),
            _row("BPTT, same cell", 0.102), _row("BPTT, torch LSTM", 1.0, [80.0, 6900])]
    assert verdict(rows, 32) == ("At T=32 BPTT, torch LSTM reaches 0.95 first in wall-clock (80 s, SMT -> DMT 107 s); "
                                 "SMT -> DMT needs 7.7x fewer updates (900 against 6,900); "
                                 "BPTT, same cell does not reach it (0.102).")
    rows[3] = _row("BPTT, torch LSTM", 1.0, [200.0, 450])
    assert verdict(rows, 32).startswith("At T=32 SMT -> DMT reaches 0.95 first in wall-clock (107 s, BPTT, torch LSTM 200 s)")
    assert "SMT -> DMT needs 2.0x more updates (900 against 450)" in verdict(rows, 32)
    blank = [_row("SMT (RNN at the handover)", 0.9), _row("SMT -> DMT", 0.4), _row("BPTT, same cell", 0.1),
             _row("BPTT, torch LSTM", 0.2)]
    assert verdict(blank, 256) == "At T=256 no RNN running alone reaches 0.95 within this budget; the best is SMT -> DMT at 0.400."


def test_beyond_reads_the_longer_length_best_first():
    from memtrain.demo import beyond

    rows = [{**_row("SMT (RNN at the handover)", 0.7), "longer": None},
            {**_row("SMT -> DMT", 1.0), "longer": {"length": 256, "rnn_acc": 0.75}},
            {**_row("BPTT, same cell", 0.1), "longer": {"length": 256, "rnn_acc": 0.125}},
            {**_row("BPTT, torch LSTM", 1.0), "longer": {"length": 256, "rnn_acc": 0.875}}]
    assert beyond(rows) == ("Run alone at T=256, a length none of them was trained at: BPTT, torch LSTM 0.875, "
                            "SMT -> DMT 0.750, BPTT, same cell 0.125.")
    assert beyond([_row("SMT -> DMT", 1.0)]) is None


def test_demo_cli_time_budget(tmp_path):
    rc = main(["demo", "--quiet", "--length", "12", "--seconds", "0.3", "--out", str(tmp_path), *TINY])
    assert rc == 0
    rows = json.loads((tmp_path / "compare.json").read_text())["rows"]
    assert rows[1]["seconds"] >= 0.3 and all(r["seconds"] >= 0.3 for r in rows[2:])


def test_a_stopped_demo_resumes_where_it_stopped(tmp_path, capsys, monkeypatch):
    """SIGINT during the BPTT stage: the demo saves and exits 0 without a table; the same command again
    skips the finished SMT -> DMT run, resumes BPTT, then runs the LSTM baseline."""
    import hashlib
    import os
    import signal

    import memtrain.training.trainer as trainer_mod

    argv = ["demo", "--quiet", "--length", "12", "--steps", "4", "--out", str(tmp_path), *EASY]
    real, sent = trainer_mod.lr_at, []

    def lr_at(step, cfg):
        if cfg.time_limit is not None and step == 1 and not sent:  # the first baseline (BPTT, same cell)
            sent.append(1)
            os.kill(os.getpid(), signal.SIGINT)
        return real(step, cfg)

    with monkeypatch.context() as m:
        m.setattr(trainer_mod, "lr_at", lr_at)
        assert main(argv) == 0
    cap = capsys.readouterr()
    assert "| BPTT" not in cap.out and "run the same command again" in cap.err
    assert "stopped by SIGINT after step 2" in cap.err
    assert not (tmp_path / "compare.json").exists() and not (tmp_path / "bptt-lstm").exists()
    def digests():  # the finished run's files (its .lock records who last opened it, and when)
        return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in (tmp_path / "smt-dmt").rglob("*")
                if p.is_file() and p.name != ".lock"}
    files = digests()
    assert main(argv) == 0
    cap = capsys.readouterr()
    assert "already finished at step 4" in cap.err and "resuming" in cap.err and "| BPTT, torch LSTM |" in cap.out
    assert digests() == files
    rows = json.loads((tmp_path / "compare.json").read_text())["rows"]
    assert rows[1]["updates"] == 4 and rows[2]["updates"] > 2


def test_first_reaching_reads_the_first_evaluation_at_the_target():
    from memtrain.demo import first_reaching

    rows = [{"step": 5, "loss": 1.0}, {"step": 10, "time": 2.04, "rnn_acc": 0.5},
            {"step": 20, "event": "handover", "rnn_acc": 0.97}, {"step": 20, "time": 4.0, "rnn_acc": 0.97},
            {"step": 30, "time": 6.0, "rnn_acc": 1.0}]
    assert first_reaching(rows, 0.95) == [4.0, 20] and first_reaching(rows, 0.5) == [2.0, 10]
    assert first_reaching(rows[:2], 0.95) is None
