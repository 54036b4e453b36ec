"""Checkpoints: a trained run comes back bit for bit; anything that is not one of our runs is refused with
the reason; DMT starts from an SMT run and writes its own."""
from __future__ import annotations

import hashlib
import importlib
import json
import pickle
import random
import shutil
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from memtrain.models.cells import CellConfig, build_cell
from memtrain.io import load_module
from memtrain.training.checkpoint import FORMAT, META, STATE, VERSION, WEIGHTS, read_run
from memtrain.fields import from_dict, to_dict
from memtrain.data.tasks import build_task
from memtrain.training.config import RunConfig, resolve
from memtrain.presets import preset_config
from memtrain.runs import evaluate_run, load_run
from memtrain.training.trainer import train

from helpers import JSON

train_mod = importlib.import_module("memtrain.training.trainer")


def _train_capturing(cfg):
    """train(), plus copies of the exact module tensors handed to save_run."""
    captured = {}
    real = train_mod.save_run

    def spy(out_dir, modules, config, extra=None):
        for name, m in modules.items():
            if m is not None:
                captured[name] = {k: v.detach().clone() for k, v in m.state_dict().items()}
        return real(out_dir, modules, config, extra)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(train_mod, "save_run", spy)
        summary = train(cfg, progress=False)
    return summary, captured


@pytest.fixture(scope="module")
def smt_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ckpt") / "smt"
    cfg = preset_config("tiny", ["method=smt", f"out_dir={out}"])
    summary, state = _train_capturing(cfg)
    return out, cfg, summary, state


@pytest.fixture(scope="module")
def bptt_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ckpt") / "bptt"
    cfg = preset_config("tiny", ["method=bptt", "train.steps=2", "train.eval_every=2", f"out_dir={out}"])
    summary, state = _train_capturing(cfg)
    return out, cfg, summary, state


def _digest(d: Path) -> dict:
    return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.rglob("*")) if p.is_file()}


def _assert_same_state(a: dict, b: dict):
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k


# ---- a trained run comes back ---------------------------------------------------------------------

def test_run_files_and_meta(smt_run):
    out, cfg, summary, _ = smt_run
    assert {p.name for p in out.iterdir()} == {META, WEIGHTS, "metrics.jsonl", "checkpoints", ".lock"}, "no temporary files left behind"
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-00000005"], "the final training state"
    meta = json.loads((out / META).read_text())
    assert meta["format"] == FORMAT == "memtrain-run"
    assert meta["version"] == VERSION == 13
    assert meta["sha256"] == {WEIGHTS: hashlib.sha256((out / WEIGHTS).read_bytes()).hexdigest()}
    assert meta["modules"] == ["cell", "teacher"]
    assert meta["step"] == 5 == summary["steps"]
    saved = from_dict(RunConfig, meta["config"])
    assert saved.method == "smt" and saved.task_args == {"length": 12}
    assert saved.teacher.vocab_size == saved.cell.vocab_size == 9, "vocab sizes are saved resolved"
    assert meta["config"] == to_dict(resolve(cfg, build_task(cfg.task, **cfg.task_args)))
    assert cfg.cell.vocab_size is None and cfg.cell.d_mem is None, "the user's configuration is not changed"
    assert meta["summary"]["rnn_acc"] == summary["rnn_acc"]
    assert "drift" not in meta["summary"]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 5 and rows[-1]["rnn_acc"] == summary["rnn_acc"]
    assert any("loss" in r for r in rows)


def test_load_run_gives_the_trained_weights(smt_run):
    out, cfg, summary, state = smt_run
    cfg1, task, teacher, cell = load_run(str(out))
    assert cfg1 == resolve(cfg, task)
    assert task.length == 12 and task.vocab_size == 9
    assert teacher is not None
    assert not cell.training and not teacher.training
    _assert_same_state(cell.state_dict(), state["cell"])
    _assert_same_state(teacher.state_dict(), state["teacher"])
    # a second load is identical
    _, _, teacher2, cell2 = load_run(str(out))
    _assert_same_state(cell2.state_dict(), cell.state_dict())
    _assert_same_state(teacher2.state_dict(), teacher.state_dict())
    # and so are the raw tensors in the file
    meta, tensors = read_run(out)
    assert set(tensors) == {f"cell.{k}" for k in state["cell"]} | {f"teacher.{k}" for k in state["teacher"]}


