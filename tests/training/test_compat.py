"""Runs saved by memtrain 0.1 (format version 2, tests/data/format2_runs) still load, evaluate and
resume, with their settings translated to today's names; old setting names on the command line get
one message naming the new one."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from memtrain.cli import main
from memtrain.data.tasks import sample_eval
from memtrain.fields import from_dict, to_dict
from memtrain.methods.evaluate import evaluate
from memtrain.presets import preset_config
from memtrain.runs import evaluate_run, load_run
from memtrain.training.checkpoint import VERSION, read_run
from memtrain.training.config import ADDED_IN_7, ADDED_IN_8, RENAMED, RunConfig, upgrade
from memtrain.training.trainer import train

OLD = Path(__file__).resolve().parents[1] / "data" / "format2_runs"
# what each run was made with (tests/data/format2_runs/README.md), in today's names
# (the defaults and the tiny preset of their time: memtrain 0.5 made the recommended recipe the default)
OLD_TINY = ["method=smt", "teacher.token_shift=false", "smt.coef_last_input=0", "smt.future=8"]
MADE_WITH = {"smt": OLD_TINY + ["train.seed=1", "train.ckpt_every=10", "train.keep_last=1"],
             "bptt": OLD_TINY + ["method=bptt", "bptt.grad_horizon=4", "train.seed=1", "train.ckpt_every=10", "train.keep_last=1"]}


@pytest.mark.parametrize("name", ["smt", "bptt", "dmt"])
def test_an_old_run_loads_and_evaluates_as_when_it_was_saved(name):
    meta, _ = read_run(OLD / name)
    assert meta["version"] == 2, "the fixture is an old run"
    cfg, task, teacher, cell = load_run(str(OLD / name))
    assert (teacher is None) == (name == "bptt")
    assert cfg.train.threads is None and (cfg.init_from is None) == (name != "dmt"), "0 and '' became None"
    if name == "bptt":
        assert cfg.bptt.grad_horizon == 4, "bptt.truncate was translated"
    # the same evaluation the training loop ran at its end gives the same numbers from the loaded weights
    saved = meta["summary"]
    x, y = sample_eval(task, cfg.train.eval_batch, torch.Generator().manual_seed(cfg.train.seed + 10_000))
    ev = evaluate(cell, teacher, x, y)
    assert ev["rnn_ce"] == pytest.approx(saved["rnn_ce"], rel=1e-6, abs=1e-7)
    if teacher is not None:
        assert ev["teacher_ce"] == pytest.approx(saved["teacher_ce"], rel=1e-6, abs=1e-7)
    rows = evaluate_run(str(OLD / name), lengths=[12, 24], batch_size=8)
    assert [r["length"] for r in rows] == [12, 24] and all(0 <= r["rnn_acc"] <= 1 for r in rows)


@pytest.mark.parametrize("name", ["smt", "bptt"])
def test_an_old_run_resumes_exactly(tmp_path, capsys, name):
    """Extended from its step-20 checkpoint to 30 steps, an old run continues as a run of 30 steps
    made today: the same loss rows after step 20 and the same final weights, up to float rounding
    (the old run was made on another CPU, whose kernels round differently in the last bits; a wrong
    restore of the optimizer, the data stream or the schedule moves the losses by far more)."""
    old = tmp_path / "old"
    shutil.copytree(OLD / name, old)
    resumed = train(preset_config("tiny", MADE_WITH[name] + ["train.steps=30", "train.log_every=1", f"out_dir={old}"]),
                    progress=False)
    assert "resuming" in capsys.readouterr().err and resumed["steps"] == 30
    fresh = tmp_path / "fresh"
    train(preset_config("tiny", MADE_WITH[name] + ["train.steps=30", "train.log_every=1", f"out_dir={fresh}"]),
          progress=False)

    def losses(d):
        rows = [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()]
        return [(r["step"], r["loss"]) for r in rows if "loss" in r and r["step"] >= 20]

    (s_old, l_old), (s_new, l_new) = zip(*losses(old)), zip(*losses(fresh))
    assert s_old == s_new and len(s_old) == 10 and l_old == pytest.approx(l_new, rel=1e-5)
    a, b = load_file(str(old / "model.safetensors")), load_file(str(fresh / "model.safetensors"))
    assert sorted(a) == sorted(b)
    # AdamW at lr 1e-3 moves a weight by about 1e-3 per step whatever its gradient's size, so a wrong
    # restore shows up as differences near 1e-3; rounding on another CPU has reached 2e-6 on one weight
    # of 4,096 (likely a gradient near zero, where Adam's normalisation magnifies the last bits)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=2e-5)
    assert read_run(old)[0]["version"] == VERSION, "it is saved in today's format"


def test_upgrade_translates_names_and_unset_values():
    old = json.loads((OLD / "bptt" / "run.json").read_text())["config"]
    assert old["bptt"] == {"truncate": 4} and old["train"]["threads"] == 0 and old["init_from"] == ""
    new = upgrade(old, 2)
    assert new["bptt"] == {"grad_horizon": 4}
    assert new["train"]["threads"] is None and new["init_from"] is None and new["method_args"] == {}
    assert upgrade(old, VERSION) is old, "today's format is read as it is"
    v4 = upgrade({"handover": {"teacher_acc": 0.9}, "smt": {"transitions": 8}}, 4)
    assert v4["handover"]["teacher_acc"] == 0.9 and v4["handover"]["teacher_min_gain"] == 0.05, "format 4 (0.3): 0.4's setting added"
    v5 = upgrade({"handover": {"teacher_acc": 0.9}}, 5)
    assert v5["rollout"]["solver"] == "sequential" and v5["handover"]["teacher_acc"] == 0.9, \
        "format 5 (0.4): stepped rollouts, as those runs had"
    v3 = upgrade({"smt": {"dyn_samples": 8}, "train": {"threads": 0}, "cell": {"norm_memory": True}}, 3)
    later = ADDED_IN_7 + ADDED_IN_8 + ("decoder_reads", "lagged_inputs")
    assert {k: v for k, v in v3["smt"].items() if k not in later} == {"transitions": 8, "dec_samples": 32, "coef_last_input": 0.0} \
        and v3["train"] == {"threads": 0, "schedule_steps": None}, \
        "format 3 (0.2): renames, and the defaults of its time where it has no value"
    assert v3["cell"] == {"norm_memory": True, "features": None, "output": "categorical", "targets": None} \
        and v3["handover"]["teacher_acc"] == 0.95, "and what 0.3 and 0.10 added"
    # 0.5 made the recommended recipe the default: a run saved before, lacking a setting, behaved with
    # the default of its time; what it saved is kept
    assert (v5["method"], v5["teacher"]["token_shift"], v5["smt"]["coef_last_input"], v5["smt"]["dec_samples"]) == \
        ("smt", False, 0.0, 32)
    kept = upgrade({"method": "bptt", "teacher": {"token_shift": True}, "smt": {"coef_last_input": 0.2}}, 5)
    assert (kept["method"], kept["teacher"]["token_shift"], kept["smt"]["coef_last_input"]) == ("bptt", True, 0.2)
    today = RunConfig()
    assert (today.method, today.teacher.token_shift, today.smt.coef_last_input, today.smt.dec_samples) == ("smt-dmt", True, 0.1, 8)
    gru = upgrade({"cell": {"kind": "gru", "residual": True}, "task_args": {"eval_path": "v.txt", "vocab": 0}}, 2)
    assert gru["cell"]["residual"] is None and gru["task_args"] == {"val_path": "v.txt"}
    assert old["bptt"] == {"truncate": 4}, "the saved configuration is not changed"


@pytest.mark.parametrize("old_name", sorted(RENAMED))
def test_an_old_setting_name_names_the_new_one(tmp_path, capsys, old_name):
    rc = main(["train", "--preset", "tiny", "--quiet", f"{old_name}=4", f"out_dir={tmp_path / 'x'}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and RENAMED[old_name] in err[0] and old_name in err[0]
    assert not (tmp_path / "x").exists()


def test_memtrain_eval_reads_an_old_run(capsys):
    assert main(["eval", str(OLD / "smt"), "--batch", "8", "--lengths", "12"]) == 0
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert row["length"] == 12 and "teacher_acc" in row


def test_a_format_6_run_reads_the_error_correcting_settings_as_off():
    """A run saved by 0.5 (format 6) has no smt.own_steps, far_samples, slow_tokens...: it trained without
    them, so they read as off; and a run of today's format is read as it is."""
    from memtrain.training.config import ADDED_IN_7, upgrade
    from memtrain.methods.smt import SMTConfig
    saved = {"smt": {"future": 12}, "rollout": {}}
    got = upgrade(saved, 6)
    assert {k: got["smt"][k] for k in ADDED_IN_7} == {k: getattr(SMTConfig(), k) for k in ADDED_IN_7}
    assert got["smt"]["own_steps"] == 0 and got["smt"]["far_samples"] == 0 and got["smt"]["slow_tokens"] == 0
    assert "own_steps" not in saved["smt"], "the saved dict is not changed"


