"""Where an SMT update spends its time: torch.profiler over forward + backward of `SMT.loss`, operators
grouped by name, self time, and the share of the teacher's encoder, decoder and the cell step in
wall-clock (timed separately, forward + backward each).

    python benchmarks/profile_smt.py [--length 128] [--cell mlp] [--threads 1] [--repeats 5] [SETTING=VALUE ...]

e.g. `python benchmarks/profile_smt.py --length 256 smt.transitions=32 teacher.window=64`: the whole loss
then computes only the memories it reads; the encoder part below still times every memory.
"""
from __future__ import annotations

import argparse
import time

import torch
from common import interleaved, md_table, median, pyplot, write_results
from torch.profiler import ProfilerActivity, profile

from memtrain.presets import preset_config
from memtrain.training.build import build


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--length", type=int, default=128)
    p.add_argument("--cell", default="mlp")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--top", type=int, default=12)
    p.add_argument("--results", default=None)
    p.add_argument("settings", nargs="*", help="run settings on top of the retrieval-smt preset")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    cfg = preset_config("retrieval-smt", [f'task_args={{"length": {a.length}}}', f"cell.kind={a.cell}",
                                          f"train.batch_size={a.batch}", *a.settings])
    task, teacher, cell, method = build(cfg)
    x, y = task.sample(a.batch, torch.Generator().manual_seed(0))
    gen = torch.Generator().manual_seed(1)

    def full():
        loss, _ = method.loss(x, y, gen)
        loss.backward()

    def encoder():
        teacher.encode(x).square().mean().backward()

    def cell_step():
        with torch.no_grad():
            M = teacher.encode(x)
        Z = M.shape[-1]
        cell.update(M[:, :-1].reshape(-1, Z), x.reshape(-1)).square().mean().backward()

    parts = {"whole SMT loss": full, "teacher encoder (one pass)": encoder, "cell step (all T transitions)": cell_step}
    for f in parts.values():
        f()
    times = interleaved(parts, a.repeats)
    # the cell-step part includes a forward encoder pass without a graph: report it net of that
    with torch.no_grad():
        t0 = time.perf_counter()
        for _ in range(a.repeats):
            teacher.encode(x)
        enc_fwd = (time.perf_counter() - t0) / a.repeats
    med = {k: median(v) for k, v in times.items()}
    med["cell step (all T transitions)"] = max(med["cell step (all T transitions)"] - enc_fwd, 0.0)

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        full()
    ops = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in ops)
    top = [(e.key, e.self_cpu_time_total / 1e3, e.count, e.self_cpu_time_total / total) for e in ops[: a.top]]

    table = md_table(["part (forward + backward)", "median s", "share of the whole"],
                     [[k, v, v / med["whole SMT loss"]] for k, v in med.items()])
    table += "\n\n" + md_table(["operator", "self ms", "calls", "share of self time"], [list(t) for t in top])
    table += (f"\n\nRetrieval T={a.length}, {a.cell} cell, retrieval-smt preset sizes {' '.join(a.settings)}, batch {a.batch}, "
              f"{a.threads} thread(s); parts: medians of {a.repeats}; operators: one profiled update.")
    data = {"length": a.length, "settings": a.settings, "cell": a.cell, "batch": a.batch, "threads": a.threads,
            "parts_s": med, "parts_raw": times,
            "operators": [{"op": t[0], "self_ms": t[1], "calls": t[2], "share": t[3]} for t in top]}
    write_results("profile_smt", data, table, draw(data), a.results)
    print(table)


def draw(data: dict):
    """The operators with the most self time in one SMT update, largest on top."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.8))
    ops = data["operators"][::-1]
    ax.barh([o["op"] for o in ops], [o["self_ms"] for o in ops])
    ax.set_xlabel("self CPU ms in one SMT update")
    return fig


if __name__ == "__main__":
    main()