def test_evaluate_run_reproduces_the_training_evaluation(smt_run):
    out, cfg, summary, _ = smt_run
    T = cfg.task_args["length"]
    # train() evaluates on eval_batch sequences drawn with seed train.seed + 10000
    rows = evaluate_run(str(out), lengths=[T], batch_size=cfg.train.eval_batch, seed=cfg.train.seed + 10_000)
    assert len(rows) == 1 and rows[0]["length"] == T
    r = rows[0]
    assert r["rnn_acc"] == summary["rnn_acc"]
    assert r["teacher_acc"] == summary["teacher_acc"]
    assert r["rnn_ce"] == pytest.approx(summary["rnn_ce"], rel=1e-5)
    assert r["teacher_ce"] == pytest.approx(summary["teacher_ce"], rel=1e-5)
    assert r["drift"] == pytest.approx(summary["drift"], abs=1e-6)


def test_evaluate_run_default_lengths(smt_run):
    out, *_ = smt_run
    rows = evaluate_run(str(out), batch_size=8)
    assert [r["length"] for r in rows] == [12, 24, 48]
    for r in rows:
        assert 0.0 <= r["rnn_acc"] <= 1.0 and 0.0 <= r["teacher_acc"] <= 1.0
        assert len(r["drift"]) == r["length"] + 1
        assert r["drift"][0] == pytest.approx(0.0, abs=1e-3), "SMT starts the cell at the teacher's m_empty"


def test_bptt_run_has_no_teacher(bptt_run):
    out, _, summary, state = bptt_run
    meta = json.loads((out / META).read_text())
    assert meta["modules"] == ["cell"]
    assert set(state) == {"cell"}
    cfg, task, teacher, cell = load_run(str(out))
    assert teacher is None and cfg.method == "bptt"
    _assert_same_state(cell.state_dict(), state["cell"])
    (row,) = evaluate_run(str(out), lengths=[12], batch_size=cfg.train.eval_batch, seed=cfg.train.seed + 10_000)
    assert row["rnn_acc"] == summary["rnn_acc"]
    assert "teacher_acc" not in row and "drift" not in row


# ---- refusals ------------------------------------------------------------------------------------

@pytest.fixture
def run_copy(smt_run, tmp_path):
    d = tmp_path / "copy"
    shutil.copytree(smt_run[0], d)
    return d


def test_missing_directory_and_files(run_copy, tmp_path):
    with pytest.raises(ValueError, match="is not a directory"):
        read_run(tmp_path / "nowhere")
    (run_copy / WEIGHTS).unlink()
    with pytest.raises(ValueError, match=f"needs {META} and {WEIGHTS}"):
        load_run(str(run_copy))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match=f"needs {META} and {WEIGHTS}"):
        read_run(empty)


def test_missing_run_json(run_copy):
    (run_copy / META).unlink()
    with pytest.raises(ValueError, match=f"needs {META} and {WEIGHTS}"):
        load_run(str(run_copy))


@pytest.mark.parametrize("damage", ["random", "truncated", "empty"])
def test_corrupt_weights(run_copy, damage):
    w = run_copy / WEIGHTS
    data = w.read_bytes()
    w.write_bytes({"random": random.Random(0).randbytes(len(data)), "truncated": data[: len(data) // 2],
                   "empty": b""}[damage])
    with pytest.raises(ValueError, match=f"{WEIGHTS} does not match the SHA-256 in {META}"):
        load_run(str(run_copy))
    # a version-1 run (no hashes) is still read, and its damage is caught by the safetensors parser
    meta = json.loads((run_copy / META).read_text())
    (run_copy / META).write_text(json.dumps({**meta, "version": 1}))
    with pytest.raises(ValueError, match=f"{WEIGHTS} is corrupt"):
        load_run(str(run_copy))


def test_other_format_and_version(run_copy):
    meta = json.loads((run_copy / META).read_text())
    (run_copy / META).write_text(json.dumps({**meta, "format": "someone-else"}))
    with pytest.raises(ValueError, match="not a memtrain run.*someone-else"):
        load_run(str(run_copy))
    (run_copy / META).write_text(json.dumps({**meta, "version": 14}))  # a newer memtrain's
    with pytest.raises(ValueError, match=r"format version 14.*reads versions \[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13\]"):
        load_run(str(run_copy))
    (run_copy / META).write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_run(str(run_copy))
    (run_copy / META).write_text("[1, 2]")
    with pytest.raises(ValueError, match="not a memtrain run"):
        load_run(str(run_copy))


def test_run_json_without_config(run_copy):
    meta = json.loads((run_copy / META).read_text())
    del meta["config"]
    (run_copy / META).write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="config"):
        load_run(str(run_copy))


