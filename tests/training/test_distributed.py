"""Data-parallel training: 2 processes (torchrun, gloo, CPU) x batch B/2 give the loss trace of one
process x batch B, gradient accumulation gives it too, and a multi-process run stopped or killed
resumes, with the same or another number of processes. Plus the pieces: how a batch is split, the
per-rank loss randomness, the precision settings."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from memtrain.training import distributed
from memtrain.training.checkpoint import list_checkpoints, read_checkpoint
from memtrain.training.distributed import World
from memtrain.presets import preset_config
from memtrain.training.build import autocast_for, configure_precision

from helpers import ENV, train_here, wait_for_rows


# a loss with no randomness inside (every memory decoded, no uniformity sample), and retrieval: one
# supervised target per sequence, so the mean of two half-batch means is the full batch's mean
EXACT = ["train.batch_size=8", "smt.dec_samples=null", "smt.coef_unif=0", "train.log_every=1", "train.eval_every=4",
         "train.threads=1"]


def losses(out: Path) -> list[float]:
    return [r["loss"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(n: int, settings: list[str], out: Path, **popen) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={n}", f"--master_port={free_port()}",
           "-m", "memtrain.cli", "train", "--preset", "tiny", "--quiet", *settings, f"out_dir={out}"]
    return subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def finish(p: subprocess.Popen) -> tuple[int, str, str]:
    out, err = p.communicate(timeout=300)
    return p.returncode, out, err


# ---- the pieces ------------------------------------------------------------------------------------------

def test_rows_split_the_global_batch_without_overlap():
    x = torch.arange(24).reshape(12, 2)
    parts = [distributed.rows_of(World(rank=r, size=3), x, x + 100, 12) for r in range(3)]
    assert torch.equal(torch.cat([p[0] for p in parts]), x) and torch.equal(torch.cat([p[1] for p in parts]), x + 100)
    L = torch.arange(12) + 1
    ragged = [distributed.rows_of(World(rank=r, size=3), x, x + 100, 12, L) for r in range(3)]
    assert all(torch.equal(p[2], L[4 * r: 4 * r + 4]) and torch.equal(p[0], x[4 * r: 4 * r + 4]) for r, p in enumerate(ragged)), \
        "each rank's lengths go with its rows"
    with pytest.raises(ValueError, match=r"train.batch_size=10 must split evenly over 3 process\(es\) x train.grad_accum=1"):
        distributed.check_batch(10, World(size=3), 1)
    with pytest.raises(ValueError, match="train.grad_accum=4"):
        distributed.check_batch(12, World(size=2), 4)
    distributed.check_batch(12, World(size=2), 3)


def test_loss_randomness_differs_by_rank_step_and_micro_batch_and_repeats():
    draw = lambda *a: torch.rand(4, generator=distributed.loss_generator(*a))  # noqa: E731
    assert torch.equal(draw(0, 1, 5, 0), draw(0, 1, 5, 0))
    others = [draw(0, 0, 5, 0), draw(0, 1, 6, 0), draw(0, 1, 5, 1), draw(1, 1, 5, 0)]
    assert all(not torch.equal(draw(0, 1, 5, 0), o) for o in others)


def test_one_process_is_not_distributed(monkeypatch):
    for k in ("RANK", "WORLD_SIZE"):
        monkeypatch.delenv(k, raising=False)
    w = distributed.setup("cpu")
    assert w == World() and w.main and not w.distributed
    assert distributed.sum_across(w, [1.0, 2.0], "cpu") == [1.0, 2.0]
    monkeypatch.setenv("RANK", "x")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="RANK / WORLD_SIZE"):
        distributed.setup("cpu")


@pytest.mark.filterwarnings("ignore:CUDA is not available")
def test_precision_settings():
    assert isinstance(autocast_for(torch.device("cpu"), "auto"), type(autocast_for(torch.device("cpu"), "fp32")))
    assert isinstance(autocast_for(torch.device("cpu"), "bf16"), torch.autocast)
    assert isinstance(autocast_for(torch.device("cuda"), "auto"), torch.autocast)
    before = torch.backends.cuda.matmul.allow_tf32
    try:
        configure_precision(torch.device("cpu"), True)
        assert torch.backends.cuda.matmul.allow_tf32 == before, "nothing changes off CUDA"
        configure_precision(torch.device("cuda"), True)
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
        configure_precision(torch.device("cuda"), False)
        assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before


def test_bf16_autocast_gradients_reach_every_parameter_and_agree_with_fp32():
    """train.precision=bf16 (CPU autocast here): the loss is bf16-rounded, the gradients still reach
    every trainable parameter and point the way the fp32 ones do."""
    from memtrain.training.build import build

    grads = {}
    for precision in ("fp32", "bf16"):
        torch.manual_seed(0)
        task, _, _, method = build(preset_config("tiny", ["method=smt", f"train.precision={precision}"]))
        x, y = task.sample(8, torch.Generator().manual_seed(0))
        with autocast_for(torch.device("cpu"), precision):
            loss, _ = method(x, y, torch.Generator().manual_seed(1))
        loss.backward()
        grads[precision] = torch.cat([p.grad.flatten() for p in method.trainable()])
        assert all(p.grad is not None and bool(torch.isfinite(p.grad).all()) for p in method.trainable())
    a, b = grads["fp32"], grads["bf16"]
    assert torch.nn.functional.cosine_similarity(a, b, dim=0) > 0.99
    assert not torch.equal(a, b), "bf16 autocast really ran"


def test_gradient_accumulation_matches_one_big_batch(tmp_path):
    one = train_here([*EXACT, "train.steps=6"], tmp_path / "one")
    acc = train_here([*EXACT, "train.steps=6", "train.grad_accum=4"], tmp_path / "acc")
    assert losses(tmp_path / "acc") == pytest.approx(losses(tmp_path / "one"), rel=1e-5, abs=1e-6)
    assert acc["rnn_ce"] == pytest.approx(one["rnn_ce"], rel=1e-4)


# ---- real processes: torchrun, gloo, 2 processes ------------------------------------------------------

@pytest.fixture(scope="module")
def smt_init(tmp_path_factory):
    out = tmp_path_factory.mktemp("init") / "smt"
    train_here([], out)
    return out


@pytest.mark.parametrize("method", ["smt", "bptt", "dmt"])
def test_two_processes_match_one(method, tmp_path, smt_init):
    extra = [f"init_from={smt_init}"] if method == "dmt" else []
    settings = [*EXACT, f"method={method}", "train.steps=8", *extra]
    rc, stdout, stderr = finish(torchrun(2, [*settings, "train.grad_accum=2"], tmp_path / "two"))
    assert rc == 0, stderr
    summary = json.loads(stdout)  # rank 0 alone prints
    assert summary["processes"] == 2 and summary["steps"] == 8
    one = train_here(settings, tmp_path / "one")
    assert len(losses(tmp_path / "two")) == 8
    assert losses(tmp_path / "two") == pytest.approx(losses(tmp_path / "one"), rel=1e-5, abs=1e-6)
    assert summary["rnn_ce"] == pytest.approx(one["rnn_ce"], rel=1e-4)


def _signal_when(p: subprocess.Popen, out: Path, rows: int, sig, group: bool = False) -> None:
    wait_for_rows(p, out, rows)
    if group:  # the launcher and every worker at once (torchrun puts workers in their own sessions)
        for pid in [p.pid, *descendants(p.pid)]:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
    else:
        p.send_signal(sig)


def descendants(pid: int) -> list[int]:
    children = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def test_stopped_two_process_run_resumes_with_one(tmp_path):
    settings = [*EXACT, "train.steps=400", "train.ckpt_every=3", "train.eval_every=1000"]
    out = tmp_path / "r"
    p = torchrun(2, settings, out)
    _signal_when(p, out, 20, signal.SIGTERM)  # torchrun passes it on to both workers
    _, _, stderr = finish(p)  # (torchrun itself reports the signal with its own non-zero exit code)
    assert "stopped by SIGTERM after step" in stderr and stderr.count("memtrain: stopped") == 1, "rank 0 speaks"
    newest = list_checkpoints(out)[-1]
    meta, _, _ = read_checkpoint(newest)
    assert meta["train"]["processes"] == 2 and 0 < meta["step"] < 400
    resumed = train_here(settings, out)
    assert resumed["steps"] == 400
    straight = train_here(settings, tmp_path / "straight")
    assert losses(out) == pytest.approx(losses(tmp_path / "straight"), rel=1e-4, abs=1e-6)
    assert resumed["rnn_ce"] == pytest.approx(straight["rnn_ce"], rel=1e-3)


def test_killed_two_process_run_resumes_with_two(tmp_path):
    settings = [*EXACT, "train.steps=300", "train.ckpt_every=5", "train.eval_every=1000"]
    out = tmp_path / "r"
    p = torchrun(2, settings, out)
    _signal_when(p, out, 40, signal.SIGKILL, group=True)
    p.communicate(timeout=60)
    for d in list_checkpoints(out):
        read_checkpoint(d)
    rc, _, stderr = finish(torchrun(2, settings, out))
    assert rc == 0, stderr
    assert "resuming" in stderr and "with 2 processes" in stderr
    train_here(settings, tmp_path / "straight")
    assert losses(out) == pytest.approx(losses(tmp_path / "straight"), rel=1e-4, abs=1e-6)


def test_unused_parameters_are_found_and_ddp_copes(tmp_path, smt_init):
    """DMT from encoder memories never uses m_empty: DDP must be told to look for unused parameters,
    and only then (the search costs a graph traversal every step)."""
    from memtrain.training.build import build
    from memtrain.training.trainer import _has_unused

    for settings, unused in ((["method=dmt", f"init_from={smt_init}", "dmt.start=encoder", "dmt.rollout=6"], True),
                             (["method=dmt", f"init_from={smt_init}"], False), (["method=smt"], False), (["method=bptt"], False),
                             (["method=smt-dmt"], True)):  # (SMT's phase leaves the cell's readout, DMT's, unused)
        task, _, _, method = build(preset_config("tiny", settings))
        assert _has_unused(method, task, method.trainable(), torch.device("cpu"), autocast_for(torch.device("cpu"), "fp32")) is unused
        assert all(p.grad is None for p in method.trainable()), "the probe leaves no gradient behind"
    settings = [*EXACT, "method=dmt", f"init_from={smt_init}", "dmt.start=encoder", "dmt.rollout=6", "train.steps=4"]
    rc, stdout, stderr = finish(torchrun(2, settings, tmp_path / "two"))
    assert rc == 0, stderr
    assert json.loads(stdout)["steps"] == 4 and all(map(lambda v: v == v, losses(tmp_path / "two")))


def test_the_demo_under_torchrun(tmp_path):
    """`memtrain demo` under torchrun: its three stages share one process group, both ranks take rank 0's
    handover decisions; rank 0 prints the table."""
    from memtrain.presets import PRESETS

    tiny = [o for o in PRESETS["tiny"][1] if not o.startswith(("train.steps", "task_args"))]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
           "-m", "memtrain.cli", "demo", "--quiet", "--length", "12", "--steps", "6", "--out", str(tmp_path), *tiny,
           "train.threads=1", "train.eval_every=2", "handover.teacher_acc=0.01", "handover.followable=100",
           "handover.smt_patience=1", "handover.teacher_min_gain=null"]
    r = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("| BPTT, torch LSTM |") == 1 and r.stdout.count("[1/3]") == 1
    rows = json.loads((tmp_path / "compare.json").read_text())["rows"]
    assert rows[0]["handover"] and rows[0]["updates"] == 4 and rows[1]["updates"] == 6 and rows[1]["sequential_steps"] == 12
    assert json.loads((tmp_path / "smt-dmt" / "run.json").read_text())["summary"]["processes"] == 2
