"""Time per training update against sequence length, SMT vs BPTT, same cell, same batch.

An update is forward + backward + clipping + AdamW step, as in the training loop. SMT encodes every
prefix in one parallel pass and steps the cell once per transition in one batched call, so its cost
grows with T only through the (parallel) work; BPTT steps the cell T times in sequence. Methods are
timed in interleaved rounds (each round times every (method, T) once), medians reported.

    python benchmarks/step_time.py [--lengths 32 64 128 256 512] [--repeats 5] [--threads 1] [--cell mlp]
"""
from __future__ import annotations

import argparse
import time

import torch

from common import md_table, median, pyplot, training_update, write_results
from memtrain.presets import preset_config
from memtrain.training.build import build


def make(method: str, length: int, cell: str, batch: int):
    cfg = preset_config("retrieval-smt", [f"method={method}", f'task_args={{"length": {length}}}', f"cell.kind={cell}",
                                          f"train.batch_size={batch}"])
    task, _, _, m = build(cfg)
    x, y = task.sample(batch, torch.Generator().manual_seed(0))
    gen = torch.Generator().manual_seed(1)
    update = training_update(lambda: m.loss(x, y, gen)[0], m.trainable())
    update()  # warm-up
    return update


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--lengths", nargs="+", type=int, default=[32, 64, 128, 256, 512])
    p.add_argument("--cell", default="mlp")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--results", default=None)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    fns = {(m, T): make(m, T, a.cell, a.batch) for T in a.lengths for m in ("smt", "bptt")}
    times = {k: [] for k in fns}
    for r in range(a.repeats):
        for k, f in fns.items():
            t0 = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t0)
        print(f"round {r + 1}/{a.repeats} done", flush=True)
    rows, data = [], []
    for T in a.lengths:
        s, b = median(times[("smt", T)]), median(times[("bptt", T)])
        rows.append([T, s, b, b / s, a.batch * T / s])
        data.append({"length": T, "smt_s": s, "bptt_s": b, "smt_raw": times[("smt", T)], "bptt_raw": times[("bptt", T)]})
    table = md_table(["T", "SMT s / update", "BPTT s / update", "BPTT / SMT", "SMT transitions / s"], rows)
    table += (f"\n\nRetrieval, {a.cell} cell, retrieval-smt preset sizes (teacher width 64, 2 encoder layers, memory "
              f"4 x 64, smt.dec_samples=8, future 32), batch {a.batch}, {a.threads} thread(s), medians of {a.repeats} "
              "interleaved rounds. SMT includes training the teacher; BPTT trains the cell alone.")
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    ax.plot(a.lengths, [d["smt_s"] for d in data], "o-", label="SMT (teacher + cell, all T transitions)")
    ax.plot(a.lengths, [d["bptt_s"] for d in data], "^-", label="BPTT (cell unrolled T steps)")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("sequence length T")
    ax.set_ylabel("seconds per update")
    ax.legend(fontsize=7)
    write_results("step_time", {"cell": a.cell, "batch": a.batch, "threads": a.threads, "rows": data}, table, fig, a.results)
    print(table)


if __name__ == "__main__":
    main()
