"""Does `train.compile=true` help? Time per training update with the cell step and the teacher encoder
compiled by torch.compile (inductor) against eager PyTorch, for SMT, DMT and BPTT, same sizes.

Only the two functions are compiled (`memtrain.training.build.compile_networks`); loops over time stay in
Python. Compilation happens in the untimed warm-up (its seconds are reported separately), then the
eager and compiled updates are timed in interleaved rounds on the same batch; medians and ratios.

    python benchmarks/compile_speed.py [--length 64] [--cells mlp memtok] [--repeats 7] [--threads 1]
"""
from __future__ import annotations

import argparse
import time

import torch

from common import interleaved, md_table, median, pyplot, training_update, write_results
from memtrain.methods.dmt import DMT
from memtrain.presets import preset_config
from memtrain.training.build import build, compile_networks


def make(method: str, cell: str, length: int, batch: int, compiled: bool):
    over = [f"method={method}", f'task_args={{"length": {length}}}', f"cell.kind={cell}", f"train.batch_size={batch}"]
    if method == "dmt":  # build() wants a finished SMT run for DMT; an untrained teacher times the same
        over[0] = "method=smt"
    cfg = preset_config("retrieval-smt", over)
    task, teacher, c, m = build(cfg)
    if method == "dmt":
        m = DMT(teacher, c, cfg.dmt)
    torch.manual_seed(0)
    if compiled:
        compile_networks(c, teacher if method != "bptt" else None)
    x, y = task.sample(batch, torch.Generator().manual_seed(0))
    gen = torch.Generator().manual_seed(1)
    update = training_update(lambda: m.loss(x, y, gen)[0], m.trainable())

    t0 = time.perf_counter()
    for _ in range(3):  # warm-up; compiles (and recompiles for a second shape) here
        update()
    return update, time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--length", type=int, default=64)
    p.add_argument("--cells", nargs="+", default=["mlp", "memtok"])
    p.add_argument("--methods", nargs="+", default=["smt", "dmt", "bptt"])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--results", default=None)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    fns, warm = {}, {}
    for cell in a.cells:
        for method in a.methods:
            for compiled in (False, True):
                fns[(cell, method, compiled)], warm[(cell, method, compiled)] = make(method, cell, a.length, a.batch, compiled)
                print(f"ready: {cell} {method} {'compiled' if compiled else 'eager'} "
                      f"(warm-up {warm[(cell, method, compiled)]:.1f} s)", flush=True)
    times = interleaved(fns, a.repeats, rotate=True, progress=True)
    rows, data = [], []
    for cell in a.cells:
        for method in a.methods:
            e, c = median(times[(cell, method, False)]), median(times[(cell, method, True)])
            rows.append([cell, method, e, c, e / c, warm[(cell, method, True)] - warm[(cell, method, False)]])
            data.append({"cell": cell, "method": method, "eager_s": e, "compiled_s": c,
                         "eager_raw": times[(cell, method, False)], "compiled_raw": times[(cell, method, True)],
                         "extra_warmup_s": warm[(cell, method, True)] - warm[(cell, method, False)]})
    table = md_table(["cell", "method", "eager s / update", "compiled s / update", "speed-up", "compile time (s)"], rows)
    table += (f"\n\nRetrieval T={a.length}, retrieval-smt preset sizes, batch {a.batch}, {a.threads} thread(s), "
              f"device cpu, medians of {a.repeats} interleaved rounds. Speed-up = eager / compiled; compile time = "
              "extra seconds of the compiled warm-up (3 updates).")
    result = {"length": a.length, "batch": a.batch, "threads": a.threads, "rows": data}
    write_results("compile_speed", result, table, draw(result), a.results)
    print(table)


def draw(data: dict):
    """Eager over compiled time per (cell, method): above the grey line, compiling paid."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.4))
    rows = data["rows"]
    ax.bar([f"{d['cell']}\n{d['method']}" for d in rows], [d["eager_s"] / d["compiled_s"] for d in rows])
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.set_ylabel("eager time / compiled time")
    return fig


if __name__ == "__main__":
    main()
