"""One training process per out_dir: RunLock (an flock on out_dir/.lock) refuses a second holder at
once with one line naming the first, in this process and across real processes; the kernel releases
it when the holder is SIGKILLed (no stale lock); a refusal writes nothing; `enabled=False` does
nothing. Through the command line: a second `memtrain train` on a running out_dir exits 2 at once and
touches nothing, and the run resumes after the first is killed."""
from __future__ import annotations

import hashlib
import inspect
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import memtrain.training.trainer
from memtrain.training.checkpoint import list_checkpoints
from memtrain.training.lock import LOCK_NAME, RunInUse, RunLock

from helpers import ENV, ROOT, wait_for_rows

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="flock: POSIX only (RunLock is a no-op on Windows)")

LOCK_PY = ROOT / "memtrain" / "training" / "lock.py"

# child processes load lock.py on its own (it imports nothing of memtrain), so they start in
# milliseconds instead of importing torch
_LOAD = f"""
import importlib.util, sys, time
spec = importlib.util.spec_from_file_location("lock", {str(LOCK_PY)!r})
lock = importlib.util.module_from_spec(spec)
spec.loader.exec_module(lock)
"""
HOLD = _LOAD + """
with lock.RunLock(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(120)
"""
TRY = _LOAD + """
try:
    with lock.RunLock(sys.argv[1]):
        print("locked", flush=True)
except lock.RunInUse as e:
    print(e, file=sys.stderr)
    sys.exit(2)
"""


def _child(code: str, out: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code, str(out)], env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _wait_locked(p: subprocess.Popen, timeout: float = 30) -> None:
    os.set_blocking(p.stdout.fileno(), True)
    deadline = time.time() + timeout
    line = p.stdout.readline()  # the child prints at once; a dead child gives ""
    assert line.strip() == "locked" and time.time() < deadline, (line, p.poll(), p.stderr.read() if p.poll() is not None else "")


def _holder(out: Path) -> dict:
    return json.loads((out / LOCK_NAME).read_text())


# ---- in this process --------------------------------------------------------------------------------

def test_a_second_lock_is_refused_and_the_first_released(tmp_path):
    out = tmp_path / "a" / "b" / "run"  # parents are created
    with RunLock(out) as held:
        assert held.fd is not None
        held_bytes = (out / LOCK_NAME).read_bytes()
        info = json.loads(held_bytes)
        assert info["pid"] == os.getpid() and info["command"] == " ".join(sys.argv)
        assert info["since"].endswith("Z") and info["host"]
        with pytest.raises(RunInUse) as e:
            with RunLock(out):
                pytest.fail("a second holder got in")
        msg = str(e.value)
        assert isinstance(e.value, ValueError) and "\n" not in msg
        assert msg.startswith(f"out_dir {str(out)!r} is in use by process {os.getpid()} on host {info['host']} (")
        assert f"since {info['since']}); wait for it to finish or stop it" in msg
        assert msg.endswith("(a stopped run resumes with the same command)")
        assert (out / LOCK_NAME).read_bytes() == held_bytes, "the refusal left the holder's line intact"
    assert (out / LOCK_NAME).exists(), "the lock file is never deleted"
    with RunLock(out):
        assert _holder(out)["pid"] == os.getpid()
    with RunLock(out):  # and again: released on exit
        pass


def test_an_exception_inside_releases_the_lock(tmp_path):
    with pytest.raises(KeyError):
        with RunLock(tmp_path):
            raise KeyError("x")
    with RunLock(tmp_path):
        pass


@pytest.mark.parametrize("content", [b"", b"{not json", b"[1, 2]", b"\xff\xfe", b'{"pid": 7}'])
def test_an_empty_or_garbled_lock_file_is_tolerated(tmp_path, content):
    (tmp_path / LOCK_NAME).write_bytes(content)
    import fcntl

    fd = os.open(tmp_path / LOCK_NAME, os.O_RDWR)  # someone holds it without having written (much) yet
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        t = time.time()
        with pytest.raises(RunInUse) as e:
            with RunLock(tmp_path):
                pass
        assert time.time() - t < 2
        msg = str(e.value)
        assert "\n" not in msg and "wait for it to finish or stop it" in msg
        if content == b'{"pid": 7}':
            assert "in use by process 7 on host ?;" in msg
        else:
            assert "in use by another process (its details in" in msg and "are unreadable)" in msg
        assert (tmp_path / LOCK_NAME).read_bytes() == content, "a refusal writes nothing"
    finally:
        os.close(fd)
    with RunLock(tmp_path):  # free again: taken, and the file rewritten with our line
        assert _holder(tmp_path)["pid"] == os.getpid()


