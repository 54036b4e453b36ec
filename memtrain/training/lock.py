"""One training process per out_dir: an OS-level lock on `out_dir/.lock`.

Two `memtrain train` processes on the same out_dir would both train and both write (metrics rows
twice over, every checkpoint written twice). `RunLock` makes the second one refuse at once, with one
line naming the process that holds the run.

The lock is `flock(2)` on an open file, so the kernel drops it when the holder's file descriptor is
closed, which includes the holder dying in any way (SIGKILL, OOM killer, power loss of the process):
a killed run never leaves a stale lock, and nothing has to guess whether a PID in a file is still
alive. The file's content (one JSON line: pid, host, command, since) only explains the refusal; the
lock itself is the kernel's.

Nothing here imports the rest of memtrain.
"""
from __future__ import annotations

import errno
import json
import os
import socket
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no flock
    fcntl = None

LOCK_NAME = ".lock"


class RunInUse(ValueError):
    """out_dir is held by another live training process. A ValueError, so the command line prints
    `memtrain: error: <the one line>` and exits 2."""


def _one_line(text: str, limit: int = 200) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


class RunLock:
    """`with RunLock(out_dir):` holds out_dir for this process, or raises `RunInUse` at once.

    On entry it creates out_dir (and its parents), opens `out_dir/.lock` and takes an exclusive,
    non-blocking `flock` on it, then replaces the file's content with one JSON line about the
    holder: {"pid", "host", "command" (" ".join(sys.argv)), "since" (ISO 8601, UTC)}, fsynced.
    If another process holds it, the file's content is read (an empty or garbled file is tolerated:
    the holder may be between taking the lock and writing it) and `RunInUse` is raised with one
    line naming that process; nothing is written then, and the holder's line stays as it was.

    On exit the lock is released and the file closed. The file is never deleted: deleting it would
    race with a new holder (process B opens the old file, A unlinks it, C creates a fresh file at the
    same name and locks that one; B and C then both "hold" the lock on two different inodes). A
    leftover `.lock` is harmless: only a live flock on it means anything, and the kernel releases
    that whenever its holder exits, so a SIGKILLed run never leaves a stale lock.

    `enabled=False` takes no lock and creates nothing (under torchrun only rank 0 takes it:
    `RunLock(out_dir, enabled=world.main)`). Where `fcntl` does not exist (Windows) it is a no-op
    too: nothing stops two runs there. Where the filesystem does not support flock (some network
    filesystems) it warns on stderr and goes on unlocked rather than refusing to train.

    The lock belongs to the open file, so a child made with fork() without exec shares it (the fd
    is close-on-exec, so exec'd programs do not); such a child outliving its parent keeps the run
    held until it exits.
    """

    def __init__(self, out_dir: str | os.PathLike, enabled: bool = True):
        self.out_dir = out_dir
        self.path = Path(out_dir) / LOCK_NAME
        self.enabled = enabled and fcntl is not None
        self.fd: int | None = None

    def __enter__(self) -> "RunLock":
        if not self.enabled:
            return self
        if self.fd is not None:
            raise RuntimeError("RunLock is not re-entrant")
        Path(self.out_dir).mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                try:
                    message = self._refusal(self._holder(fd))
                finally:
                    os.close(fd)
                raise RunInUse(message) from None
            os.close(fd)
            if e.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                print(f"memtrain: warning: cannot lock {self.path} ({e.strerror}); nothing stops a second "
                      "run on this out_dir", file=sys.stderr)
                return self
            raise
        try:
            self._write_holder(fd)
        except BaseException:
            os.close(fd)  # releases the lock
            raise
        self.fd = fd
        return self

    def __exit__(self, *exc) -> None:
        fd, self.fd = self.fd, None
        if fd is None:
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    # ---- the holder's line -----------------------------------------------------------------------

    @staticmethod
    def _write_holder(fd: int) -> None:
        info = {"pid": os.getpid(), "host": socket.gethostname(), "command": " ".join(sys.argv),
                "since": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}
        data = (json.dumps(info) + "\n").encode()
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)

    @staticmethod
    def _holder(fd: int) -> dict | None:
        """The holder's line, or None when the file holds nothing readable. The holder writes it just
        after taking the lock, so an empty or partial file is read again for a moment."""
        deadline = time.monotonic() + 0.5
        while True:
            try:
                os.lseek(fd, 0, os.SEEK_SET)
                raw = os.read(fd, 64 * 1024)
                info = json.loads(raw.decode("utf-8"))
                if isinstance(info, dict):
                    return info
            except (OSError, UnicodeDecodeError, ValueError, RecursionError):
                pass
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.05)

    def _refusal(self, info: dict | None) -> str:
        advice = "wait for it to finish or stop it (a stopped run resumes with the same command)"
        where = f"out_dir {str(self.out_dir)!r} is in use by"
        if info is None:
            return f"{where} another process (its details in {self.path} are unreadable); {advice}"
        pid = _one_line(info.get("pid", "?"), 40)
        host = _one_line(info.get("host", "?"), 80)
        extra = [_one_line(info["command"]) if info.get("command") else None,
                 f"since {_one_line(info['since'], 40)}" if info.get("since") else None]
        extra = ", ".join(e for e in extra if e)
        return f"{where} process {pid} on host {host}" + (f" ({extra})" if extra else "") + f"; {advice}"
