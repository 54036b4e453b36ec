"""Long runs survive faults: training checkpoints are atomic and pruned to the last N; a run killed
at any moment (SIGKILL, during a save included) resumes from the newest intact checkpoint and gives
the loss trace of a run that was never stopped; SIGINT/SIGTERM save and exit 0; non-finite updates
are skipped and stop the run when they persist; resuming with other settings is refused."""
from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from memtrain.training.checkpoint import META, STATE, WEIGHTS, list_checkpoints, read_checkpoint, read_run, save_run
from memtrain.cli import main
from memtrain.presets import preset_config
from memtrain.training.resume import config_differences, optimizer_state, load_optimizer_state
from memtrain.training.trainer import TrainingError, train

from helpers import ENV, train_here, wait_for_rows


pytestmark = pytest.mark.usefixtures("ctrl_c_interrupts")  # tests here send themselves SIGINT


def trace(out: Path) -> list[dict]:
    """metrics.jsonl without wall-clock times: what must be identical between runs."""
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "time"} for r in rows]


def digest(d: Path) -> dict:
    """Every file's hash, but the run lock's, which names whichever process holds the run now."""
    return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.rglob("*"))
            if p.is_file() and p.name != ".lock"}


# ---- in-process: exact resume for every method ------------------------------------------------------

def _stop_at(monkeypatch, step: int, sig=signal.SIGINT):
    """Send ourselves `sig` while update `step` runs (the loop finishes it, saves and returns)."""
    import memtrain.training.trainer as trainer_mod

    real = trainer_mod.lr_at
    def lr_at(s, cfg):
        if s == step:
            os.kill(os.getpid(), sig)
        return real(s, cfg)
    monkeypatch.setattr(trainer_mod, "lr_at", lr_at)


@pytest.fixture(scope="module")
def smt_init(tmp_path_factory):
    out = tmp_path_factory.mktemp("init") / "smt"
    train(preset_config("tiny", [f"out_dir={out}"]), progress=False)
    return out


# error-correcting SMT: own-state rollouts, far-future questions (a head of SMT's own) and slow tokens
EC = ["smt.own_steps=2", "smt.far_samples=2", "smt.slow_tokens=1"]


@pytest.mark.parametrize("method", ["smt", "dmt", "bptt", "smt-ec"])
def test_stop_and_resume_gives_the_straight_trace(method, smt_init, tmp_path, monkeypatch):
    extra = [f"init_from={smt_init}"] if method == "dmt" else EC if method == "smt-ec" else []
    method = "smt" if method == "smt-ec" else method
    args = [f"method={method}", *extra, "train.steps=14", "train.eval_every=4", "train.log_every=1",
            "train.ckpt_every=5", "train.warmup=3", "train.schedule=cosine",
            "smt.coef_last_input=0.1"]  # SMT then trains a probe of its own, outside cell and teacher
    straight = train(preset_config("tiny", args + [f"out_dir={tmp_path / 'a'}"]), progress=False)

    cfg = preset_config("tiny", args + [f"out_dir={tmp_path / 'b'}"])
    with monkeypatch.context() as m:
        _stop_at(m, 7, signal.SIGTERM)
        stopped = train(cfg, progress=False)
    assert stopped["stopped"] == "SIGTERM" and stopped["steps"] == 8
    assert Path(stopped["checkpoint"]).name == "step-00000008"
    assert [p.name for p in list_checkpoints(tmp_path / "b")] == ["step-00000005", "step-00000008"]
    assert not (tmp_path / "b" / META).exists(), "an unfinished run has no final model"
    with monkeypatch.context() as m:
        _stop_at(m, 10, signal.SIGINT)
        assert train(cfg, progress=False)["steps"] == 11
    resumed = train(cfg, progress=False)
    assert trace(tmp_path / "b") == trace(tmp_path / "a")
    for k in ("rnn_acc", "rnn_ce", "steps"):
        assert resumed[k] == straight[k]
    a, b = read_run(tmp_path / "a")[1], read_run(tmp_path / "b")[1]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), "the same final weights, bit for bit"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler, "handlers are restored"


