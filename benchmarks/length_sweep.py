"""Retrieval accuracy of the RNN running alone against sequence length: SMT -> DMT, BPTT given the same
training wall-clock, and the teacher, for each cell (the paper's Figure on length: BPTT degrades with
length, SMT should not).

Each (cell, length, seed) is one `memtrain.demo` run (the main job's three stages) with time
budgets instead of step counts, so every method gets the same seconds of training at every length.
Runs are kept under --root and skipped when already finished, so the sweep can be split across
processes (one per core) and resumed; `report` collects whatever has finished.

    python benchmarks/length_sweep.py run --cells mlp --lengths 32 64 128 256 --smt-seconds 300 --dmt-seconds 120
    python benchmarks/length_sweep.py report
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from common import md_table, pyplot, write_results
from memtrain.demo import compare

ROOT = "runs/bench/length_sweep"


def run_dir(root: str, cell: str, length: int, seed: int) -> Path:
    return Path(root) / f"{cell}-T{length}-s{seed}"


def run(a) -> None:
    torch.set_num_threads(a.threads)
    for cell in a.cells:
        for length in a.lengths:
            for seed in a.seeds:
                out = run_dir(a.root, cell, length, seed)
                if (out / "compare.json").is_file():
                    print(f"{out}: done already")
                    continue
                overrides = [f"cell.kind={cell}", f'task_args={{"length": {length}}}', f"train.seed={seed}",
                             f"train.threads={a.threads}", f"train.eval_every={a.eval_every}", *a.overrides]
                rows = compare(str(out), overrides, smt_seconds=a.smt_seconds, dmt_seconds=a.dmt_seconds,
                               progress=False, log=lambda m: print(f"{out.name}: {m}", flush=True))
                print(f"{out.name}: " + ", ".join(f"{r['method']} {r['rnn_acc']:.3f}" for r in rows), flush=True)


def curve(path: Path) -> list[tuple[float, float]]:
    """(training seconds, RNN-alone accuracy) at every evaluation of one stage."""
    rows = [json.loads(line) for line in open(path / "metrics.jsonl")]
    return [(r["time"], r["rnn_acc"]) for r in rows if "rnn_acc" in r]


def report(a) -> None:
    found = []
    for f in sorted(Path(a.root).glob("*/compare.json")):
        cell, t, seed = f.parent.name.split("-")
        rows = json.loads(f.read_text())["rows"]
        by = {r["method"]: r for r in rows}
        found.append({"cell": cell, "length": int(t[1:]), "seed": int(seed[1:]), "dir": str(f.parent),
                      "teacher": by["SMT -> DMT"]["teacher_acc"], "smt": by["SMT (RNN after SMT)"]["rnn_acc"],
                      "smt_dmt": by["SMT -> DMT"]["rnn_acc"], "bptt": by["BPTT"]["rnn_acc"],
                      "seconds": by["SMT -> DMT"]["seconds"], "smt_updates": by["SMT (RNN after SMT)"]["updates"],
                      "dmt_updates": by["SMT -> DMT"]["updates"] - by["SMT (RNN after SMT)"]["updates"],
                      "bptt_updates": by["BPTT"]["updates"], "drift_end": by["SMT -> DMT"]["drift_end"]})
    if not found:
        raise SystemExit(f"no finished runs under {a.root}")
    found.sort(key=lambda r: (r["cell"], r["length"], r["seed"]))
    table = md_table(["cell", "T", "seed", "teacher", "RNN after SMT", "RNN after SMT -> DMT", "RNN after BPTT",
                      "seconds each", "SMT / DMT / BPTT updates", "drift at T after DMT"],
                     [[r["cell"], r["length"], r["seed"], r["teacher"], r["smt"], r["smt_dmt"], r["bptt"], round(r["seconds"]),
                       f"{r['smt_updates']} / {r['dmt_updates']} / {r['bptt_updates']}", r["drift_end"]] for r in found])
    table += "\n\nRetrieval, vocabulary 9 (chance 0.125), accuracy of the RNN running alone from its empty memory."
    plt = pyplot()
    cells = sorted({r["cell"] for r in found})
    fig, axes = plt.subplots(1, len(cells), figsize=(5 * len(cells), 3.6), squeeze=False)
    for ax, cell in zip(axes[0], cells):
        rs = [r for r in found if r["cell"] == cell]
        for key, label, style in (("teacher", "teacher", "k--"), ("smt_dmt", "RNN: SMT -> DMT", "o-"),
                                  ("smt", "RNN: SMT only", "s:"), ("bptt", "RNN: BPTT, same seconds", "^-")):
            ax.plot([r["length"] for r in rs], [r[key] for r in rs], style, label=label)
        ax.axhline(0.125, color="grey", lw=0.8)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("sequence length T")
        ax.set_ylabel("accuracy")
        ax.set_ylim(0, 1.05)
        ax.set_title(f"retrieval, {cell} cell")
        ax.legend(fontsize=7)
    write_results("length_sweep", {"runs": found}, table, fig, a.results)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--cells", nargs="+", default=["mlp", "memtok"])
    r.add_argument("--lengths", nargs="+", type=int, default=[32, 64, 128, 256])
    r.add_argument("--seeds", nargs="+", type=int, default=[0])
    r.add_argument("--smt-seconds", type=float, default=300)
    r.add_argument("--dmt-seconds", type=float, default=120)
    r.add_argument("--eval-every", type=int, default=200)
    r.add_argument("--threads", type=int, default=1)
    r.add_argument("overrides", nargs="*", help="key=value settings on top of the retrieval-smt preset")
    for s in (r, sub.add_parser("report")):
        s.add_argument("--root", default=ROOT)
        s.add_argument("--results", default=None)
    a = p.parse_args()
    run(a) if a.cmd == "run" else report(a)


if __name__ == "__main__":
    main()
