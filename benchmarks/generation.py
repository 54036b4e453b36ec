"""Generation cost per token: the RNN (one cell step per token, a fixed-size memory) against the
teacher re-encoding its window of past tokens for every new token (what a Transformer without a
cache does; the teacher has no KV cache: its memory registers are recomputed from the window).

For N in 256, 1,024, 4,096 generated tokens (batch 1, greedy, untrained weights of the text-cpu
sizes: speed does not depend on the weights), each (model, N) runs in a fresh subprocess that
reports the time per token and its peak resident memory above what it held before generating
(ru_maxrss). Times are medians over --repeats subprocesses, run interleaved.

    python benchmarks/generation.py [--tokens 256 1024 4096] [--window 256] [--repeats 3]
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch

from common import legend_right, md_table, median, pyplot, write_results


def build(window: int, cell_kind: str):
    from memtrain.presets import preset_config
    from memtrain.training.build import networks
    from memtrain.training.config import resolve

    cfg = resolve(preset_config("text-cpu", ["teacher.vocab_size=256", "cell.vocab_size=256",
                                                    f"teacher.window={window}", f"cell.kind={cell_kind}"]))
    torch.manual_seed(0)
    teacher, cell = networks(cfg, with_teacher=True)
    return teacher.eval(), cell.eval()


@torch.no_grad()
def child(model: str, n: int, window: int, cell_kind: str, threads: int) -> dict:
    from memtrain.sample import generate

    torch.set_num_threads(threads)
    teacher, cell = build(window, cell_kind)
    x0 = torch.zeros(1, 1, dtype=torch.long)
    # warm up the exact code path once, then take the baseline of resident memory
    if model == "rnn":
        generate(cell, cell.init_memory(1), 2, temperature=0)
    else:
        teacher.readout(teacher.encode(x0)[:, -1])
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    if model == "rnn":
        generate(cell, cell.init_memory(1), n, temperature=0)
    else:
        ctx = x0
        for _ in range(n):
            window_tokens = ctx[:, -window:]
            nxt = teacher.readout(teacher.encode(window_tokens)[:, -1]).argmax(-1, keepdim=True)
            ctx = torch.cat([ctx, nxt], dim=1)
    dt = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"seconds": dt, "per_token_ms": 1000 * dt / n, "peak_rss_increase_kib": peak - base}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tokens", nargs="+", type=int, default=[256, 1024, 4096])
    p.add_argument("--window", type=int, default=256)
    p.add_argument("--cell", default="mlp")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--results", default=None)
    p.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        print(json.dumps(child(a.child[0], int(a.child[1]), a.window, a.cell, a.threads)))
        return
    res = {(m, n): [] for n in a.tokens for m in ("rnn", "teacher")}
    for r in range(a.repeats):
        for (m, n) in res:
            cmd = [sys.executable, __file__, "--child", m, str(n), "--window", str(a.window), "--cell", a.cell,
                   "--threads", str(a.threads)]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True)
            res[(m, n)].append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(f"repeat {r}: {m} {n} tokens: {res[(m, n)][-1]}", flush=True)
    rows, data = [], []
    for n in a.tokens:
        rnn, tea = res[("rnn", n)], res[("teacher", n)]
        rt, tt = median([x["per_token_ms"] for x in rnn]), median([x["per_token_ms"] for x in tea])
        rm, tm = median([x["peak_rss_increase_kib"] for x in rnn]), median([x["peak_rss_increase_kib"] for x in tea])
        rows.append([n, rt, tt, tt / rt, rm / 1024, tm / 1024])
        data.append({"tokens": n, "rnn_ms_per_token": rt, "teacher_ms_per_token": tt, "rnn_peak_mib": rm / 1024,
                     "teacher_peak_mib": tm / 1024, "raw": {"rnn": rnn, "teacher": tea}})
    table = md_table(["tokens generated", "RNN ms / token", f"teacher (window {a.window}) ms / token", "teacher / RNN",
                      "RNN peak memory increase (MiB)", "teacher peak memory increase (MiB)"], rows)
    table += (f"\n\nBatch 1, greedy, {a.threads} thread(s), text-cpu sizes ({a.cell} cell, memory 4 x 64; teacher width 64, "
              f"2 encoder layers), medians of {a.repeats} fresh processes each. Peak memory: growth of the process's "
              "peak resident set while generating.")
    result = {"window": a.window, "cell": a.cell, "threads": a.threads, "repeats": a.repeats, "rows": data}
    write_results("generation", result, table, draw(result), a.results)
    print(table)


def draw(data: dict):
    """ms per generated token against tokens generated, RNN and teacher; legend on the right."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    rows = data["rows"]
    tokens = [d["tokens"] for d in rows]
    ax.plot(tokens, [d["rnn_ms_per_token"] for d in rows], "o-", label="RNN (constant memory)")
    ax.plot(tokens, [d["teacher_ms_per_token"] for d in rows], "s-", label=f"teacher re-encoding\na {data['window']}-token window")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("tokens generated")
    ax.set_ylabel("ms per token")
    legend_right(ax)
    return fig


if __name__ == "__main__":
    main()
