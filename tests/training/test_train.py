"""The one training loop: every cell x every method on a tiny config, determinism, resumable
pipeline (DMT/BPTT from an SMT run)."""
import json

import pytest
import torch

from memtrain.models.cells import CELLS, TEXTBOOK_KINDS
from memtrain.presets import preset_config
from memtrain.training.build import build
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


def test_progress_bar_counts_the_time_budget(tmp_path, capsys):
    """Under train.time_limit the bar counts seconds of the budget, not 0/1000000 steps."""
    train(_cfg(tmp_path, "p", "train.steps=1000000", "train.eval_every=1000000", "train.time_limit=0.5"), progress=True)
    err = capsys.readouterr().err
    assert "/0.5 s [" in err and "1000000" not in err, err[-300:]
    train(_cfg(tmp_path, "q", "train.steps=3", "train.eval_every=1000"), progress=True)
    assert "3/3" in capsys.readouterr().err, "without a time limit it counts steps"


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
        m = SMT(t, c, SMTConfig(future=4, dec_samples=None))
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
