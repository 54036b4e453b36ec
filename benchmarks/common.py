"""What every benchmark shares: where results go, how they are written, and the machine they ran on.

Each benchmark writes three files to benchmarks/results/ (or --results): NAME.json (every measured
figure and the settings), NAME.md (a markdown table) and NAME.png (a figure). Files are written to a
temporary name and renamed, so an interrupted benchmark never leaves half a result.
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from memtrain.io import atomic_write

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict:
    """The facts a reader needs to compare figures across machines."""
    return {"python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform(),
            "cpu_count": os.cpu_count(), "threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:])}


def write_results(name: str, data: dict, table: str, figure=None, results: str | Path | None = None) -> list[Path]:
    """Write NAME.json, NAME.md and (when a matplotlib figure is given) NAME.png; returns the paths."""
    out = Path(results) if results else RESULTS
    data = {"benchmark": name, "machine": machine(), **data}
    paths = [out / f"{name}.json", out / f"{name}.md"]
    out.mkdir(parents=True, exist_ok=True)
    # memtrain's atomic writer: a temporary name in the same folder, fsync, rename; on any failure nothing
    # is left behind. The file is made by open(), so its mode is 0o666 & ~umask: results are shared.
    atomic_write(paths[0], (json.dumps(data, indent=1) + "\n").encode())
    atomic_write(paths[1], (f"<!-- written by benchmarks/{data['machine']['command']} -->\n"
                            f"{table}\n").encode())
    if figure is not None:
        import io

        buf = io.BytesIO()
        figure.savefig(buf, format="png", dpi=110, bbox_inches="tight")
        paths.append(out / f"{name}.png")
        atomic_write(paths[-1], buf.getvalue())
    for p in paths:
        print(f"wrote {p}")
    return paths


def pyplot():
    """matplotlib's pyplot on the file-only backend, or a clear error (pip install matplotlib)."""
    try:
        import matplotlib
    except ImportError:
        raise SystemExit("benchmarks draw their figures with matplotlib: pip install matplotlib") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def training_update(loss_fn, params, lr: float = 1e-4, clip: float = 1.0):
    """One training update as the training loop does it (loss, backward, clip, AdamW step), as a
    function of no arguments for timing; `loss_fn()` returns the loss to minimise."""
    opt = torch.optim.AdamW(params, lr=lr)

    def update():
        loss = loss_fn()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, clip)
        opt.step()

    return update


def interleaved(fns: dict, repeats: int, rotate: bool = False, progress: bool = False) -> dict:
    """Seconds of each function (name -> [seconds per round]) over `repeats` rounds that each call
    every function once, so the machine's drift hits all alike; `rotate` starts each round one
    function later, `progress` prints a line after each round."""
    times = {k: [] for k in fns}
    for r in range(repeats):
        keys = list(fns)
        if rotate:
            keys = keys[r % len(keys):] + keys[:r % len(keys)]
        for k in keys:
            t0 = time.perf_counter()
            fns[k]()
            times[k].append(time.perf_counter() - t0)
        if progress:
            print(f"round {r + 1}/{repeats} done", flush=True)
    return times


def median(xs) -> float:
    return float(statistics.median(xs))


def md_table(header: list[str], rows: list[list]) -> str:
    def cell(v):
        if v is None:
            return "-"
        if isinstance(v, float):
            if v != 0 and (abs(v) < 0.01 or abs(v) >= 1e6):
                return f"{v:.3g}"
            return f"{v:.3f}" if abs(v) < 1000 else f"{v:,.0f}"
        return str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)
