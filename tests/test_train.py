"""The one training loop: every cell x every method on a tiny config, determinism, resumable
pipeline (DMT/BPTT from an SMT run)."""
import json

import pytest
import torch

from memtrain.cells import CELLS
from memtrain.presets import preset_config
from memtrain.trainer import build, train


def _cfg(tmp_path, name, *over):
    return preset_config("tiny", [f"out_dir={tmp_path / name}", *over])


def _trace(path):
    return [json.loads(l)["loss"] for l in open(path / "metrics.jsonl") if '"loss"' in l]


@pytest.fixture(scope="module")
def smt_runs(tmp_path_factory):
    """One tiny SMT run per cell kind, shared by the DMT/BPTT-after-SMT tests."""
    root = tmp_path_factory.mktemp("smt")
    out = {}
    for kind in sorted(CELLS):
        cfg = preset_config("tiny", [f"cell.kind={kind}", f"out_dir={root / kind}"])
        out[kind] = (train(cfg, progress=False), root / kind)
    return out


@pytest.mark.parametrize("kind", sorted(CELLS))
def test_smt_trains_every_cell(smt_runs, kind):
    summary, path = smt_runs[kind]
    assert summary["steps"] == 5 and summary["sequential_steps"] == 1
    for k in ("rnn_acc", "teacher_acc"):
        assert 0.0 <= summary[k] <= 1.0
    assert len(summary["drift"]) == 13 and summary["drift"][0] == pytest.approx(0.0, abs=1e-6)  # m_empty copied
    trace = _trace(path)
    assert len(trace) == 2 and all(torch.isfinite(torch.tensor(trace)))


@pytest.mark.parametrize("kind", sorted(CELLS))
@pytest.mark.parametrize("method", ["dmt", "bptt"])
def test_dmt_and_bptt_start_from_smt(smt_runs, tmp_path, kind, method):
    from memtrain.run import load_run

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
