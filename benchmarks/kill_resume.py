"""Fault injection at a real size: one run trained straight through, and the same run killed with
SIGKILL at random moments (and stopped once with SIGTERM) then resumed by running the same command
again, side by side in two processes. Reports whether the loss traces and final weights are identical
and how many updates were computed twice (the price of a kill: the steps since the last checkpoint).

    python benchmarks/kill_resume.py [--preset retrieval-smt] [--steps 300] [--ckpt-every 50] [--kills 3]
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from common import md_table, write_results

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from memtrain.training.checkpoint import list_checkpoints, read_checkpoint, read_run  # noqa: E402


def command(preset: str, out: Path, steps: int, every: int) -> list[str]:
    return [sys.executable, "-m", "memtrain.cli", "train", "--preset", preset, "--quiet", f"out_dir={out}",
            f"train.steps={steps}", f"train.ckpt_every={every}", "train.log_every=1", "train.threads=1"]


def rows_of(out: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k != "time"} for line in (out / "metrics.jsonl").read_text().splitlines()]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="retrieval-smt")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--ckpt-every", type=int, default=50)
    p.add_argument("--kills", type=int, default=3)
    p.add_argument("--seed", type=int, default=0, help="picks the kill moments")
    p.add_argument("--work", default="runs/bench/kill_resume")
    p.add_argument("--results", default=None)
    a = p.parse_args()
    work = ROOT / a.work
    shutil.rmtree(work, ignore_errors=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    straight = subprocess.Popen(command(a.preset, work / "straight", a.steps, a.ckpt_every), env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    faulty = work / "faulty"
    rng = random.Random(a.seed)
    events, computed = [], 0
    t_start = time.time()
    plan = sorted(rng.sample(range(5, a.steps - 5), a.kills)) + [None]
    sigs = [signal.SIGKILL] * a.kills
    sigs[len(sigs) // 2] = signal.SIGTERM if sigs else None  # one polite stop among the kills
    for i, at in enumerate(plan):
        proc = subprocess.Popen(command(a.preset, faulty, a.steps, a.ckpt_every), env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
        before = max([int(c.name[5:]) for c in list_checkpoints(faulty)] or [0])
        if at is not None:
            log = faulty / "metrics.jsonl"
            while proc.poll() is None:  # wait for the loss row of update `at`
                if log.exists() and any(f'"step": {at}, "loss"' in line for line in log.read_text().splitlines()[-3:]):
                    break
                time.sleep(0.01)
            proc.send_signal(sigs[i])
        _, err = proc.communicate()
        newest = max([int(c.name[5:]) for c in list_checkpoints(faulty)] or [0])
        done = at if at is not None else a.steps - 1
        computed += done + 1 - before
        events.append({"signal": signal.Signals(sigs[i]).name if at is not None else "none (finish)", "at_update": at,
                       "resumed_from": before, "exit": proc.returncode, "newest_checkpoint": newest,
                       "redone_next_time": max(0, done + 1 - newest) if at is not None else 0})
        print(events[-1], flush=True)
    straight.wait()
    same_trace = rows_of(faulty) == rows_of(work / "straight")
    wa, wb = read_run(faulty)[1], read_run(work / "straight")[1]
    same_weights = wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    for c in list_checkpoints(faulty):
        read_checkpoint(c)
    rows = [[e["signal"], "-" if e["at_update"] is None else e["at_update"], e["resumed_from"], e["exit"],
             e["newest_checkpoint"], e["redone_next_time"]] for e in events]
    table = md_table(["signal", "sent after update", "run started from step", "exit code", "newest checkpoint after",
                      "updates to redo"], rows)
    table += (f"\n\n{a.preset}, {a.steps} updates, a checkpoint every {a.ckpt_every}; the same command after each stop. "
              f"Loss trace identical to the straight run: **{same_trace}**; final weights identical: **{same_weights}**; "
              f"updates computed in all: {computed} for {a.steps} ({computed - a.steps} redone). "
              f"Wall-clock {time.time() - t_start:.0f} s for the faulty run (two processes side by side, one thread each).")
    write_results("kill_resume", {"preset": a.preset, "steps": a.steps, "ckpt_every": a.ckpt_every, "events": events,
                                  "same_trace": same_trace, "same_weights": same_weights, "updates_computed": computed},
                  table, None, a.results)
    print(table)


if __name__ == "__main__":
    main()
