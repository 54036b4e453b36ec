"""The main job (`memtrain demo`) end to end on tiny sizes: three stages, one table, same budget."""
import json

import pytest

from memtrain.cli import main
from memtrain.demo import compare, format_table
from memtrain.presets import PRESETS

TINY = [o for o in PRESETS["tiny"][1] if not o.startswith("train.steps")]


pytestmark = pytest.mark.usefixtures("ctrl_c_interrupts")  # tests here send themselves SIGINT


def test_compare_rows_and_budget(tmp_path):
    rows = compare(str(tmp_path), TINY, smt_steps=3, dmt_steps=2, bptt_seconds=0.2, progress=False, log=lambda *_: None)
    assert [r["method"] for r in rows] == ["SMT (RNN after SMT)", "SMT -> DMT", "BPTT"]
    smt, dmt, bptt = rows
    assert (smt["updates"], dmt["updates"]) == (3, 5)
    assert (smt["sequential_steps"], dmt["sequential_steps"], bptt["sequential_steps"]) == (1, 12, 12)
    assert dmt["seconds"] >= smt["seconds"] and bptt["teacher_acc"] is None
    assert dmt["teacher_acc"] == smt["teacher_acc"]  # DMT freezes the teacher
    for sub in ("smt", "dmt", "bptt"):
        assert (tmp_path / sub / "model.safetensors").is_file()
    saved = json.loads((tmp_path / "compare.json").read_text())
    assert saved["rows"] == rows
    table = format_table(rows)
    assert table.count("\n") == 4 and "| SMT -> DMT |" in table


def test_each_stage_says_its_budget(tmp_path):
    said = []
    compare(str(tmp_path), TINY, smt_steps=3, dmt_steps=2, bptt_seconds=0.4, progress=False, log=said.append)
    assert said[0].startswith("[1/3] SMT") and "3 steps" in said[0] and "2 steps" in said[1]
    assert said[2].startswith("[3/3] BPTT") and "0.4 s" in said[2], said[2]


def test_demo_cli(tmp_path, capsys):
    rc = main(["demo", "--quiet", "--length", "12", "--smt-steps", "2", "--dmt-steps", "2", "--out", str(tmp_path), *TINY])
    assert rc == 0
    out = capsys.readouterr().out
    assert "retrieval, T=12" in out and "| BPTT |" in out


def test_compare_time_budgets(tmp_path):
    """smt_seconds / dmt_seconds stop each stage on training time, not on a step count, and BPTT
    gets their sum."""
    rows = compare(str(tmp_path), TINY, smt_seconds=0.3, dmt_seconds=0.2, progress=False, log=lambda *_: None)
    smt, dmt, bptt = rows
    assert 0.3 <= smt["seconds"] < 5 and 1 <= smt["updates"] < 1000
    assert 0.2 <= dmt["seconds"] - smt["seconds"] < 5 and dmt["updates"] > smt["updates"]
    assert bptt["seconds"] >= dmt["seconds"] and bptt["updates"] >= 1
    cfg = json.loads((tmp_path / "compare.json").read_text())["config"]
    assert cfg["train"]["time_limit"] == 0.3


def test_demo_cli_time_budgets(tmp_path, capsys):
    rc = main(["demo", "--quiet", "--length", "12", "--smt-seconds", "0.2", "--dmt-seconds", "0.2", "--out", str(tmp_path), *TINY])
    assert rc == 0
    rows = json.loads((tmp_path / "compare.json").read_text())["rows"]
    assert rows[0]["seconds"] >= 0.2 and rows[1]["seconds"] >= rows[0]["seconds"] + 0.2


def test_a_stopped_demo_resumes_where_it_stopped(tmp_path, capsys, monkeypatch):
    """SIGINT during the DMT stage: the demo saves and exits 0 without a table; the same command again
    skips the finished SMT stage, resumes DMT, then runs BPTT."""
    import hashlib
    import os
    import signal

    import memtrain.training.trainer as trainer_mod

    argv = ["demo", "--quiet", "--length", "12", "--smt-steps", "3", "--dmt-steps", "4", "--out", str(tmp_path), *TINY]
    real = trainer_mod.lr_at

    def lr_at(step, cfg):
        if cfg.lr == 1e-4 and step == 1:  # the DMT stage (its lr is the demo's --dmt-lr)
            os.kill(os.getpid(), signal.SIGINT)
        return real(step, cfg)

    with monkeypatch.context() as m:
        m.setattr(trainer_mod, "lr_at", lr_at)
        assert main(argv) == 0
    cap = capsys.readouterr()
    assert "| BPTT |" not in cap.out and "run the same command again" in cap.err
    assert "stopped by SIGINT after step 2" in cap.err
    assert not (tmp_path / "compare.json").exists() and not (tmp_path / "bptt").exists()
    smt_files = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in (tmp_path / "smt").rglob("*") if p.is_file()}
    assert main(argv) == 0
    cap = capsys.readouterr()
    assert "already finished at step 3" in cap.err and "resuming" in cap.err and "| BPTT |" in cap.out
    assert {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in (tmp_path / "smt").rglob("*") if p.is_file()} == smt_files
    rows = json.loads((tmp_path / "compare.json").read_text())["rows"]
    assert [r["updates"] for r in rows[:2]] == [3, 7]
