"""Drift over a long rollout, before and after DMT: delta_t = MSE(m^_t, m_t) between the RNN running
alone from its empty memory and the teacher's memory after the same inputs, for t up to several
times the training length, and the accuracy of each at that length.

Give pairs LABEL=RUN_DIR; by default the main job's runs (`memtrain demo`: runs/demo/smt and
runs/demo/dmt, trained at T=32).

    python benchmarks/drift.py [--length 256] [--batch 128] [SMT=runs/demo/smt DMT=runs/demo/dmt ...]
"""
from __future__ import annotations

import argparse

import torch

from common import legend_right, md_table, pyplot, write_results
from memtrain.methods.evaluate import evaluate
from memtrain.methods.rollout import Rollout
from memtrain.runs import load_run
from memtrain.data.tasks import build_task


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="*", default=["after SMT=runs/demo/smt", "after SMT -> DMT=runs/demo/dmt"])
    p.add_argument("--length", type=int, default=256)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--results", default=None)
    a = p.parse_args()
    found, rows = {}, []
    for item in a.runs:
        label, _, path = item.rpartition("=")
        cfg, task, teacher, cell = load_run(path)
        if teacher is None:
            raise SystemExit(f"{path} has no teacher ({cfg.method} run): drift needs one")
        long = build_task(cfg.task, **{**cfg.task_args, "length": a.length})
        x, y = long.sample(a.batch, torch.Generator().manual_seed(a.seed))
        ev = evaluate(cell, teacher, x, y, how=Rollout(cfg.rollout))
        T0 = task.length
        d = ev["drift"]
        found[label or path] = {"run": path, "train_length": T0, "drift": d, "spread": ev["spread"],
                                "rnn_acc": ev["rnn_acc"], "teacher_acc": ev["teacher_acc"]}
        marks = [t for t in (T0, 2 * T0, 4 * T0, 8 * T0) if t <= a.length]
        rows.append([label or path, T0, *[d[t] for t in marks] + [None] * (4 - len(marks)), ev["spread"],
                     ev["rnn_acc"], ev["teacher_acc"]])
    table = md_table(["model", "trained at T", "drift at T", "at 2T", "at 4T", "at 8T", "teacher memory spread",
                      f"RNN alone acc at {a.length}", f"teacher acc at {a.length}"], rows)
    table += (f"\n\nRetrieval at length {a.length}, {a.batch} sequences. Drift = mean squared difference between the "
              "RNN's memory and the teacher's (RMS-normalised tokens); spread = variance of the teacher's final memory "
              "across sequences (the scale at which drift means the memory is lost).")
    data = {"length": a.length, "batch": a.batch, "seed": a.seed, "runs": found}
    write_results("drift", data, table, draw(data), a.results)
    print(table)


def draw(data: dict):
    """Drift against timestep, one line per model, dashed verticals at the training lengths."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.8))
    for label, r in data["runs"].items():
        ax.plot(range(len(r["drift"])), [max(v, 1e-8) for v in r["drift"]], label=label)
    for T0 in sorted({r["train_length"] for r in data["runs"].values()}):
        ax.axvline(T0, color="grey", lw=0.8, ls="--")
    ax.set_yscale("log")
    ax.set_xlabel("timestep t (dashed: training lengths)")
    ax.set_ylabel("drift MSE(m^_t, m_t)")
    ax.set_title("RNN running alone vs its teacher")
    legend_right(ax)
    return fig


if __name__ == "__main__":
    main()
