"""Serving the RNN with `memtrain.stream.Stream`: latency and resident memory per step stay flat as a
stream runs from 10 to 100,000 steps.

One process steps a stream (batch 1, token inputs, untrained weights of the text-cpu sizes: speed and
memory do not depend on the weights) through --steps steps and times every step. For each
checkpoint N (10, 100, ..., --steps) it reports the median step time over the steps just before N
(the last tenth of them, at least the last 10) and the process's current resident memory at N
(/proc/self/statm on Linux), and the ratios of the last checkpoint to the first. A stream that kept
anything per step would show both growing.

    python benchmarks/stream.py [--steps 100000] [--cell mlp] [--threads 1]
"""
from __future__ import annotations

import argparse
import os
import time

import torch

from common import md_table, median, pyplot, write_results


def resident_mib() -> float | None:
    """The process's resident set now, MiB (None where /proc is missing)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return None


def build(cell_kind: str):
    from memtrain.presets import preset_config
    from memtrain.training.build import networks
    from memtrain.training.config import resolve

    cfg = resolve(preset_config("text-cpu", ["teacher.vocab_size=256", "cell.vocab_size=256", f"cell.kind={cell_kind}"]))
    torch.manual_seed(0)
    return networks(cfg, with_teacher=False)[1]


def checkpoints(steps: int) -> list[int]:
    out, n = [], 10
    while n < steps:
        out.append(n)
        n *= 10
    return out + [steps]


def measure(cell, steps: int, seed: int = 0) -> dict:
    from memtrain.stream import Stream

    stream = Stream(cell, batch_size=1)
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, cell.cfg.vocab_size, (steps, 1), generator=gen)
    stream.step(tokens[0])  # warm up the code path once
    stream.reset()
    # everything the loop writes is allocated before it: what the process grows by is the stream's
    times, rss, marks = torch.zeros(steps, dtype=torch.float64), {}, set(checkpoints(steps))
    for n in marks:
        rss[n] = 0.0
    for i in range(steps):
        t0 = time.perf_counter()
        stream.step(tokens[i])
        times[i] = time.perf_counter() - t0
        if i + 1 in marks:
            rss[i + 1] = resident_mib()
    rows = []
    for n in sorted(marks):
        window = times[n - max(10, n // 10):n].tolist()
        rows.append({"steps": n, "median_ms": 1000 * median(window), "resident_mib": rss[n]})
    return {"rows": rows, "memory_floats": stream.memory.numel()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=100_000)
    p.add_argument("--cell", default="mlp")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--results", default=None)
    a = p.parse_args()
    if a.steps < 10:
        raise SystemExit("--steps must be >= 10")
    torch.set_num_threads(a.threads)
    res = measure(build(a.cell), a.steps)
    rows, first, last = res["rows"], res["rows"][0], res["rows"][-1]
    table = md_table(["steps so far", "median ms / step (last tenth)", "resident memory (MiB)"],
                     [[r["steps"], r["median_ms"], r["resident_mib"]] for r in rows])
    ratio_t = last["median_ms"] / first["median_ms"]
    grow = None if first["resident_mib"] is None else last["resident_mib"] - first["resident_mib"]
    table += (f"\n\nBatch 1, {a.cell} cell of the text-cpu sizes (memory {res['memory_floats']} floats), {a.threads} thread(s), "
              f"one process. Step time at {last['steps']:,} / at {first['steps']}: {ratio_t:.2f}x; resident memory grew "
              f"{'n/a' if grow is None else f'{grow:.2f} MiB'} between them.")
    result = {"cell": a.cell, "threads": a.threads, "steps": a.steps, "time_ratio_last_first": ratio_t,
              "resident_growth_mib": grow, **res}
    write_results("stream", result, table, draw(result), a.results)
    print(table)


def draw(data: dict):
    """Median step time and resident memory against steps so far, two panels."""
    plt = pyplot()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(8, 3.2))
    n = [r["steps"] for r in data["rows"]]
    a1.plot(n, [r["median_ms"] for r in data["rows"]], "o-")
    a1.set_ylabel("ms per step (median)")
    a1.set_ylim(bottom=0)
    a2.plot(n, [r["resident_mib"] or 0 for r in data["rows"]], "o-")
    a2.set_ylabel("resident memory (MiB)")
    a2.set_ylim(bottom=0)
    for ax in (a1, a2):
        ax.set_xscale("log")
        ax.set_xlabel("steps so far")
    fig.tight_layout()
    return fig


if __name__ == "__main__":
    main()
