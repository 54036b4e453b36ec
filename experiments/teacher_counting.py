"""Can the causal Transformer teacher count? popgym's CountRecall asks, at every step, how many cards of
the queried colour have been dealt so far. SMT's teacher stayed at 0.26-0.28 accuracy on it (RESULTS.md,
"Behaviour cloning") while BPTT on our cell reached 0.997. This trains the teacher's encoder and readout
directly (cross-entropy on each step's action from the memory after that step, no SMT), for a fixed number
of seconds, with the demonstrations' inputs as they are ("plain") or with each step's input extended by
the running sums of the dealt and queried colours so far, divided by 26 ("sums": a count given to the
encoder, which softmax attention, an average, does not form by itself), or with the plain inputs and
the teacher's own option, `teacher.running_sums=26` ("option", 0.14). Held-out accuracy every 200
updates. `per-step RUN` reads a trained SMT run's teacher instead: its accuracy on 200 held-out
episodes in blocks of 8 steps (the count grows along the episode).

    python benchmarks/clone.py collect --env count-recall --episodes 1000 --out data/bc/count-recall
    python experiments/teacher_counting.py plain 240
    python experiments/teacher_counting.py sums 240
    python experiments/teacher_counting.py option 240
    python experiments/teacher_counting.py per-step runs/bc900/count-recall/smt-dmt-s0-lr1e-3
"""
from __future__ import annotations

import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

from memtrain.models.teacher import Teacher, TeacherConfig
from memtrain.runs import load_run

VARIANTS = ("plain", "sums", "option")  # option: plain inputs, the teacher's own teacher.running_sums=26
DATA = "data/bc/count-recall"
OBS = 4  # the observation's one-hots: dealt colour (2), queried colour (2); then the previous action (27)
ACTIONS = 27


def load(path: str, variant: str) -> tuple[torch.Tensor, torch.Tensor]:
    d = np.load(path)
    x, y = torch.tensor(d["x"]), torch.tensor(d["y"]).long()
    if variant == "sums":  # (the observation's one-hots only)
        x = torch.cat([x, x[:, :, :OBS].cumsum(1) / 26.0], dim=-1)
    return x, y


def main(variant: str, seconds: float, seed: int = 0) -> None:
    if variant not in VARIANTS:
        raise SystemExit(f"variant must be one of {VARIANTS}, got {variant!r}")
    torch.set_num_threads(1)
    torch.manual_seed(seed)
    x, y = load(f"{DATA}/train.npz", variant)
    xv, yv = load(f"{DATA}/val.npz", variant)
    teacher = Teacher(TeacherConfig(vocab_size=ACTIONS, features=x.shape[-1], running_sums=26.0 if variant == "option" else None))
    opt = torch.optim.AdamW(teacher.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.01)
    t0, step = time.perf_counter(), 0
    while time.perf_counter() - t0 < seconds:
        i = torch.randint(0, x.shape[0], (32,))
        M = teacher.encode(x[i])[:, 1:]  # the memory after each step predicts that step's action
        loss = F.cross_entropy(teacher.readout(M.reshape(-1, M.shape[-1])), y[i].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
        if step % 200 == 0:
            with torch.no_grad():
                Mv = teacher.encode(xv[:128])[:, 1:]
                acc = (teacher.readout(Mv.reshape(-1, Mv.shape[-1])).argmax(-1) == yv[:128].reshape(-1)).float().mean()
            print(f"{variant} update {step} {time.perf_counter() - t0:.0f} s loss {loss.item():.3f} held-out accuracy {acc.item():.3f}",
                  flush=True)


def per_step(run: str, episodes: int = 200, block: int = 8) -> None:
    teacher = load_run(run)[2]
    if teacher is None:
        raise SystemExit(f"{run} has no teacher")
    x, y = load(f"{DATA}/val.npz", "plain")
    x, y = x[:episodes], y[:episodes]
    with torch.no_grad():
        M = teacher.encode(x)[:, 1:]
        pred = teacher.readout(M.reshape(-1, M.shape[-1])).argmax(-1).view(y.shape)
    for lo in range(0, y.shape[1], block):
        hit = (pred[:, lo:lo + block] == y[:, lo:lo + block]).float().mean().item()
        print(f"steps {lo}-{min(lo + block, y.shape[1]) - 1}: accuracy {hit:.3f}, mean count {y[:, lo:lo + block].float().mean().item():.1f}")


if __name__ == "__main__":
    if sys.argv[1] == "per-step":
        per_step(sys.argv[2])
    else:
        main(sys.argv[1], float(sys.argv[2]))
