"""Where does a retrieval teacher stop being Markov? For a finished SMT run, split the cell's one-step
error on the teacher's memories, ||f(m_{t-1}, x_t) - m_t||^2, by what step t reads: the marker, the
needle symbol right after it, or any other token before / after the needle; next to how much the
teacher's memory moves at those steps. A ratio near 1 means the cell cannot compute that transition.

    python experiments/needle_steps.py RUN_DIR [RUN_DIR ...]
"""
import sys

import torch

from memtrain.runs import load_run

torch.set_num_threads(1)
for run in sys.argv[1:]:
    cfg, task, teacher, cell = load_run(run)
    x, _ = task.sample(256, torch.Generator().manual_seed(5))
    with torch.no_grad():
        M = teacher.encode(x)  # (B, S, Z)
        B, S, Z = M.shape
        pred = cell.update(M[:, :-1].reshape(-1, Z), x.reshape(-1)).view(B, S - 1, Z)
        err = (pred - M[:, 1:]).pow(2).mean(-1)  # (B, T): error of the step that reads x_t
        step = (M[:, 1:] - M[:, :-1]).pow(2).mean(-1)  # (B, T): how far the teacher's memory moves
    t = torch.arange(x.shape[1])[None]
    marker = (x == 0).float().argmax(1)[:, None]  # (B, 1): where the marker is (token 0)
    groups = {"reads the marker": t == marker, "reads the needle symbol": t == marker + 1,
              "other, before the needle": t < marker, "other, after the needle": t > marker + 1}
    print(run)
    for name, g in groups.items():
        e, s = err[g].mean().item(), step[g].mean().item()
        print(f"  {name:26s} one-step error {e:.4f}   teacher step {s:.4f}   ratio {e / max(s, 1e-12):.3f}")
