"""Seconds per training update of SMT, DMT and BPTT at the paper's sizes: the networks and sequence
length of the `text-paper` preset (memory 16 x 256, an 8-layer encoder and 4-layer decoder, the
memory-token cell of 8 blocks, T=320, Tf=64, 32 decoded memories per sequence, batch 128) on
byte-level text shapes (vocabulary 256, every position supervised) drawn at random, so no data set is
needed. DMT fine-tunes the SMT networks (here fresh ones); BPTT unrolls the same cell over all T steps.

An update is forward, backward, clipping and AdamW, timed to the end of its device work; `--updates`
of them after one warm-up, median reported, with the peak device memory, the model FLOPs of one
update (torch's FLOP counter) and the MFU against the device's peak dense bf16 rate (common.peak_flops).
A batch that does not fit in device memory is halved until it does (the batch used is recorded).

    python benchmarks/paper_step.py --device cuda --dtype bf16 [--methods smt dmt bptt] [--updates 5]
    python benchmarks/paper_step.py --device cpu --quick --peak-tflops 1   # tiny sizes: the plumbing, in seconds
"""
from __future__ import annotations

import argparse
import gc
import json
import time
import warnings

import torch
from common import count_flops, md_table, median, peak_flops, synchronised, training_update, write_results

from memtrain.methods import METHODS
from memtrain.presets import PRESETS, preset_config
from memtrain.training.build import SettingWarning, assemble, autocast_for
from memtrain.training.config import method_settings

VOCAB = 256  # byte-level text


def paper_config(method: str, quick: bool):
    """The text-paper preset's sizes on a stand-in task of the same length (its data set is not
    needed for timing); quick: the tiny preset at T=32."""
    base = "smt" if METHODS[method].needs_init else method
    if quick:
        return preset_config("tiny", [f"method={base}", "task=retrieval", 'task_args={"length": 32}', f"teacher.vocab_size={VOCAB}"])
    paper = PRESETS["text-paper"][1]
    sizes = [s for s in paper if not s.startswith(("task=", "task_args=", "method="))]
    length = json.loads(next(s for s in paper if s.startswith("task_args="))[len("task_args="):])["length"]
    return preset_config(None, [*sizes, "task=retrieval", f'task_args={{"length": {length}}}', f"teacher.vocab_size={VOCAB}",
                                f"method={base}"])


def text_batch(batch: int, length: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Random bytes, each position's target the next byte (language modelling: every position supervised)."""
    g = torch.Generator().manual_seed(0)
    stream = torch.randint(0, VOCAB, (batch, length + 1), generator=g)
    return stream[:, :-1].to(device), stream[:, 1:].to(device)


def measure(method: str, batch: int, a) -> dict:
    torch.manual_seed(0)
    with warnings.catch_warnings():  # (about the stand-in task's recall gap: no such task here)
        warnings.simplefilter("ignore", SettingWarning)
        parts = assemble(paper_config(method, a.quick))
    m = parts.method
    if METHODS[method].needs_init:  # the method on the networks SMT would hand it
        parts.cfg.method = method
        m = METHODS[method](parts.teacher, parts.cell, method_settings(parts.cfg))
    m.to(a.device)
    x, y = text_batch(batch, parts.task.length, a.device)
    gen = torch.Generator().manual_seed(1)

    def loss():
        with autocast_for(torch.device(a.device), a.dtype):
            return m.loss(x, y, gen)[0]

    update = synchronised(training_update(loss, m.trainable(), lr=parts.cfg.train.lr), a.device)
    cuda = torch.device(a.device).type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    update()  # warm-up
    warm = time.perf_counter() - t0
    times = []
    for _ in range(a.updates):
        t0 = time.perf_counter()
        update()
        times.append(time.perf_counter() - t0)
    flops = count_flops(update)
    cfg = parts.cfg
    return {"method": method, "batch": batch, "length": parts.task.length, "median_s": median(times), "raw_s": times,
            "warmup_s": warm, "flops": flops, "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
            "params": sum(p.numel() for p in m.trainable()),
            "sizes": {"d_model": cfg.teacher.d_model, "mem_tokens": cfg.teacher.mem_tokens, "encoder_depth": cfg.teacher.encoder_depth,
                      "decoder_depth": cfg.teacher.decoder_depth, "cell": cfg.cell.kind, "cell_depth": cfg.cell.depth,
                      "future": cfg.smt.future, "dec_samples": cfg.smt.dec_samples, "vocab": VOCAB}}


def fitting(method: str, a) -> dict:
    """`measure` at --batch, halving it while the device runs out of memory."""
    batch = a.batch
    while True:
        try:
            return measure(method, batch, a)
        except torch.OutOfMemoryError:
            if batch == 1:
                raise
        batch //= 2  # (outside the handler: the failed attempt's tensors are gone)
        gc.collect()
        torch.cuda.empty_cache()
        print(f"{method}: out of device memory, trying batch {batch}", flush=True)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--methods", nargs="+", choices=["smt", "dmt", "bptt"], default=["smt", "dmt", "bptt"])
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="bf16")
    p.add_argument("--batch", type=int, default=None, help="sequences per update (default: the preset's 128; --quick: 4)")
    p.add_argument("--updates", type=int, default=5)
    p.add_argument("--peak-tflops", type=float, default=None, help="the device's peak dense bf16 TFLOP/s (default: known GPUs')")
    p.add_argument("--quick", action="store_true", help="the tiny preset at T=32 instead of the paper's sizes")
    p.add_argument("--results", default=None)
    a = p.parse_args(argv)
    a.batch = a.batch or (4 if a.quick else paper_config("smt", False).train.batch_size)
    peak, source = peak_flops(a.device, a.peak_tflops)
    rows = []
    for method in a.methods:
        r = fitting(method, a)
        r["mfu"] = r["flops"] / r["median_s"] / peak if peak else None
        rows.append(r)
        print(f"{method}: {r['median_s']:.3f} s / update at batch {r['batch']}", flush=True)
    table = md_table(["method", "batch", "T", "s / update", "sequences / s", "TFLOP / update", "MFU", "peak memory (GiB)"],
                     [[r["method"], r["batch"], r["length"], r["median_s"], r["batch"] / r["median_s"], r["flops"] / 1e12,
                       f"{r['mfu']:.1%}" if r["mfu"] is not None else None, r["peak_memory_gib"]] for r in rows])
    table += (f"\n\n{'tiny preset, T=32' if a.quick else 'text-paper sizes'}, {a.device}, {a.dtype}, random bytes; medians of "
              f"{a.updates} updates after a warm-up. MFU: model FLOPs / seconds / peak "
              f"{'-' if peak is None else f'{peak / 1e12:g} TFLOP/s'} ({source}).")
    write_results("paper_step", {"device": a.device, "dtype": a.dtype, "quick": a.quick, "peak_flops": peak,
                                 "peak_source": source, "rows": rows}, table, None, a.results)
    print(table)


if __name__ == "__main__":
    main()
