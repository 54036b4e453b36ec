"""Behaviour cloning under partial observability at an equal CPU budget: SMT -> DMT against BPTT on the
same cell and torch's fused LSTM by BPTT, each trained on the same seeded expert demonstrations of a
popgym memory environment (`memtrain.data.control`) and then run in the environment itself, one
memory per episode, on seeded episodes that none of them saw. Each method is one ordinary run with
the same `train.time_limit` (one thread each, kept under --root and skipped when finished, so lanes
can run side by side).

    python benchmarks/clone.py collect --env count-recall --episodes 1000 --out data/bc/count-recall
    python benchmarks/clone.py run --env count-recall --methods smt-dmt bptt --seconds 300
    python benchmarks/clone.py run --env count-recall --methods bptt-lstm --seconds 300
    python benchmarks/clone.py report --env count-recall

`collect` writes train.npz / val.npz (ragged-ready: right-padded x, y and lengths) and expert.json
(the expert's mean return on the same episodes). `run` trains with task=control, so every evaluation
also logs the policy's return on --curve-episodes seeded episodes (`memtrain plot runs/bc/ENV/*`
draws the return curves). `report` gives each policy's mean return over
--episodes seeded episodes (seeds from 10,000) and its ratio to the expert's there.
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import numpy as np

from common import add_lane_args, md_table, train_for_seconds, write_results

from memtrain.data.control import ENVS, collect, demo_rows, policy_returns
from memtrain.runs import load_run

METHODS = {  # label -> settings on top of the defaults (the token-sequence recipe; actions are tokens)
    "smt-dmt": ["method=smt-dmt"],
    "bptt": ["method=bptt"],
    "bptt-lstm": ["method=bptt", "cell.kind=torch-lstm"],
}
EVAL_SEED = 10_000  # the episodes a policy is scored on (the demonstrations use seeds 0 ...)


def write_demos(env: str, episodes: int, val: int, out: Path) -> dict:
    """Seeded expert demonstrations of `env`: `episodes` for training (seeds 0 ...) and `val` more for
    evaluation (the seeds after them) -> what expert.json says."""
    out.mkdir(parents=True, exist_ok=True)
    train, held_out, returns = demo_rows(env, episodes, val)
    for name, (x, y, lengths) in (("train", train), ("val", held_out)):
        np.savez(out / f"{name}.npz", x=x, y=y, lengths=lengths)
    info = {"env": env, "episodes": episodes, "val": val, "demo_return": statistics.fmean(returns),
            "steps": int(train[2].sum())}
    (out / "expert.json").write_text(json.dumps(info, indent=1))
    return info


def collect_cmd(a) -> None:
    info = write_demos(a.env, a.episodes, a.val, Path(a.out))
    print(f"wrote {a.out}: {info['episodes']} + {info['val']} episodes, {info['steps']} training steps, "
          f"expert return {info['demo_return']:.3f}")


def run(a) -> None:
    data = Path(a.data or f"data/bc/{a.env}")
    for seed in a.seeds:
        for name in a.methods:
            out = Path(a.root) / a.env / f"{name}-s{seed}{a.tag}"
            args = {"env": a.env, "path": str(data / "train.npz"), "val_path": str(data / "val.npz"), "episodes": a.curve_episodes}
            s = train_for_seconds([*METHODS[name], "task=control", f"task_args={json.dumps(args)}"], out, seed, a)
            print(f"{out.name}: {s['steps']} updates, {s['train_seconds']:.0f} s, {held_out(s)}", flush=True)


def held_out_score(summary: dict) -> tuple[str, float | None]:
    """A run's held-out score: action accuracy, or (continuous actions: no accuracy) the loss per action value."""
    if summary.get("rnn_acc") is not None:
        return "accuracy", summary["rnn_acc"]
    return "loss per action value", summary.get("rnn_ce")


def held_out(summary: dict) -> str:
    name, value = held_out_score(summary)
    return f"held-out {name} {value:.3f}"


def report(a) -> None:
    expert = collect(a.env, a.episodes, seed=EVAL_SEED)[2]  # the expert on the same episodes
    base = statistics.fmean(expert)
    rows = [["expert (full state)", None, None, base, 1.0]]
    data = {"env": a.env, "episodes": a.episodes, "seed": EVAL_SEED, "expert": base, "runs": {}}
    for d in sorted((Path(a.root) / a.env).iterdir()):
        if not (d / "run.json").is_file():
            continue
        summary = json.loads((d / "run.json").read_text()).get("summary") or {}
        _, _, _, cell = load_run(str(d))
        got = policy_returns(cell, a.env, a.episodes, seed=EVAL_SEED)
        mean = statistics.fmean(got)
        data["runs"][d.name] = {"returns": got, "mean": mean, "ratio": mean / base, "rnn_acc": summary.get("rnn_acc"),
                                "rnn_ce": summary.get("rnn_ce"), "steps": summary.get("steps"),
                                "train_seconds": summary.get("train_seconds")}
        rows.append([d.name, summary.get("train_seconds"), held_out_score(summary)[1], mean, mean / base])
    table = md_table(["policy", "seconds", "held-out action accuracy (continuous: NLL)", "mean return", "of the expert's"], rows)
    print(table)
    write_results(f"clone-{a.env}", data, table, results=a.results)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("collect")
    c.add_argument("--env", choices=sorted(ENVS), required=True)
    c.add_argument("--episodes", type=int, default=1000)
    c.add_argument("--val", type=int, default=200)
    c.add_argument("--out", required=True)
    r = sub.add_parser("run")
    r.add_argument("--env", choices=sorted(ENVS), required=True)
    r.add_argument("--methods", nargs="+", choices=sorted(METHODS), default=["smt-dmt", "bptt"])
    r.add_argument("--data", default=None, help="collect's folder (default: data/bc/ENV)")
    r.add_argument("--curve-episodes", type=int, default=20,
                   help="episodes the policy is run in the environment at every evaluation (the return curve; 0: none)")
    add_lane_args(r, root="runs/bc", seconds=300)
    q = sub.add_parser("report")
    q.add_argument("--env", choices=sorted(ENVS), required=True)
    q.add_argument("--root", default="runs/bc")
    q.add_argument("--episodes", type=int, default=100)
    q.add_argument("--results", default=None)
    a = p.parse_args()
    {"collect": collect_cmd, "run": run, "report": report}[a.cmd](a)


if __name__ == "__main__":
    main()
