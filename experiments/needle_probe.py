"""Where does the needle live, and where does the RNN lose it? For a finished retrieval run, fit a
linear probe (softmax regression, 1,024 training / 512 test sequences) that reads the needle symbol
from a memory at a few positions: right after the needle, 8 steps later, mid-sequence, near the end.
Once for the teacher's memories, once for the RNN's own rollout from m_empty. Then how much of the
teacher's memory variance the needle explains, against how far the memory moves per step.

    python experiments/needle_probe.py RUN_DIR
"""
import sys

import torch
import torch.nn.functional as F

from memtrain.methods.rollout import rollout
from memtrain.runs import load_run

torch.set_num_threads(1)
cfg, task, teacher, cell = load_run(sys.argv[1])
T, N, CHUNK = task.length, 1536, 256
x, y = task.sample(N, torch.Generator().manual_seed(5))
needle, pos = y[:, -1], (x[:, :-1] == 0).float().argmax(1) + 1  # the symbol after the first marker
with torch.no_grad():
    M = torch.cat([teacher.encode(x[i:i + CHUNK]) for i in range(0, N, CHUNK)])  # (N, S, Z)
    M_rnn = torch.cat([rollout(cell, cell.init_memory(CHUNK), x[i:i + CHUNK]) for i in range(0, N, CHUNK)])

where = {"needle+1": pos + 1, "needle+8": pos + 8, "T/2+10": torch.full_like(pos, T // 2 + 10),
         "T-48": torch.full_like(pos, T - 48), "T-1": torch.full_like(pos, T - 1), "T": torch.full_like(pos, T)}


def probe(feats: torch.Tensor) -> float:
    """Held-out accuracy of a softmax regression from the memory to the needle symbol."""
    V = task.vocab_size
    W, b = torch.zeros(feats.shape[1], V, requires_grad=True), torch.zeros(V, requires_grad=True)
    opt = torch.optim.Adam([W, b], lr=1e-2)
    for _ in range(300):
        opt.zero_grad()
        (F.cross_entropy(feats[:1024] @ W + b, needle[:1024]) + 1e-4 * W.pow(2).sum()).backward()
        opt.step()
    return ((feats[1024:] @ W + b).argmax(1) == needle[1024:]).float().mean().item()


print("| memory | " + " | ".join(where) + " |")
print("|---|" + "---|" * len(where))
for name, memories in (("teacher", M), ("RNN alone", M_rnn)):
    accs = [probe(memories[torch.arange(N), s.clamp(max=T)]) for s in where.values()]
    print(f"| {name} | " + " | ".join(f"{a:.3f}" for a in accs) + " |")

print("\n| position | needle's share of the memory's variance | variance over sequences | squared step to the next memory |")
print("|---|---|---|---|")
with torch.no_grad():
    for s in (T // 2 + 10, T - 48, T - 1):
        m = M[:, s]
        means = torch.stack([m[needle == k].mean(0) for k in needle.unique()])
        print(f"| {s} | {(means.var(0).sum() / m.var(0).sum()).item():.2f} | {m.var(0).sum().item():.0f} | "
              f"{(M[:, s + 1] - m).pow(2).sum(1).mean().item():.0f} |")