def test_a_second_ctrl_c_stops_at_once(tmp_path, monkeypatch):
    import memtrain.training.trainer as trainer_mod

    real = trainer_mod.lr_at
    def lr_at(s, cfg):
        if s == 5:
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
        return real(s, cfg)
    monkeypatch.setattr(trainer_mod, "lr_at", lr_at)
    out = tmp_path / "r"
    with pytest.raises(KeyboardInterrupt):
        train(preset_config("tiny", ["train.steps=20", "train.ckpt_every=4", f"out_dir={out}"]), progress=False)
    assert [p.name for p in list_checkpoints(out)] == ["step-00000004"], "the last checkpoint is intact"
    _assert_intact(out)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_finished_run_is_not_trained_again_and_can_be_extended(tmp_path, capsys):
    out = tmp_path / "r"
    args = ["train.steps=6", "train.log_every=1", "train.ckpt_every=null", f"out_dir={out}"]
    first = train(preset_config("tiny", args), progress=False)
    before = digest(out)
    again = train(preset_config("tiny", args), progress=False)
    assert "already finished at step 6" in capsys.readouterr().err
    assert again == json.loads(json.dumps(first)) and digest(out) == before
    longer = train(preset_config("tiny", [*args, "train.steps=9"]), progress=False)
    assert longer["steps"] == 9
    steps = [r["step"] for r in trace(out) if "loss" in r]
    assert steps == list(range(9)), "the extension continues the log where it stopped"
    assert [p.name for p in list_checkpoints(out)] == ["step-00000006", "step-00000009"]


def test_keep_last(tmp_path):
    out = tmp_path / "r"
    train(preset_config("tiny", ["train.steps=12", "train.ckpt_every=2", "train.keep_last=3", f"out_dir={out}"]), progress=False)
    assert [p.name for p in list_checkpoints(out)] == ["step-00000008", "step-00000010", "step-00000012"]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-00000008", "step-00000010", "step-00000012"]
    meta, tensors, state = read_checkpoint(list_checkpoints(out)[-1])
    assert meta["step"] == 12 and meta["train"]["finished"] is True
    assert {"rng.data", "rng.torch"} <= set(state) and any(k.startswith("optim.") for k in state)
    assert set(meta["sha256"]) == {WEIGHTS, STATE}


# ---- refusals: other settings, modes, damaged checkpoints ------------------------------------------

