"""The contraction figures of training runs, one row per evaluation: the teacher's and the RNN's
held-out accuracy, the one-step error (dyn_rel), the cell's k-step error from teacher memories at
k = 1, 8, 64 and T (`kstep@k`, methods/evaluate.py), its growth per step over the first 8 steps, the
median top singular value of its Jacobian on teacher memories, and the drift of the RNN alone at T.
SMT -> DMT's decisions (handover, end) are printed where they happened. Reads metrics.jsonl only.

    python experiments/contraction.py runs/ec/smt-dmt-T256-s0-own8 [more run dirs] [--last]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]


def fmt(v, spec=".3f") -> str:
    return "-" if v is None else format(v, spec)


def table(run: Path, last: bool = False) -> str:
    evals = [r for r in rows(run) if "rnn_acc" in r or "event" in r]
    T = max((int(k.split("@")[1]) for r in evals for k in r if k.startswith("kstep@")), default=None)
    head = f"| update | s | teacher | RNN alone | dyn_rel | k=1 | k=8 | k=64 | k={T} | growth/step | jac | drift@{T} |"
    lines = [run.name, "", head, "|" + "---|" * (head.count("|") - 1)]
    for r in evals:
        if "event" in r:
            if not last:
                lines.append(f"| {r['step']} | {r['event']}: {r['why'][:90]} |")
            continue
        lines.append("| " + " | ".join([str(r["step"]), f"{r['time']:.0f}", fmt(r.get("teacher_acc")), fmt(r.get("rnn_acc")),
                                         fmt(r.get("dyn_rel"), ".4f"), fmt(r.get("kstep@1"), ".4f"), fmt(r.get("kstep@8"), ".4f"),
                                         fmt(r.get("kstep@64"), ".3f"), fmt(r.get(f"kstep@{T}"), ".3f"), fmt(r.get("kstep_growth"), ".3f"),
                                         fmt(r.get("jac_norm"), ".3f"), fmt(r.get(f"drift@{T}"), ".3f")]) + " |")
    if last:
        lines = lines[:4] + [lines[-1]]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--last", action="store_true", help="only each run's last evaluation")
    a = p.parse_args()
    for run in a.runs:
        print(table(run, a.last), end="\n\n")


if __name__ == "__main__":
    main()