def test_a_format_7_run_reads_the_teacher_side_dynamics_weight_as_off():
    """A run saved by 0.6-0.7 (format 7) has no smt.coef_dyn_teacher or handover.solved_coef_dyn_teacher:
    it trained with the dynamics loss weighed alike on both sides, so both read as null (off)."""
    saved = {"smt": {"future": 12, "own_steps": 8}, "handover": {"smt_patience": 20}, "rollout": {}}
    got = upgrade(saved, 7)
    assert got["smt"]["coef_dyn_teacher"] is None and got["handover"]["solved_coef_dyn_teacher"] is None
    assert got["smt"]["own_steps"] == 8 and got["handover"]["smt_patience"] == 20, "what it saved is kept"
    assert "coef_dyn_teacher" not in saved["smt"], "the saved dict is not changed"
    assert ADDED_IN_8 == ("coef_dyn_teacher",)


def test_a_format_8_run_reads_the_schedule_length_and_dmt_stages_as_off():
    """A run saved by 0.8-0.9 (format 8) has no train.schedule_steps, handover.smt_steps, dmt_schedule nor
    dmt.grow: its schedule spanned train.steps, DMT followed the schedule at fixed rollouts."""
    saved = {"smt": {"future": 12}, "handover": {"smt_patience": 20}, "train": {"steps": 300}, "dmt": {"rollout": 8}, "rollout": {}}
    got = upgrade(saved, 8)
    assert got["train"]["schedule_steps"] is None and got["train"]["steps"] == 300
    assert (got["handover"]["smt_steps"], got["handover"]["dmt_schedule"]) == (None, "follow")
    assert got["dmt"] == {"rollout": 8, "grow": None, "grow_patience": 5, "grow_on": "next", "grow_min_steps": 0}
    assert got["handover"]["smt_patience"] == 20 and "schedule_steps" not in saved["train"]
    assert upgrade(got, VERSION) is got, "today's format is read as it is"