def test_pickles_are_never_loaded(smt_run, tmp_path, monkeypatch):
    def forbidden(*a, **k):
        raise AssertionError("a pickle was opened")

    monkeypatch.setattr(torch, "load", forbidden)
    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    d = tmp_path / "pickled"
    d.mkdir()
    with open(d / "model.pt", "wb") as f:  # what torch.save writes: a pickle
        pickle.dump({"cell.m_init": [0.0] * 32}, f)
    with pytest.raises(ValueError, match="never loads pickles"):
        load_run(str(d))
    with pytest.raises(ValueError, match="never loads pickles"):
        read_run(d)
    # a stray pickle beside a real run is ignored, not opened
    good = tmp_path / "good"
    shutil.copytree(smt_run[0], good)
    shutil.copy(d / "model.pt", good / "model.pt")
    _, _, _, cell = load_run(str(good))
    _assert_same_state(cell.state_dict(), smt_run[3]["cell"])


def test_load_module_names_the_mismatch(smt_run):
    out, cfg, _, _ = smt_run
    _, tensors = read_run(out)
    c = cfg.cell
    wider = build_cell(CellConfig(kind=c.kind, vocab_size=9, mem_tokens=2, d_mem=32, n_heads=2, readout_depth=1, depth=1))
    with pytest.raises(ValueError, match=r"does not fit this cell.*m_init: \(32,\) vs \(64,\)") as e:
        load_module(wider, tensors, "cell", str(out))
    assert str(out) in str(e.value)
    gru = build_cell(CellConfig(kind="gru", vocab_size=9, mem_tokens=2, d_mem=16, n_heads=2, readout_depth=1))
    with pytest.raises(ValueError, match=r"missing \['gru\.") as e:
        load_module(gru, tensors, "cell", str(out))
    assert "unexpected ['fc." in str(e.value)
    # a module name that is not in the file: everything missing
    same = build_cell(from_dict(RunConfig, json.loads((out / META).read_text())["config"]).cell)
    with pytest.raises(ValueError, match="missing"):
        load_module(same, tensors, "student", str(out))
    load_module(same, tensors, "cell", str(out))  # the right shape loads


# ---- init_from -----------------------------------------------------------------------------------

def test_dmt_from_a_bptt_run_is_refused(bptt_run, tmp_path):
    out = tmp_path / "dmt"
    cfg = preset_config("tiny", ["method=dmt", f"init_from={bptt_run[0]}", f"out_dir={out}"])
    with pytest.raises(ValueError, match=r"init_from=.* has no teacher \(bptt run\); dmt needs one"):
        train(cfg, progress=False)
    assert not out.exists()


def test_dmt_from_an_smt_run_trains_and_writes_its_own_run(smt_run, tmp_path):
    smt_dir, _, _, smt_state = smt_run
    before = _digest(smt_dir)
    out = tmp_path / "dmt"
    cfg = preset_config("tiny", ["method=dmt", f"init_from={smt_dir}", "train.steps=3", "train.eval_every=3",
                                 f"out_dir={out}"])
    summary, state = _train_capturing(cfg)
    assert summary["method"] == "dmt" and summary["steps"] == 3
    assert summary["sequential_steps"] == 12, "DMT unrolls the whole sequence by default"
    assert _digest(smt_dir) == before, "the SMT run is not touched"
    meta = json.loads((out / META).read_text())
    assert meta["config"]["method"] == "dmt" and meta["config"]["init_from"] == str(smt_dir)
    assert meta["modules"] == ["cell", "teacher"]
    cfg2, _, teacher, cell = load_run(str(out))
    assert cfg2.method == "dmt"
    _assert_same_state(cell.state_dict(), state["cell"])
    # DMT freezes the teacher: it is the SMT teacher, unchanged
    _assert_same_state(teacher.state_dict(), smt_state["teacher"])
    # ... and trains the cell, starting from the SMT cell
    moved = [k for k, v in cell.state_dict().items() if not torch.equal(v, smt_state["cell"][k])]
    assert moved, "DMT did not change the cell"
    (row,) = evaluate_run(str(out), lengths=[12], batch_size=cfg.train.eval_batch, seed=cfg.train.seed + 10_000)
    assert row["rnn_acc"] == summary["rnn_acc"]


