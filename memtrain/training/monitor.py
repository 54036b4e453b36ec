"""What a run shows and writes as it goes, on rank 0: `metrics.jsonl` (the record a resume continues
and `memtrain plot` reads), TensorBoard events if asked for, and the progress (a bar on a terminal, a
plain line every few seconds in a log file).
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path

from tqdm.auto import tqdm

from .resume import RunState


class MetricsLog:
    """`metrics.jsonl`, one JSON row per line, written by rank 0 only (others: no-op). A resumed run
    first drops the rows written after its checkpoint, so the file reads as one run never stopped.
    JSON has no NaN: non-finite numbers are logged as null (the row says why the step was skipped).
    With `tensorboard` (a TensorBoardLog) every row's numbers are mirrored there too."""

    def __init__(self, out: Path | None, resume_at: int | None, enabled: bool = True, tensorboard=None):
        self.file, self.tensorboard = None, tensorboard
        if out is None or not enabled:
            return
        path = out / "metrics.jsonl"
        if resume_at is not None and path.is_file():
            self.file = open(path, "r+b")
            self.file.truncate(min(resume_at, path.stat().st_size))
            self.file.seek(0, os.SEEK_END)
        else:
            self.file = open(path, "wb")

    def write(self, row: dict) -> None:
        if self.file:
            row = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}
            self.file.write((json.dumps(row, allow_nan=False) + "\n").encode())
            self.file.flush()
        if self.tensorboard:
            self.tensorboard.write(row)

    def sync(self) -> int:
        """fsync what was written; -> the file's length (where a resume continues)."""
        if not self.file:
            return 0
        self.file.flush()
        os.fsync(self.file.fileno())
        return self.file.tell()

    def close(self) -> None:
        if self.file:
            self.file.close()
        if self.tensorboard:
            self.tensorboard.close()


class TensorBoardLog:
    """`train.tensorboard=true`: the metrics rows as TensorBoard scalars in out_dir/tensorboard
    (torch's SummaryWriter): evaluation rows under eval/, training rows under train/, a decision
    (handover...) as text. A resumed run purges the events logged after its checkpoint."""

    def __init__(self, out: Path, resume_step: int | None):
        self.available()
        from torch.utils.tensorboard import SummaryWriter  # (torch's writer needs the tensorboard package)

        self.writer = SummaryWriter(str(out / "tensorboard"), purge_step=resume_step)

    @staticmethod
    def available() -> None:
        """Refuse train.tensorboard=true (before anything is written) when the package is missing."""
        import importlib.util

        if importlib.util.find_spec("tensorboard") is None:
            raise ValueError("train.tensorboard=true needs the tensorboard package: pip install 'memtrain[tensorboard]'")

    def write(self, row: dict) -> None:
        step = row.get("step", 0)
        if "event" in row:
            self.writer.add_text("events", f"{row['event']}: {row.get('why', '')}", step)
            return
        group = "eval" if "rnn_acc" in row else "train"
        for key, v in row.items():
            if key != "step" and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                self.writer.add_scalar(f"{group}/{key}", v, step)

    def close(self) -> None:
        self.writer.close()


class Progress:
    """The progress of rank 0: a tqdm bar on a terminal (updates out of `train.steps`, or under
    `train.time_limit` the seconds of the time budget); on anything else (a log file, a pipe) one
    plain line every `train.progress_every` seconds instead of a stream of carriage returns."""

    def __init__(self, tc, state: RunState, enabled: bool, desc: str, stream=None, clock=time.monotonic):
        self.stream = stream if stream is not None else sys.stderr
        self.timed, self.tc, self.desc = tc.time_limit is not None, tc, desc
        self.plain = enabled and not (hasattr(self.stream, "isatty") and self.stream.isatty())
        total, done = (tc.time_limit, min(state.seconds, tc.time_limit)) if self.timed else (tc.steps, min(state.step, tc.steps))
        fmt = "{l_bar}{bar}| {n:.1f}/{total:.1f} s [{elapsed}<{remaining}{postfix}]" if self.timed else None
        self.bar = tqdm(total=total, initial=done, disable=not enabled or self.plain, desc=desc, dynamic_ncols=True,
                        file=self.stream, **({"bar_format": fmt} if fmt else {}))
        self.total, self.clock = total, clock
        self.last = clock()

    def advance(self, step: int, seconds: float, **shown) -> None:
        if self.plain:
            now = self.clock()
            if now - self.last >= self.tc.progress_every:
                self.last = now
                self.write(self.line(step, seconds, shown))
            return
        if self.timed:
            self.bar.update(max(0.0, min(seconds, self.total) - self.bar.n))
            shown = {"step": step, **shown}
        else:
            self.bar.update(1)
        if shown:
            self.bar.set_postfix(**shown)

    def line(self, step: int, seconds: float, shown: dict) -> str:
        """One plain progress line: under a time limit the seconds of the budget and the update count
        (the step budget is then only a bound, not a goal), otherwise the updates out of train.steps."""
        extra = "".join(f" {k}={v}" for k, v in shown.items())
        if self.timed:
            return f"memtrain: {self.desc} {seconds:.1f}/{self.tc.time_limit:g} s of training, update {step}{extra}"
        return f"memtrain: {self.desc} step {step}/{self.tc.steps}, {seconds:.1f} s of training{extra}"

    def write(self, msg: str) -> None:
        if self.plain:
            print(msg, file=self.stream, flush=True)
        else:  # (tqdm.write's own default is stdout, where the summary goes)
            self.bar.write(msg, file=self.stream)

    def close(self) -> None:
        self.bar.close()