def test_a_format_9_run_reads_the_minimum_stage_as_off():
    """0.10 (format 9) grew DMT's rollouts on the patience alone: dmt.grow_min_steps reads as 0."""
    saved = {"dmt": {"rollout": 32, "grow": 2, "grow_patience": 5, "grow_on": "next"}, "rollout": {}}
    got = upgrade(saved, 9)
    assert got["dmt"] == {**saved["dmt"], "grow_min_steps": 0} and "grow_min_steps" not in saved["dmt"]


def test_a_format_10_run_counts_smt_steps_from_its_first_update():
    """0.11-0.12 (format 10) counted handover.smt_steps and the schedule from update 0: a file without
    handover.count_from reads as "start"."""
    saved = json.loads(json.dumps(to_dict(RunConfig())))
    del saved["handover"]["count_from"]
    assert upgrade(saved, 10)["handover"]["count_from"] == "start"  # in the dict too: resuming compares the dicts
    assert from_dict(RunConfig, upgrade(saved, 10)).handover.count_from == "start"
    saved["handover"]["count_from"] = "solved"
    assert from_dict(RunConfig, upgrade(saved, 11)).handover.count_from == "solved"


def test_a_format_11_run_reads_running_sums_as_off():
    """0.13 (format 11) had no running sums in the teacher: a file without teacher.running_sums reads
    as off (None), and a format-12 file keeps its value."""
    saved = json.loads(json.dumps(to_dict(RunConfig())))
    del saved["teacher"]["running_sums"]
    assert upgrade(saved, 11)["teacher"]["running_sums"] is None and "running_sums" not in saved["teacher"]
    assert from_dict(RunConfig, upgrade(saved, 11)).teacher.running_sums is None
    saved["teacher"]["running_sums"] = 26.0
    assert from_dict(RunConfig, upgrade(saved, 12)).teacher.running_sums == 26.0


def test_a_format_12_run_reads_its_decoder_as_reading_every_future_input():
    """0.14-0.18 (format 12) had no smt.decoder_reads: the decoder read every future input ("all")."""
    saved = json.loads(json.dumps(to_dict(RunConfig())))
    del saved["smt"]["decoder_reads"], saved["smt"]["lagged_inputs"]
    got = from_dict(RunConfig, upgrade(saved, 12)).smt
    assert got.decoder_reads == "all" and got.lagged_inputs is None and "decoder_reads" not in saved["smt"]


@pytest.mark.parametrize("version,drop", [(10, [("handover", "count_from"), ("teacher", "running_sums")]),
                                          (11, [("teacher", "running_sums")]),
                                          (12, [("smt", "decoder_reads"), ("smt", "lagged_inputs")])])
def test_a_format_10_to_12_checkpoint_resumes(tmp_path, capsys, version, drop):
    """A training checkpoint written before a setting existed resumes: the settings it lacks are filled
    in at their defaults before the run's settings are compared (0.13 refused a format-10 checkpoint)."""
    out = tmp_path / "run"
    args = ["train.seed=1", "train.ckpt_every=10", "train.keep_last=1", "train.log_every=1", f"out_dir={out}"]
    train(preset_config("tiny", args + ["train.steps=20"]), progress=False)
    for meta_file in [out / "run.json", *out.glob("checkpoints/*/run.json")]:
        meta = json.loads(meta_file.read_text())
        for sec, name in drop:
            del meta["config"][sec][name]
        meta_file.write_text(json.dumps({**meta, "version": version}))
    capsys.readouterr()
    got = train(preset_config("tiny", args + ["train.steps=30"]), progress=False)
    assert "resuming" in capsys.readouterr().err and got["steps"] == 30
    assert read_run(out)[0]["config"]["teacher"]["running_sums"] is None
    assert read_run(out)[0]["config"]["smt"]["decoder_reads"] == "all"
