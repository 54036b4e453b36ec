"""`memtrain plot RUN [RUN ...]`: the curves a user looks at, read from each run's `metrics.jsonl`,
in one PNG: the training loss, the held-out accuracy of the RNN alone and of the teacher, the drift
at the last step and `dyn_rel` (the cell's one-step error over the teacher's step), and for
behaviour cloning (task=control) the RNN policy's mean return in its environment, each against
updates (left) and against training seconds (right). Decisions (handover, plateaus) are dotted
vertical lines. Needs matplotlib (pip install 'memtrain[plot]').
"""
from __future__ import annotations

import bisect
import json
import math
from pathlib import Path

from .io import atomic_write

# (panel title, [(series, line style, label)], log scale)
PANELS = [
    ("training loss", [("loss", "-", "total"), ("loss_dec", "--", "decoder")], True),
    ("held-out accuracy", [("rnn_acc", "-", "RNN alone"), ("teacher_acc", "--", "teacher")], False),
    ("drift at the last step", [("drift_end", "-", "")], True),
    ("dyn_rel (one-step error / teacher's step)", [("dyn_rel", "-", "")], True),
]
RETURN_PANEL = ("mean return in the environment", [("rnn_return", "-", "RNN policy")], False)  # drawn where a run has it


def read_metrics(run_dir: str | Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise ValueError(f"run {str(run_dir)!r} has no metrics.jsonl (is it a run directory, with out_dir set?)")
    lines, rows = path.read_text().splitlines(), []
    for i, line in enumerate(lines, 1):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if i < len(lines):  # only the last line may be cut short (a run killed while writing)
                raise ValueError(f"{str(path)!r} line {i} is not JSON") from None
    return rows


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def curves(rows: list[dict]) -> dict:
    """-> {series: (steps, seconds, values)} and 'events': [(step, seconds, name)]. Training rows
    without their own time (runs before 0.4) take it from the evaluations, linearly in steps."""
    evals = [r for r in rows if "rnn_acc" in r and "event" not in r]
    anchors = [(0, 0.0)] + [(r["step"], r["time"]) for r in evals if _finite(r.get("time"))]
    steps = [a for a, _ in anchors]

    def seconds(r):
        if _finite(r.get("time")):
            return r["time"]
        i = min(max(bisect.bisect_left(steps, r["step"]), 1), len(anchors) - 1)  # the evaluations around it
        (s0, t0), (s1, t1) = anchors[i - 1], anchors[i]
        return t0 + (t1 - t0) * (r["step"] - s0) / max(s1 - s0, 1)

    out = {}

    def add(name, rs, value):
        pts = [(r["step"], seconds(r), value(r)) for r in rs]
        pts = [p for p in pts if _finite(p[2])]
        if pts:
            out[name] = tuple(list(c) for c in zip(*pts))

    train = [r for r in rows if "loss" in r and "rnn_acc" not in r and "event" not in r and "skipped" not in r]
    for key in ("loss", "loss_dec"):
        add(key, [r for r in train if key in r], lambda r, k=key: r[k])
    for key in ("rnn_acc", "teacher_acc", "dyn_rel", "rnn_return"):
        add(key, [r for r in evals if key in r], lambda r, k=key: r[k])
    add("drift_end", [r for r in evals if r.get("drift")], lambda r: r["drift"][-1])
    out["events"] = [(r["step"], seconds(r), r["event"]) for r in rows if "event" in r]
    return out


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise ValueError("memtrain plot draws with matplotlib: pip install 'memtrain[plot]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def figure(data: dict):
    """The figure of `plot_runs` for {run: curves}: one row per quantity, against updates (left) and
    training seconds (right), two columns; each row's legend outside it, right of the right panel."""
    plt = _pyplot()
    panels = PANELS + ([RETURN_PANEL] if any("rnn_return" in c for c in data.values()) else [])
    fig, axes = plt.subplots(len(panels), 2, figsize=(11, 2.6 * len(panels)), squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for (title, series, log), row in zip(panels, axes):
        for col, ax in enumerate(row):
            for i, (run, c) in enumerate(data.items()):
                colour = colours[i % len(colours)]
                for key, style, label in series:
                    if key in c:
                        name = " ".join(p for p in (Path(run).name if len(data) > 1 else "", label) if p)
                        ax.plot(c[key][col], c[key][2], style, color=colour, lw=1.2, label=name or None)
                for step, sec, _ in c["events"]:
                    ax.axvline(sec if col else step, color=colour, ls=":", lw=1)
            if log and any(line.get_ydata().size and min(line.get_ydata()) > 0 for line in ax.lines):
                ax.set_yscale("log")
            ax.set_title(title, fontsize=9)
            ax.set_xlabel("training seconds" if col else "updates", fontsize=8)
        if row[1].get_legend_handles_labels()[0]:  # the same curves on both sides: one legend, off the data
            row[1].legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, fontsize=7)
    fig.tight_layout()
    return fig


def plot_runs(runs: list[str], out: str | None = None) -> tuple[Path, dict]:
    """Draw the runs' curves into one PNG (default: RUN/curves.png for one run, curves.png for
    several); -> (its path, {run: curves}) with exactly the data drawn."""
    if not runs:
        raise ValueError("plot needs at least one run directory")
    data = {r: curves(read_metrics(r)) for r in runs}  # every run is read before anything is written
    target = Path(out) if out else (Path(runs[0]) / "curves.png" if len(runs) == 1 else Path("curves.png"))
    if target.suffix.lower() != ".png":
        raise ValueError(f"--out {str(target)!r} must be a .png file")
    save_png(figure(data), target)
    return target, data


def save_png(fig, target: Path) -> None:
    """Write `fig` to `target` (a .png) whole or not at all, and close it."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        atomic_write(target, lambda f: fig.savefig(f, dpi=90, format="png", bbox_inches="tight"))
    finally:
        _pyplot().close(fig)


def fan_figure(history, truth, paths, window: int, show: int, title: str):
    """One window's forecast fan: the last `show` steps of its context, the truth after it, and the
    median with the 50% and 80% central intervals of the sample paths (S, H)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(11, 3.6))
    past = history[-show:]
    C, H = len(past), len(truth)
    ax.plot(range(-C + 1, 1), past, color="black", lw=1, label="context")
    ahead = range(1, H + 1)
    ax.plot(ahead, truth, color="black", lw=1, ls="--", label="truth")
    for lo, hi, alpha, name in ((0.1, 0.9, 0.2, "80%"), (0.25, 0.75, 0.35, "50%")):
        ax.fill_between(ahead, paths.quantile(lo, dim=0), paths.quantile(hi, dim=0), color="C0", alpha=alpha, lw=0, label=name)
    ax.plot(ahead, paths.median(0).values, color="C0", lw=1.2, label="median")
    ax.axvline(0.5, color="grey", lw=0.8)
    ax.set_title(f"{title}: test window {window}", fontsize=9)
    ax.set_xlabel("steps from the forecast origin", fontsize=8)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7)
    fig.tight_layout()
    return fig

