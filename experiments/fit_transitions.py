"""Markov probe: freeze a finished run's teacher and fit a fresh cell to its one-step transitions
(m_s, x_s) -> m_{s+1} on fresh sequences. If no cell gets the error well below the memory's own
step change, the teacher's memories are not predictable from the previous memory and the input.

    python experiments/fit_transitions.py RUN_DIR --steps 600 --lr 3e-3 cell.kind=mlp cell.hidden_mult=8
"""
import argparse
import time

import torch
import torch.nn.functional as F

from memtrain.models.cells import CellConfig, build_cell
from memtrain.fields import from_dict, parse_value
from memtrain.runs import load_run

p = argparse.ArgumentParser()
p.add_argument("run")
p.add_argument("--steps", type=int, default=600)
p.add_argument("--lr", type=float, default=1e-3)
p.add_argument("--batch", type=int, default=32)
p.add_argument("--threads", type=int, default=1)
p.add_argument("overrides", nargs="*", help="cell.key=value")
a = p.parse_intermixed_args()
torch.set_num_threads(a.threads)
cfg, task, teacher, _ = load_run(a.run)
cell_cfg = {**cfg.cell.__dict__}
for item in a.overrides:
    k, v = item.split("=", 1)
    cell_cfg[k.removeprefix("cell.")] = parse_value(v)
cell = build_cell(from_dict(CellConfig, cell_cfg))
opt = torch.optim.AdamW(cell.parameters(), lr=a.lr, betas=(0.9, 0.95), weight_decay=0.0)
gen = torch.Generator().manual_seed(0)
x_ev, _ = task.sample(256, torch.Generator().manual_seed(99))
with torch.no_grad():
    M_ev = teacher.encode(x_ev)
    change = (M_ev[:, 1:] - M_ev[:, :-1]).pow(2).mean().item()
Z = M_ev.shape[-1]
t0 = time.time()
for step in range(a.steps + 1):
    if step % max(1, a.steps // 6) == 0:
        with torch.no_grad():
            err = (cell.update(M_ev[:, :-1].reshape(-1, Z), x_ev.reshape(-1)).view_as(M_ev[:, 1:]) - M_ev[:, 1:]).pow(2)
        per_s = err.mean((0, 2))
        print(f"step {step:5d} t={time.time() - t0:5.0f}s one-step err {err.mean().item():.4f} "
              f"(max over s {per_s.max().item():.4f}); memory step change {change:.4f}", flush=True)
    x, _ = task.sample(a.batch, gen)
    with torch.no_grad():
        M = teacher.encode(x)
    loss = F.mse_loss(cell.update(M[:, :-1].reshape(-1, Z), x.reshape(-1)), M[:, 1:].reshape(-1, Z))
    opt.zero_grad()
    loss.backward()
    opt.step()
