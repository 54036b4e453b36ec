"""Seconds per training update against sequence length: SMT (every transition, R sampled transitions,
R transitions with a windowed encoder) against BPTT on the same cell and on torch's fused LSTM / GRU.

An update is forward + backward + clipping + AdamW step, as in the training loop, on one batch of
retrieval. SMT's update includes training the teacher. Variants are timed in interleaved rounds
(each round times every (variant, T) once), medians reported; a variant whose first update takes
longer than --skip-over seconds is not timed at longer lengths.

On a GPU (`--device cuda --dtype bf16`) each update is timed to the end of its device work, and the
model FLOPs of one update (torch's FLOP counter: matmuls and attention, forward and backward) over
its median seconds and the device's peak dense bf16 rate give the MFU (common.peak_flops; another
device: --peak-tflops).

    python benchmarks/step_time.py [--lengths 64 128 256 512 1024] [--repeats 3] [--threads 1]
    python benchmarks/step_time.py --device cuda --dtype bf16 --batch 128 --results /tmp/gpu
"""
from __future__ import annotations

import argparse
import time

import torch
from common import (count_flops, interleaved, legend_right, md_table, median, peak_flops, pyplot, synchronised,
                    training_update, write_results)

from memtrain.presets import preset_config
from memtrain.training.build import autocast_for, build

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


def make(settings: list[str], length: int, batch: int, device: str = "cpu", dtype: str = "fp32"):
    """-> (one timed update, seconds of the first (warm-up) update, the update untimed)."""
    cfg = preset_config("retrieval-smt", [f'task_args={{"length": {length}}}', f"train.batch_size={batch}", *settings])
    task, _, _, m = build(cfg)
    m.to(device)
    x, y = (t.to(device) for t in task.sample(batch, torch.Generator().manual_seed(0)))
    gen = torch.Generator().manual_seed(1)

    def loss():
        with autocast_for(torch.device(device), dtype):
            return m.loss(x, y, gen)[0]

    update = synchronised(training_update(loss, m.trainable()), device)
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
    p.add_argument("--device", default="cpu", help="cpu | cuda | ... (where networks and batches live)")
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32", help="bf16: autocast, as train.precision=bf16")
    p.add_argument("--peak-tflops", type=float, default=None, help="the device's peak dense bf16 TFLOP/s for the MFU "
                   "(default: known GPUs' figure, none on a CPU)")
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
            fns[(label, T)], first = make(settings, T, a.batch, a.device, a.dtype)
            if first > a.skip_over:
                dropped.add(label)
        print(f"T={T} built", flush=True)
    times = interleaved(fns, a.repeats, progress=True)
    med = {k: median(v) for k, v in times.items()}
    peak, peak_source = peak_flops(a.device, a.peak_tflops)
    flops = {k: count_flops(fns[k]) for k in med} if peak else {}  # (one more update each, under the counter)
    cell = lambda label, T: f"{med[(label, T)]:.3f}" if (label, T) in med else "-"
    rows = [[T] + [cell(label, T) for label in VARIANTS] +
            [f"{med[('BPTT, same mlp cell', T)] / med[('SMT, R=32', T)]:.2f}" if ("SMT, R=32", T) in med else "-"]
            for T in a.lengths]
    table = md_table(["T", *VARIANTS, "BPTT mlp / SMT R=32"], rows)
    where = "" if a.device == "cpu" and a.dtype == "fp32" else f", {a.device}, {a.dtype}"
    table += (f"\n\nSeconds per update (forward, backward, clip, AdamW), retrieval, batch {a.batch}, {a.threads} "
              f"thread(s){where}, denormals flushed, medians of {a.repeats} interleaved rounds. SMT trains the teacher "
              "too; R = smt.transitions, Tc = teacher.window. '-': not timed (its first update took over "
              f"{a.skip_over:.0f} s at a shorter length).")
    if flops:
        table += "\n\n" + md_table(["T", *VARIANTS], [[T] + [f"{flops[(label, T)] / med[(label, T)] / peak:.2%}"
                                                             if (label, T) in med else "-" for label in VARIANTS]
                                                            for T in a.lengths])
        table += f"\n\nMFU: model FLOPs per update / median seconds / peak {peak / 1e12:g} TFLOP/s ({peak_source})."
    data = [{"variant": label, "settings": VARIANTS[label], "length": T, "median_s": med[(label, T)],
             "raw_s": times[(label, T)],
             **({"flops": flops[(label, T)], "mfu": flops[(label, T)] / med[(label, T)] / peak} if flops else {})}
            for (label, T) in med]
    result = {"batch": a.batch, "threads": a.threads, "device": a.device, "dtype": a.dtype,
              "peak_flops": peak, "peak_source": peak_source, "rows": data}
    write_results("step_time", result, table, draw(result), a.results)
    print(table)


def draw(data: dict):
    """Seconds per update against T, one line per variant (from step_time.json)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for label in dict.fromkeys(r["variant"] for r in data["rows"]):
        pts = sorted((r["length"], r["median_s"]) for r in data["rows"] if r["variant"] == label)
        ax.plot(*zip(*pts), "o-", label=label)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("sequence length T")
    ax.set_ylabel("seconds per update")
    legend_right(ax)
    return fig


if __name__ == "__main__":
    main()