# ---- random input never crashes the loader (hypothesis) ------------------------------------------------



def _fresh_copy(src: Path) -> Path:
    d = Path(tempfile.mkdtemp(prefix="ckpt-prop-"))
    shutil.copytree(src, d / "run")
    return d / "run"


def _loads_or_value_error(d: Path) -> None:
    try:
        load_run(str(d))
    except ValueError as e:
        assert str(e) and "\n" not in str(e)
    finally:
        shutil.rmtree(d.parent, ignore_errors=True)


@given(blob=st.binary(max_size=300))
def test_random_bytes_as_run_json(smt_run, blob):
    d = _fresh_copy(smt_run[0])
    (d / META).write_bytes(blob)
    _loads_or_value_error(d)


@given(key=st.sampled_from(["format", "version", "config", "modules", "sha256", "step", "summary", "other"]), value=JSON)
def test_random_values_in_run_json(smt_run, key, value):
    d = _fresh_copy(smt_run[0])
    meta = json.loads((d / META).read_text())
    meta[key] = value
    (d / META).write_text(json.dumps(meta))
    _loads_or_value_error(d)


@given(key=st.sampled_from(["method", "task", "task_args", "teacher", "cell", "smt", "train"]), value=JSON)
def test_random_config_in_run_json(smt_run, key, value):
    d = _fresh_copy(smt_run[0])
    meta = json.loads((d / META).read_text())
    meta["config"][key] = value
    (d / META).write_text(json.dumps(meta))
    _loads_or_value_error(d)


@given(blob=st.binary(max_size=2000), rehash=st.booleans())
def test_random_bytes_as_weights(smt_run, blob, rehash):
    """With the hash left alone the SHA-256 check refuses it; with a matching hash the parser must."""
    d = _fresh_copy(smt_run[0])
    (d / WEIGHTS).write_bytes(blob)
    if rehash:
        meta = json.loads((d / META).read_text())
        meta["sha256"][WEIGHTS] = hashlib.sha256(blob).hexdigest()
        (d / META).write_text(json.dumps(meta))
    _loads_or_value_error(d)


TENSORS = st.dictionaries(
    st.sampled_from(["rng.data", "rng.torch", "rng.cuda.0", "optim.0.exp_avg", "optim.0.exp_avg_sq", "optim.0.step",
                     "optim.99.exp_avg", "optim.x.y", "other"]),
    st.tuples(st.sampled_from([torch.uint8, torch.float32, torch.int64]), st.lists(st.integers(0, 5), max_size=2)).map(
        lambda t: torch.zeros(t[1], dtype=t[0])),
    max_size=6)


@given(state=TENSORS, train_info=st.one_of(st.none(), st.dictionaries(
    st.sampled_from(["seconds", "metrics_bytes", "bad_streak", "optimizer", "finished", "summary"]), JSON, max_size=3)))
def test_random_training_state_is_refused_with_a_value_error(smt_run, state, train_info):
    """A training checkpoint whose state file (validly hashed) or training entries are random: resuming
    from it raises ValueError, whatever the mix."""
    from safetensors.torch import save

    d = Path(tempfile.mkdtemp(prefix="ckpt-prop-"))
    try:
        out = d / "run"
        shutil.copytree(smt_run[0], out)
        ck = sorted((out / "checkpoints").iterdir())[-1]
        meta = json.loads((ck / META).read_text())
        blob = save(state)
        (ck / STATE).write_bytes(blob)
        meta["sha256"][STATE] = hashlib.sha256(blob).hexdigest()
        if train_info is not None:
            meta["train"].update(train_info)
        meta["train"]["finished"] = False  # so that the run really loads its state
        (ck / META).write_text(json.dumps(meta))
        cfg = preset_config("tiny", [f"out_dir={out}", "train.steps=6"])
        try:
            train(cfg, progress=False)
        except ValueError as e:
            assert str(e)
    finally:
        shutil.rmtree(d, ignore_errors=True)