def test_disabled_takes_no_lock_and_creates_nothing(tmp_path):
    out = tmp_path / "run"
    with RunLock(out, enabled=False) as lk:
        assert lk.fd is None
        assert not out.exists()
    with RunLock(tmp_path):
        with RunLock(tmp_path, enabled=False):  # does not even look
            pass


# ---- real processes ---------------------------------------------------------------------------------

def test_across_processes_and_sigkill_leaves_no_stale_lock(tmp_path):
    out = tmp_path / "run"
    first = _child(HOLD, out)
    try:
        _wait_locked(first)
        held = (out / LOCK_NAME).read_bytes()
        assert json.loads(held)["pid"] == first.pid

        t = time.time()
        second = _child(TRY, out)
        _, err = second.communicate(timeout=30)
        assert time.time() - t < 5, "refused at once, not after waiting for the lock"
        assert second.returncode == 2, err
        assert err.count("\n") == 1 and f"is in use by process {first.pid} on host " in err
        assert "(-c " in err, "the holder's command line"
        assert (out / LOCK_NAME).read_bytes() == held, "the refused attempt left the holder's line intact"

        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
        assert first.returncode == -signal.SIGKILL
        third = _child(TRY, out)
        stdout, err = third.communicate(timeout=30)
        assert third.returncode == 0 and stdout.strip() == "locked", err
        assert json.loads((out / LOCK_NAME).read_text())["pid"] == third.pid
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
        first.stdout.close()
        first.stderr.close()


# ---- through `memtrain train` (once the trainer takes the lock) ---------------------------------------

def _trainer_locks() -> bool:
    return "RunLock" in inspect.getsource(memtrain.training.trainer)


def _cmd(out: Path, steps: int = 100000) -> list[str]:
    return [sys.executable, "-m", "memtrain.cli", "train", "--preset", "tiny", "--quiet", f"train.steps={steps}",
            "train.time_limit=60", "train.log_every=1", "train.ckpt_every=5", "train.threads=1", f"out_dir={out}"]


def _digest(d: Path) -> dict:
    return {str(p.relative_to(d)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(d.rglob("*")) if p.is_file()}


@pytest.mark.skipif(not _trainer_locks(), reason="memtrain.training.trainer does not take RunLock yet")
def test_a_second_train_on_a_running_out_dir_is_refused_at_once(tmp_path):
    out = tmp_path / "run"
    first = subprocess.Popen(_cmd(out), env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_rows(first, out, 12, timeout=60)  # log_every=1 and ckpt_every=5: a checkpoint exists by then
        deadline = time.time() + 60
        while not list_checkpoints(out) and first.poll() is None and time.time() < deadline:
            time.sleep(0.01)
        assert first.poll() is None and list_checkpoints(out), first.stderr.read() if first.poll() is not None else ""
        first.send_signal(signal.SIGSTOP)  # freeze it, so that anything that changes now is the second's doing
        before = _digest(out)

        t = time.time()
        try:
            second = subprocess.run(_cmd(out), env=ENV, capture_output=True, text=True, timeout=30)
        except subprocess.TimeoutExpired:
            pytest.fail("a second `memtrain train` on a running out_dir was not refused: it trained for 30 s")
        took = time.time() - t
        assert second.returncode == 2, second.stderr
        err = second.stderr
        assert err.count("\n") == 1 and err.startswith("memtrain: error: "), err
        assert f"is in use by process {first.pid} on host " in err and "memtrain" in err and "cli.py train" in err
        assert "wait for it to finish or stop it (a stopped run resumes with the same command)" in err
        assert second.stdout == ""
        assert took < 15, f"refused after {took:.1f} s (it must not build or train anything first)"
        assert _digest(out) == before, "the refused run touched nothing in out_dir (metrics, checkpoints, .lock)"

        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
        step = int(list_checkpoints(out)[-1].name.split("-")[1])
        again = subprocess.run(_cmd(out, steps=step + 3), env=ENV, capture_output=True, text=True, timeout=120)
        assert again.returncode == 0, again.stderr
        assert "resuming" in again.stderr and f"(step {step})" in again.stderr
        assert json.loads(again.stdout)["steps"] == step + 3
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        steps = [r["step"] for r in rows if "loss" in r]
        assert steps == list(range(step + 3)), "one row per step: nobody wrote twice"
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
        first.stdout.close()
        first.stderr.close()
