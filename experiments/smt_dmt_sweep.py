"""Sweep helper: one SMT run and a DMT run from it, printing the RNN-alone accuracy and drift over
training. Used to choose the library's defaults; results are recorded in EXPERIMENTS.md.

    python experiments/smt_dmt_sweep.py NAME --smt-steps 800 --dmt-steps 200 key=value ...
"""
import argparse
import json
from pathlib import Path

import torch

from memtrain.config import apply_overrides
from memtrain.presets import preset_config
from memtrain.trainer import train

p = argparse.ArgumentParser()
p.add_argument("name")
p.add_argument("--smt-steps", type=int, default=800)
p.add_argument("--dmt-steps", type=int, default=200)
p.add_argument("--dmt-lr", type=float, default=3e-4)
p.add_argument("--threads", type=int, default=1)
p.add_argument("--root", default="/tmp/exp")
p.add_argument("overrides", nargs="*")
a = p.parse_intermixed_args()
torch.set_num_threads(a.threads)
root = Path(a.root) / a.name
cfg = preset_config("retrieval-smt", a.overrides + [f"train.steps={a.smt_steps}", f"out_dir={root}/smt", "train.eval_every=100"])
s = train(cfg, progress=False)
print("SMT", json.dumps({k: v for k, v in s.items() if k != "drift"}), flush=True)
if a.dmt_steps:
    d = apply_overrides(cfg, ["method=dmt", f"train.steps={a.dmt_steps}", f"init_from={root}/smt", f"out_dir={root}/dmt",
                              f"train.lr={a.dmt_lr}", "train.warmup=0", "train.eval_every=50"])
    s = train(d, progress=False)
    print("DMT", json.dumps({k: v for k, v in s.items() if k != "drift"}), flush=True)
