"""Per-position diagnosis of a finished SMT/DMT run: how much the teacher memory moves at each
step, the cell's one-step error on teacher memories, and the cell's error when it runs alone.

    python experiments/diagnose_positions.py RUN_DIR [--batch 256]
"""
import argparse

import torch

from memtrain.methods.rollout import rollout
from memtrain.runs import load_run

p = argparse.ArgumentParser()
p.add_argument("run")
p.add_argument("--batch", type=int, default=256)
a = p.parse_args()
cfg, task, teacher, cell = load_run(a.run)
x, _ = task.sample(a.batch, torch.Generator().manual_seed(5))
with torch.no_grad():
    M = teacher.encode(x)  # (B, S, Z)
    B, S, Z = M.shape
    change = (M[:, 1:] - M[:, :-1]).pow(2).mean((0, 2))
    one = (cell.update(M[:, :-1].reshape(-1, Z), x.reshape(-1)).view(B, S - 1, Z) - M[:, 1:]).pow(2).mean((0, 2))
    alone = (rollout(cell, cell.init_memory(B), x) - M).pow(2).mean((0, 2))[1:]
print("s  memory_change  one_step_error  drift_alone")
for s in range(S - 1):
    print(f"{s + 1:3d}  {change[s]:.4f}  {one[s]:.4f}  {alone[s]:.4f}")
