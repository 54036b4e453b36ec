"""Does the cell hold the needle when it starts exactly on the teacher's memory? For a finished
retrieval run: start the cell at the teacher's memory one step after the needle and run it alone for
k steps; a linear probe fitted on the teacher's memories at needle+k (1,024 training sequences)
reads the needle symbol from the cell's state there (512 held-out sequences). Beside it: the cell's
error against the teacher's memory at needle+k, split into the part inside the span of the needle's
class means (the directions that tell the needle apart) and the rest, and how far apart the needle's
class means are (their variance per memory value): an error in the span near that size loses the needle.

    python experiments/needle_hold.py RUN_DIR [RUN_DIR ...]
"""
import sys

import torch
import torch.nn.functional as F

from memtrain.runs import load_run

torch.set_num_threads(1)
KS = (0, 1, 2, 4, 8, 16, 32, 64)


def probe(train: torch.Tensor, labels: torch.Tensor, test: torch.Tensor, test_labels: torch.Tensor, V: int) -> float:
    W, b = torch.zeros(train.shape[1], V, requires_grad=True), torch.zeros(V, requires_grad=True)
    opt = torch.optim.Adam([W, b], lr=1e-2)
    for _ in range(300):
        opt.zero_grad()
        (F.cross_entropy(train @ W + b, labels) + 1e-4 * W.pow(2).sum()).backward()
        opt.step()
    return ((test @ W + b).argmax(1) == test_labels).float().mean().item()


for run in sys.argv[1:]:
    cfg, task, teacher, cell = load_run(run)
    T, N = task.length, 1536
    x, y = task.sample(N, torch.Generator().manual_seed(5))
    needle = y[:, -1]
    start = (x[:, :-1] == 0).float().argmax(1) + 2  # memory index one step after the needle symbol
    keep = start + max(KS) <= T
    x, needle, start = x[keep], needle[keep], start[keep]
    n = len(x)
    with torch.no_grad():
        M = torch.cat([teacher.encode(x[i:i + 256]) for i in range(0, n, 256)])  # (n, S, Z)
        rows = torch.arange(n)
        m = M[rows, start]
        print(f"{run}: {n} sequences (needle early enough for {max(KS)} steps)\n")
        print("| steps after needle+1 | probe on teacher | probe on cell | cell error (MSE) | in the needle's span | rest | needle's spread |")
        print("|---|---|---|---|---|---|---|")
        for k in range(max(KS) + 1):
            if k > 0:
                m = cell.update(m, x[rows, start + k - 1])
            if k not in KS:
                continue
            tgt = M[rows, start + k]
            means = torch.stack([tgt[needle == c].mean(0) for c in needle.unique()])
            basis = torch.linalg.qr((means - means.mean(0)).T)[0]  # (Z, C): the needle's directions
            err = m - tgt
            inside = (err @ basis).pow(2).sum(1).mean().item() / err.shape[1]
            total = err.pow(2).mean().item()
            tr, te = slice(0, 1024), slice(1024, None)
            with torch.enable_grad():
                acc_t = probe(tgt[tr], needle[tr], tgt[te], needle[te], task.vocab_size)
                acc_c = probe(tgt[tr], needle[tr], m[te], needle[te], task.vocab_size)
            spread = (means - means.mean(0)).pow(2).sum(1).mean().item() / err.shape[1]  # between-needle variance per value
            print(f"| {k} | {acc_t:.3f} | {acc_c:.3f} | {total:.4f} | {inside:.4f} | {total - inside:.4f} | {spread:.4f} |")
        print()
