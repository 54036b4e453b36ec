"""Seconds per training update against sequence length: SMT (every transition, R sampled transitions,
R transitions with a windowed encoder) against BPTT on the same cell and on torch's fused LSTM / GRU.

An update is forward + backward + clipping + AdamW step, as in the training loop, on one batch of
retrieval. SMT's update includes training the teacher. Variants are timed in interleaved rounds
(each round times every (variant, T) once), medians reported; a variant whose first update takes
longer than --skip-over seconds is not timed at longer lengths.

    python benchmarks/step_time.py [--lengths 64 128 256 512 1024] [--repeats 3] [--threads 1]
"""
from __future__ import annotations

import argparse
import time

import torch
from common import interleaved, md_table, median, pyplot, training_update, write_results

from memtrain.presets import preset_config
from memtrain.training.build import build

# label -> settings on top of the retrieval-smt preset (sizes: teacher width 64, 2 encoder layers,
# memory 4 x 64, smt.dec_samples=8, smt.future=32)
VARIANTS = {
    "SMT, all T transitions": [],
    "SMT, R=32": ["smt.transitions=32"],
    "SMT, R=32, Tc=64": ["smt.transitions=32", "teacher.window=64"],
    "BPTT, same mlp cell": ["method=bptt"],
    "BPTT, torch LSTM": ["method=bptt", "cell.kind=torch-lstm"],
    "BPTT, torch GRU": ["method=bptt", "cell.kind=torch-gru"],
}


def make(settings: list[str], length: int, batch: int):
    cfg = preset_config("retrieval-smt", [f'task_args={{"length": {length}}}', f"train.batch_size={batch}", *settings])
    task, _, _, m = build(cfg)
    x, y = task.sample(batch, torch.Generator().manual_seed(0))
    gen = torch.Generator().manual_seed(1)
    update = training_update(lambda: m.loss(x, y, gen)[0], m.trainable())
    t0 = time.perf_counter()
    update()  # warm-up
    return update, time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--lengths", nargs="+", type=int, default=[64, 128, 256, 512, 1024])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--skip-over", type=float, default=8.0)
    p.add_argument("--results", default=None)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.set_flush_denormal(True)  # as the training loop does (train.flush_denormal)
    torch.manual_seed(0)
    fns, dropped = {}, set()
    for T in a.lengths:
        for label, settings in VARIANTS.items():
            if label in dropped:
                continue
            fns[(label, T)], first = make(settings, T, a.batch)
            if first > a.skip_over:
                dropped.add(label)
        print(f"T={T} built", flush=True)
    times = interleaved(fns, a.repeats, progress=True)
    med = {k: median(v) for k, v in times.items()}
    cell = lambda label, T: f"{med[(label, T)]:.3f}" if (label, T) in med else "-"
    rows = [[T] + [cell(label, T) for label in VARIANTS] +
            [f"{med[('BPTT, same mlp cell', T)] / med[('SMT, R=32', T)]:.2f}" if ("SMT, R=32", T) in med else "-"]
            for T in a.lengths]
    table = md_table(["T", *VARIANTS, "BPTT mlp / SMT R=32"], rows)
    table += (f"\n\nSeconds per update (forward, backward, clip, AdamW), retrieval, batch {a.batch}, {a.threads} "
              f"thread(s), denormals flushed, medians of {a.repeats} interleaved rounds. SMT trains the teacher "
              "too; R = smt.transitions, Tc = teacher.window. '-': not timed (its first update took over "
              f"{a.skip_over:.0f} s at a shorter length).")
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for label in VARIANTS:
        Ts = [T for T in a.lengths if (label, T) in med]
        ax.plot(Ts, [med[(label, T)] for T in Ts], "o-", label=label)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("sequence length T")
    ax.set_ylabel("seconds per update")
    ax.legend(fontsize=7)
    data = [{"variant": label, "settings": VARIANTS[label], "length": T, "median_s": med[(label, T)],
             "raw_s": times[(label, T)]} for (label, T) in med]
    write_results("step_time", {"batch": a.batch, "threads": a.threads, "rows": data}, table, fig, a.results)
    print(table)


if __name__ == "__main__":
    main()
