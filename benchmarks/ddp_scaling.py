"""Data-parallel scaling on this machine's CPU cores: the same SMT run (global batch fixed) as one
process with 1 or N threads, and as N processes under torchrun (gloo) with one thread each. Each
configuration is a fresh `memtrain train` run; their training seconds per update are compared in
interleaved rounds, medians reported. On a GPU machine pass `--device cuda` (NCCL, one GPU a process).

    python benchmarks/ddp_scaling.py [--preset retrieval-smt] [--procs 2] [--steps 30] [--repeats 3]
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

from common import md_table, median, write_results

ROOT = Path(__file__).resolve().parents[1]


def port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(procs: int, threads: int, a, out: Path) -> dict:
    settings = ["train", "--preset", a.preset, "--quiet", f"train.steps={a.steps}", f"train.threads={threads}",
                f"train.device={a.device}", "train.eval_every=100000", "train.ckpt_every=null", f"out_dir={out}",
                *a.overrides]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(ROOT)}
    if procs == 1:
        cmd = [sys.executable, "-m", "memtrain.cli", *settings]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={procs}", f"--master_port={port()}",
               "-m", "memtrain.cli", *settings]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(r.stderr[-2000:])
    s = json.loads(r.stdout)
    return {"seconds_per_update": s["train_seconds"] / s["steps"], "steps": s["steps"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="retrieval-smt")
    p.add_argument("--procs", type=int, default=2)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--results", default=None)
    p.add_argument("overrides", nargs="*", help="extra settings, e.g. train.batch_size=64")
    a = p.parse_args()
    n = a.procs
    configs = {"1 process x 1 thread": (1, 1), f"1 process x {n} threads": (1, n), f"{n} processes x 1 thread": (n, 1)}
    if a.device == "cuda":
        configs = {"1 process (1 GPU)": (1, 1), f"{n} processes ({n} GPUs)": (n, 1)}
    times = {k: [] for k in configs}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(a.repeats):
            for k, (procs, threads) in configs.items():
                times[k].append(run(procs, threads, a, Path(tmp) / f"{r}-{procs}-{threads}")["seconds_per_update"])
            print(f"round {r + 1}/{a.repeats}: " + ", ".join(f"{k} {v[-1]:.3f} s" for k, v in times.items()), flush=True)
    base = median(times[next(iter(configs))])
    rows = [[k, median(v), base / median(v)] for k, v in times.items()]
    table = md_table(["configuration", "s / update (median)", "speed-up vs the first row"], rows)
    table += (f"\n\n{a.preset}, global batch as in the preset, {a.steps} updates a run, {a.repeats} interleaved rounds, "
              f"device {a.device}. Seconds are the run's own training time (no start-up).")
    write_results("ddp_scaling", {"preset": a.preset, "procs": n, "device": a.device, "times": times}, table, None, a.results)
    print(table)


if __name__ == "__main__":
    main()