def test_resuming_with_other_settings_is_refused_and_touches_nothing(tmp_path, capsys):
    out = tmp_path / "r"
    base = ["train.steps=4", f"out_dir={out}"]
    assert main(["train", "--preset", "tiny", "--quiet", *base]) == 0
    before = digest(out)
    capsys.readouterr()
    rc = main(["train", "--preset", "tiny", "--quiet", *base, "task_args.length=16", "train.lr=0.01", "train.steps=8"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1
    assert "task_args.length: 12 in the checkpoint, 16 now" in err and "train.lr: 0.001 in the checkpoint, 0.01 now" in err
    assert "train.steps" not in err, "the number of steps may change"
    assert digest(out) == before


def test_config_differences_ignore_run_control():
    a = {"train": {"steps": 1, "lr": 0.1, "threads": 2}, "cell": {"d_mem": 8}, "out_dir": "x", "task_args": {}}
    b = {"train": {"steps": 9, "lr": 0.1, "threads": 1}, "cell": {"d_mem": 16}, "out_dir": "y", "task_args": {"length": 3}}
    assert config_differences(a, b) == ["cell.d_mem: 8 in the checkpoint, 16 now",
                                        "task_args.length: (not set) in the checkpoint, 3 now"]
    assert config_differences(a, a) == []


def test_resume_modes(tmp_path, capsys):
    out = tmp_path / "r"
    with pytest.raises(ValueError, match="train.resume='require' but out_dir=.* holds no training checkpoint"):
        train(preset_config("tiny", ["train.resume=require", f"out_dir={out}"]), progress=False)
    assert not out.exists()
    train(preset_config("tiny", [f"out_dir={out}"]), progress=False)
    before = digest(out)
    with pytest.raises(ValueError, match="train.resume='never' will not overwrite them"):
        train(preset_config("tiny", ["train.resume=never", f"out_dir={out}"]), progress=False)
    assert digest(out) == before
    with pytest.raises(ValueError, match="train.resume must be one of"):
        train(preset_config("tiny", ["train.resume=maybe", f"out_dir={out}"]), progress=False)


def test_a_damaged_newest_checkpoint_is_skipped(tmp_path, capsys):
    args = ["train.steps=10", "train.ckpt_every=3", "train.keep_last=3", "train.log_every=1"]
    train(preset_config("tiny", [*args, f"out_dir={tmp_path / 'a'}"]), progress=False)
    out = tmp_path / "b"
    cfg = preset_config("tiny", [*args, f"out_dir={out}"])
    with pytest.MonkeyPatch.context() as m:
        _stop_at(m, 6)
        train(cfg, progress=False)
    newest = list_checkpoints(out)[-1]
    assert newest.name == "step-00000007"
    blob = bytearray((newest / STATE).read_bytes())
    blob[len(blob) // 2] ^= 0xFF  # one flipped bit-group in the optimizer / RNG state
    (newest / STATE).write_bytes(bytes(blob))
    capsys.readouterr()
    train(cfg, progress=False)
    err = capsys.readouterr().err
    assert "skipping a damaged checkpoint" in err and "does not match the SHA-256" in err
    assert "from step-00000006 (step 6)" in err
    assert trace(out) == trace(tmp_path / "a")


def test_all_checkpoints_damaged_is_refused(tmp_path):
    out = tmp_path / "r"
    cfg = preset_config("tiny", ["train.steps=4", "train.ckpt_every=2", f"out_dir={out}"])
    train(cfg, progress=False)
    for d in list_checkpoints(out):
        (d / WEIGHTS).write_bytes(b"garbage")
    with pytest.raises(ValueError, match="none is intact"):
        train(cfg, progress=False)


# ---- non-finite losses and gradients -----------------------------------------------------------------

def _poison(monkeypatch, steps: set, kind: str):
    """Make the loss (kind='loss') or only the gradient (kind='grad') non-finite at the given steps."""
    from memtrain.methods.smt import SMT

    real = SMT.loss
    count = {"n": 0}

    def loss(self, x, y, gen=None, cfg=None, lengths=None):
        value, metrics = real(self, x, y, gen, cfg, lengths=lengths)
        s = count["n"]
        count["n"] += 1
        if s in steps:
            if kind == "loss":
                value = value * float("nan")
            else:  # sqrt'(0) = inf, times d(0 * w)/dw = 0: a NaN gradient under a finite loss
                w = next(self.parameters())
                value = value + (w.sum() * 0).sqrt()
        return value, metrics

    monkeypatch.setattr(SMT, "loss", loss)


@pytest.mark.parametrize("kind", ["loss", "grad"])
def test_non_finite_updates_are_skipped_and_logged(kind, tmp_path, monkeypatch):
    args = ["train.steps=6", "train.log_every=1", "train.ckpt_every=null", "train.eval_every=100"]
    clean = train(preset_config("tiny", [*args, f"out_dir={tmp_path / 'clean'}"]), progress=False)
    _poison(monkeypatch, {2, 3}, kind)
    out = tmp_path / "poisoned"
    summary = train(preset_config("tiny", [*args, f"out_dir={out}"]), progress=False)
    rows = trace(out)  # json.loads would have failed on a bare NaN
    skipped = [r for r in rows if "skipped" in r]
    assert [r["step"] for r in skipped] == [2, 3] and [r["bad_streak"] for r in skipped] == [1, 2]
    assert all(r["skipped"] == f"non-finite {'loss' if kind == 'loss' else 'gradient'}" for r in skipped)
    assert "NaN" not in (out / "metrics.jsonl").read_text()
    assert summary["steps"] == 6 and summary["rnn_acc"] == summary["rnn_acc"]
    _, tensors = read_run(out)
    assert all(bool(torch.isfinite(v).all()) for v in tensors.values() if v.is_floating_point())
    # the skipped updates changed nothing: steps 0-1 are identical to the clean run's
    clean_rows = [r for r in trace(tmp_path / "clean") if "loss" in r]
    assert [r for r in rows if "loss" in r and "skipped" not in r][:2] == clean_rows[:2]
    assert clean["steps"] == 6


def test_persistent_non_finite_updates_stop_thetrain_here(tmp_path, monkeypatch, capsys):
    out = tmp_path / "r"
    _poison(monkeypatch, set(range(4, 100)), "loss")
    cfg = preset_config("tiny", ["train.steps=50", "train.ckpt_every=2", "train.max_bad_steps=3", f"out_dir={out}"])
    with pytest.raises(TrainingError, match=r"3 updates in a row had a non-finite loss or gradient \(steps 4..6\)") as e:
        train(cfg, progress=False)
    assert str(list_checkpoints(out)[-1]) in str(e.value) and list_checkpoints(out)[-1].name == "step-00000004"
    assert not (out / META).exists(), "no final model for a run that stopped"
    for d in list_checkpoints(out):
        _, tensors, _ = read_checkpoint(d)
        assert all(bool(torch.isfinite(v).all()) for v in tensors.values() if v.is_floating_point())
    # the same through the CLI: one line, non-zero exit
    rc = main(["train", "--preset", "tiny", "--quiet", "train.steps=50", "train.max_bad_steps=3", f"out_dir={tmp_path / 'c'}"])
    err = capsys.readouterr().err
    assert rc == 3 and err.count("memtrain: error:") == 1 and "non-finite" in err


def test_a_non_finite_model_is_never_saved(tmp_path):
    lin = torch.nn.Linear(2, 2)
    with torch.no_grad():
        lin.weight[0, 0] = float("inf")
    with pytest.raises(ValueError, match=r"refusing to save.*non-finite values in \['cell.weight'\]"):
        save_run(tmp_path / "r", {"cell": lin}, {})
    assert not (tmp_path / "r" / WEIGHTS).exists() and not (tmp_path / "r" / META).exists()


def test_optimizer_state_round_trip():
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(3, dtype=torch.float64))
    opt = torch.optim.AdamW([w], lr=0.1, betas=(0.8, 0.9))
    for _ in range(3):
        opt.zero_grad()
        (w ** 2).sum().backward()
        opt.step()
    plain, tensors = optimizer_state(opt)
    plain = json.loads(json.dumps(plain))  # it goes through run.json
    w2 = torch.nn.Parameter(w.detach().clone())
    opt2 = torch.optim.AdamW([w2], lr=0.5)
    load_optimizer_state(opt2, plain, tensors, "here")
    for o, p in ((opt, w), (opt2, w2)):
        o.zero_grad()
        (p ** 2).sum().backward()
        o.step()
    assert torch.equal(w, w2), "the same next update, bit for bit (float64)"
    with pytest.raises(ValueError, match="optimizer state does not fit"):
        load_optimizer_state(torch.optim.AdamW([w2, torch.nn.Parameter(torch.zeros(1))]), plain, tensors, "here")


# ---- real processes: SIGKILL at random moments and inside a save, SIGTERM / SIGINT --------------------

LONG = ["train.steps=150", "train.ckpt_every=4", "train.keep_last=2", "train.log_every=1", "train.eval_every=25",
        "train.threads=1"]
SHORT = ["train.steps=12", "train.ckpt_every=2", "train.keep_last=2", "train.log_every=1", "train.eval_every=5",
         "train.threads=1"]


def _cmd(settings, out):
    return [sys.executable, "-m", "memtrain.cli", "train", "--preset", "tiny", "--quiet", *settings, f"out_dir={out}"]


def _start_and_signal(settings, out, sig, after_rows):
    """Start a run, wait until metrics.jsonl has `after_rows` rows, send `sig`; -> completed process."""
    p = subprocess.Popen(_cmd(settings, out), env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # not ignored, even under nohup
    wait_for_rows(p, out, after_rows)
    p.send_signal(sig)
    stdout, stderr = p.communicate(timeout=300)
    return p.returncode, stdout, stderr


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Straight runs, never stopped."""
    d = tmp_path_factory.mktemp("ref")
    train_here(LONG, d / "long")
    train_here(SHORT, d / "short")
    return {"long": trace(d / "long"), "short": trace(d / "short"), "short_dir": d / "short"}


def _assert_intact(out: Path):
    for d in list_checkpoints(out):
        read_checkpoint(d)  # raises if anything is off


def test_sigterm_and_sigint_save_and_exit_0(reference, tmp_path):
    out = tmp_path / "r"
    for sig, rows in ((signal.SIGTERM, 20), (signal.SIGINT, 60)):
        rc, stdout, stderr = _start_and_signal(LONG, out, sig, rows)
        assert rc == 0, stderr
        name = signal.Signals(sig).name
        assert f"stopped by {name} after step" in stderr and "checkpoint" in stderr and "Traceback" not in stderr
        step = json.loads(stdout)["steps"]
        assert 0 < step < 150 and list_checkpoints(out)[-1].name == f"step-{step:08d}"
        _assert_intact(out)
    train_here(LONG, out)
    assert trace(out) == reference["long"]


def test_sigkill_at_random_moments_loses_nothing(reference, tmp_path):
    out = tmp_path / "r"
    rng = random.Random(1)
    for _ in range(3):
        rc, _, _ = _start_and_signal(LONG, out, signal.SIGKILL, rng.randrange(5, 140))
        assert rc in (-signal.SIGKILL, 0)
        _assert_intact(out)
    train_here(LONG, out)
    assert trace(out) == reference["long"]
    assert read_run(out)[0]["step"] == 150


KILL_INSIDE = {
    # the third training checkpoint's optimizer/RNG file is half written when the process dies
    "half-written state file": """
real = ck.atomic_write
def atomic_write(path, data, atomic=True):
    if path.name == ck.STATE and bump() == 3:
        with open(path, "wb") as f:
            f.write(data[: len(data) // 2]); f.flush()
        die()
    return real(path, data, atomic)
ck.atomic_write = atomic_write""",
    # everything written, the process dies just before the folder is renamed into place
    "before the rename": """
real = os.replace
def replace(src, dst):
    if os.path.basename(dst).startswith("step-") and bump() == 3:
        die()
    return real(src, dst)
ck.os.replace = replace""",
    # a new checkpoint is in place, the oldest one is half deleted
    "while pruning": """
real = shutil.rmtree
def rmtree(path, *a, **k):
    if ".tmp-delete-" in str(path) and bump() == 2:
        files = sorted(os.listdir(path))
        os.remove(os.path.join(path, files[0]))
        die()
    return real(path, *a, **k)
ck.shutil.rmtree = rmtree""",
    # the final model's weights are written, its run.json is not
    "final model": """
real = ck.atomic_write
def atomic_write(path, data, atomic=True):
    if path.name == ck.META and path.parent.name == "r" and atomic:
        die()
    return real(path, data, atomic)
ck.atomic_write = atomic_write""",
}


@pytest.mark.parametrize("where", list(KILL_INSIDE), ids=list(KILL_INSIDE))
def test_sigkill_inside_a_save(where, reference, tmp_path):
    out = tmp_path / "r"
    script = "\n".join([
        "import os, shutil, signal, sys",
        "import memtrain.training.checkpoint as ck",
        "n = [0]",
        "def bump():\n    n[0] += 1\n    return n[0]",
        "def die():\n    os.kill(os.getpid(), signal.SIGKILL)",
        KILL_INSIDE[where],
        "from memtrain.cli import main",
        "sys.exit(main(sys.argv[1:]))",
    ])
    r = subprocess.run([sys.executable, "-c", script, *_cmd(SHORT, out)[3:]], env=ENV, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == -signal.SIGKILL, r.stderr
    _assert_intact(out)
    if where != "final model":
        assert not (out / META).exists()
    else:
        with pytest.raises(ValueError):
            read_run(out)  # a weights file without its run.json is refused, never half-loaded
    train_here(SHORT, out)
    assert trace(out) == reference["short"]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-00000010", "step-00000012"]
    a, b = read_run(out)[1], read_run(reference["short_dir"])[1]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_an_ignored_signal_stays_ignored(tmp_path, monkeypatch):
    """Under `nohup` or `&` SIGINT is ignored: training must not start reacting to it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _stop_at(monkeypatch, 3, signal.SIGINT)
    summary = train(preset_config("tiny", ["train.steps=6", f"out_dir={tmp_path / 'r'}"]), progress=False)
    assert summary["steps"] == 6 and "stopped" not in summary
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
