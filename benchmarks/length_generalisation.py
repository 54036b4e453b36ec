"""Length generalisation: a run trained at length T, evaluated at T, 2T and 4T, the RNN running alone
from its empty memory next to its teacher (the paper: on stack tracking the RNN generalises to longer
sequences where its Transformer teacher does not).

    python benchmarks/length_generalisation.py [--factors 1 2 4 8] LABEL=RUN_DIR ...
"""
from __future__ import annotations

import argparse

from common import legend_right, md_table, pyplot, styles, write_results
from memtrain.runs import evaluate_run, load_run


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", help="LABEL=RUN_DIR")
    p.add_argument("--factors", nargs="+", type=int, default=[1, 2, 4, 8])
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--name", default="length_generalisation")
    p.add_argument("--results", default=None)
    a = p.parse_args()
    found, rows = {}, []
    for item in a.runs:
        label, _, path = item.rpartition("=")
        cfg, task, _, _ = load_run(path)
        T = task.length
        ev = evaluate_run(path, [f * T for f in a.factors], batch_size=a.batch)
        found[label or path] = {"run": path, "task": cfg.task, "cell": cfg.cell.kind, "method": cfg.method, "length": T,
                                "evals": [{k: v for k, v in e.items() if k != "drift"} for e in ev]}
        for e in ev:
            rows.append([label or path, cfg.task, cfg.cell.kind, T, e["length"], e.get("teacher_acc"), e["rnn_acc"]])
    table = md_table(["run", "task", "cell", "trained at T", "evaluated at", "teacher acc", "RNN alone acc"], rows)
    table += f"\n\n{a.batch} fresh sequences per length; accuracy over every supervised position."
    data = {"batch": a.batch, "runs": found}
    write_results(a.name, data, table, draw(data), a.results)
    print(table)


def draw(data: dict):
    """Accuracy against evaluation length: each run's RNN alone (solid) and teacher (dashed) in one
    colour, legend on the right."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.0, 3.6))
    for (label, r), style in zip(data["runs"].items(), styles(len(data["runs"]))):
        L = [e["length"] for e in r["evals"]]
        ax.plot(L, [e["rnn_acc"] for e in r["evals"]], "o-", color=style["color"], label=f"{label}: RNN alone")
        if r["evals"][0].get("teacher_acc") is not None:
            ax.plot(L, [e["teacher_acc"] for e in r["evals"]], "s--", color=style["color"], label=f"{label}: teacher")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("evaluation length")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1.05)
    legend_right(ax)
    return fig


if __name__ == "__main__":
    main()
