"""What several test files share: running training here or in other processes, waiting for a run to
reach a step, and random JSON for property tests."""
from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import torch
from hypothesis import strategies as st

from memtrain.presets import preset_config
from memtrain.training.trainer import train

ROOT = Path(__file__).resolve().parents[1]

# the environment of a child process: one thread, this checkout, and no torchrun variables from outside
ENV = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
ENV.update(OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))

JSON = st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
                    max_leaves=8)


def train_here(settings: list[str], out: Path) -> dict:
    """Train the tiny preset in this process, leaving torch's thread count as it was."""
    threads = torch.get_num_threads()
    try:
        return train(preset_config("tiny", [*settings, f"out_dir={out}"]), progress=False)
    finally:
        torch.set_num_threads(threads)


def wait_for_rows(p: subprocess.Popen, out: Path, rows: int, timeout: float = 120) -> None:
    """Until out/metrics.jsonl has `rows` rows (or the process ended)."""
    log = out / "metrics.jsonl"
    deadline = time.time() + timeout
    while time.time() < deadline and p.poll() is None:
        if log.exists() and log.read_bytes().count(b"\n") >= rows:
            return
        time.sleep(0.002)


def assert_readable(fig, max_columns: int = 4) -> None:
    """A figure a person can read: at most `max_columns` panels a row, and no legend over a panel."""
    fig.canvas.draw()
    columns = {ax.get_subplotspec().get_geometry()[1] for ax in fig.axes if ax.get_subplotspec() is not None}
    assert max(columns) <= max_columns, f"{max(columns)} panels a row"
    legends = list(fig.legends) + [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]
    for legend in legends:
        box = legend.get_window_extent()
        covered = [ax.get_title() or "a panel" for ax in fig.axes if box.overlaps(ax.get_window_extent())]
        assert not covered, f"a legend covers {covered}"
