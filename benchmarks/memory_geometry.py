"""Memory geometry: is the memory space used, or has it collapsed?

For each run, on fresh sequences: the effective rank (exp of the entropy of the normalised singular
values; Roy & Vetterli 2007) of the centred memories, all timesteps pooled, and the mean pairwise
distance between the final memories of different sequences, for the teacher's memories and for the
RNN's own (running alone from its empty memory); and the accuracy of each. Used for the uniformity
ablation (smt.coef_unif = 0 vs the default) and for the paper's report that a GRU collapses under SMT.

    python benchmarks/memory_geometry.py [--name NAME] LABEL=RUN_DIR ...
"""
from __future__ import annotations

import argparse

import torch

from common import legend_right, md_table, pyplot, write_results
from memtrain.methods.evaluate import evaluate
from memtrain.methods.rollout import Rollout, rollout
from memtrain.runs import load_run


def effective_rank(X: torch.Tensor) -> float:
    """exp(entropy of s / sum(s)) for the singular values s of X (N, Z) centred: 1 when every
    memory lies on a line, Z when the variance is spread evenly over all directions."""
    s = torch.linalg.svdvals((X - X.mean(0)).double())
    p = s / s.sum().clamp_min(1e-300)
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


def mean_pairwise_distance(X: torch.Tensor) -> float:
    d = torch.cdist(X.double(), X.double())
    n = X.shape[0]
    return float(d.sum() / (n * (n - 1)))


@torch.no_grad()
def geometry(run: str, batch: int, seed: int) -> dict:
    cfg, task, teacher, cell = load_run(run)
    x, y = task.sample(batch, torch.Generator().manual_seed(seed))
    how = Rollout(cfg.rollout)  # as the run rolled out
    ev = evaluate(cell, teacher, x, y, how=how)
    out = {"run": run, "method": cfg.method, "cell": cfg.cell.kind, "task": cfg.task, "length": task.length,
           "coef_unif": cfg.smt.coef_unif if cfg.method != "bptt" else None, "rnn_acc": ev["rnn_acc"], "teacher_acc": ev.get("teacher_acc")}
    mems = {"rnn": rollout(cell, cell.init_memory(batch), x, how=how)}
    if teacher is not None:
        mems["teacher"] = teacher.encode(x)
    for who, M in mems.items():
        Z = M.shape[-1]
        out[f"{who}_eff_rank"] = effective_rank(M[:, 1:].reshape(-1, Z))
        out[f"{who}_final_distance"] = mean_pairwise_distance(M[:, -1])
    out["Z"] = Z
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", help="LABEL=RUN_DIR")
    p.add_argument("--name", default="memory_geometry")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--results", default=None)
    a = p.parse_args()
    found = {}
    for item in a.runs:
        label, _, path = item.rpartition("=")
        found[label or path] = geometry(path, a.batch, a.seed)
    rows = [[k, r["cell"], r["task"], r["length"], r["coef_unif"], r.get("teacher_eff_rank"), r["rnn_eff_rank"],
             r.get("teacher_final_distance"), r["rnn_final_distance"], r.get("teacher_acc"), r["rnn_acc"]]
            for k, r in found.items()]
    table = md_table(["run", "cell", "task", "T", "coef_unif", "teacher eff. rank", "RNN eff. rank",
                      "teacher final-memory distance", "RNN final-memory distance", "teacher acc", "RNN alone acc"], rows)
    Zs = sorted({r["Z"] for r in found.values()})
    table += (f"\n\nEffective rank of the centred memories (all timesteps of {a.batch} fresh sequences, "
              f"Z={'/'.join(map(str, Zs))}: at most Z); "
              "distance = mean Euclidean distance between the final memories of two sequences (memory tokens are "
              "RMS-normalised, so a memory of K tokens has norm sqrt(Z)).")
    data = {"batch": a.batch, "seed": a.seed, "runs": found}
    write_results(a.name, data, table, draw(data), a.results)
    print(table)


def draw(data: dict):
    """Effective rank of the teacher's and the RNN's memories, two bars per run, legend on the right."""
    found = data["runs"]
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(1.0 * len(found) + 2, 3.6))
    labels = list(found)
    xs = range(len(labels))
    ax.bar([i - 0.2 for i in xs], [found[k].get("teacher_eff_rank") or 0 for k in labels], 0.4, label="teacher")
    ax.bar([i + 0.2 for i in xs], [found[k]["rnn_eff_rank"] for k in labels], 0.4, label="RNN alone")
    ax.set_xticks(list(xs), labels, fontsize=7, rotation=30, ha="right", rotation_mode="anchor")
    ax.set_ylabel("effective rank of memories")
    legend_right(ax)
    return fig


if __name__ == "__main__":
    main()
