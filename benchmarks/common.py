"""What every benchmark shares: where results go, how they are written, and the machine they ran on.

Each benchmark writes three files to benchmarks/results/ (or --results): NAME.json (every measured
figure and the settings), NAME.md (a markdown table) and NAME.png (a figure). Files are written to a
temporary name and renamed, so an interrupted benchmark never leaves half a result.

Figures are drawn by each benchmark's `draw(data)` from exactly what its NAME.json holds, so
`benchmarks/replot.py` redraws them without measuring anything; they keep to at most four panels a
row (`grid`) and put legends outside the panels (`legend_right`, `legend_below`), never over the data.
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
    for p in paths:
        print(f"wrote {p}")
    if figure is not None:
        paths.append(write_png(name, figure, out))
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


def write_png(name: str, figure, results: str | Path | None = None) -> Path:
    """NAME.png alone (a figure redrawn from its NAME.json: benchmarks/replot.py)."""
    import io

    buf = io.BytesIO()
    figure.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    path = (Path(results) if results else RESULTS) / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, buf.getvalue())
    print(f"wrote {path}")
    return path


def grid(n: int, size: tuple[float, float] = (4.2, 3.2), ncols: int = 4):
    """A figure of n panels, at most `ncols` a row (a long strip of panels cannot be read):
    -> (figure, list of n axes)."""
    plt = pyplot()
    cols = max(1, min(n, ncols))
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(size[0] * cols, size[1] * rows), squeeze=False)
    axes = list(axes.flat)
    for ax in axes[n:]:
        ax.remove()
    return fig, axes[:n]


def legend_right(ax, fontsize: float = 7, **kw):
    """The panel's legend outside it, on its right, where it cannot cover a curve or a bar."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, fontsize=fontsize, **kw)


def legend_under(ax, fontsize: float = 7, ncol: int = 1):
    """The panel's legend under it (below its x label): for panels side by side with their own curves."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), fontsize=fontsize, ncol=ncol, frameon=False)


def legend_below(fig, axes, ncol: int = 3, fontsize: float = 7):
    """One legend for all panels of a `grid` (each label once, in the order first drawn): in the empty
    cells of its last row where there are two or more, else below the panels."""
    seen = {}
    for ax in axes:
        for h, label in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(label, h)
    fig.tight_layout()
    if not seen:
        return
    gs = axes[0].get_subplotspec().get_gridspec()
    rows, cols = gs.get_geometry()
    free = rows * cols - len(axes)
    if free >= 2:
        box = gs[rows - 1, cols - free:].get_position(fig)
        where = dict(loc="upper left", bbox_to_anchor=(box.x0, box.y1), ncol=free)
    else:
        where = dict(loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=min(ncol, len(seen)))
    fig.legend(list(seen.values()), list(seen), fontsize=fontsize, frameon=False, **where)


def styles(n: int) -> list[dict]:
    """n distinguishable line styles: the ten tab10 colours, then the same dashed, then dotted."""
    colours = pyplot().get_cmap("tab10").colors
    return [{"color": colours[i % 10], "ls": ("-", "--", ":")[(i // 10) % 3]} for i in range(n)]


# dense bf16 tensor-core peaks (FLOP/s) by device name, for model FLOPs utilisation (MFU)
PEAK_BF16 = {"H200": 989e12, "H100 PCIe": 756e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12}


def peak_flops(device, given_tflops: float | None = None) -> tuple[float | None, str]:
    """The device's peak dense bf16 FLOP/s and where that figure comes from (None: unknown, no MFU)."""
    if given_tflops is not None:
        return given_tflops * 1e12, "--peak-tflops"
    if torch.device(device).type != "cuda":
        return None, "unknown for this device"
    name = torch.cuda.get_device_name(torch.device(device))
    for key, peak in PEAK_BF16.items():  # (the more specific names first)
        if key in name:
            return peak, f"table: {key} dense bf16"
    return None, f"unknown for {name}: pass --peak-tflops"


def count_flops(fn) -> int:
    """FLOPs of one call of fn() (matmuls and attention, forward and backward: torch's FLOP counter)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def synchronised(fn, device):
    """fn followed by waiting for the device, so that wall-clock timing counts the device's work."""
    if torch.device(device).type != "cuda":
        return fn

    def call():
        fn()
        torch.cuda.synchronize()

    return call


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


def add_lane_args(parser, root: str, seconds: float) -> None:
    """The arguments of a `run` that trains each method as one ordinary run for the same seconds
    (`train_for_seconds`): --seeds, --seconds, --eval-every, --threads, --root, --tag and overrides."""
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--seconds", type=float, default=seconds)
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--root", default=root)
    parser.add_argument("--tag", default="")
    parser.add_argument("overrides", nargs="*", help="key=value settings for every run")


def train_for_seconds(settings: list[str], out: Path, seed: int, a) -> dict:
    """One ordinary run of `settings` in `out`, for a.seconds of training at a.threads threads (any
    number of updates), evaluated every a.eval_every updates on every held-out row, a.overrides last;
    -> its summary."""
    from memtrain.presets import preset_config
    from memtrain.training.trainer import train

    return train(preset_config(None, [*settings, f"train.seed={seed}", f"train.threads={a.threads}", "train.steps=100000000",
                                      f"train.time_limit={a.seconds}", f"train.eval_every={a.eval_every}",
                                      "train.eval_rows=all", f"out_dir={out}", *a.overrides]), progress=False)
