"""What chunked register attention saves: the teacher encoder's register groups attend to the shared
tokens in chunks (`register_chunk`) instead of all in one fused call whose keys include every group's
registers. Times (a) the register attention alone, forward + backward, one call against the chosen
chunks and a few other chunk sizes, at several (T, Q) shapes, and (b) a whole SMT training update at
the retrieval-256 preset, one call against chunks, in interleaved rounds in one process. Medians.

    python benchmarks/encoder_chunks.py [--repeats 5] [--threads 1]
"""
from __future__ import annotations

import argparse

import torch

import memtrain.models.teacher as teacher_mod
from common import interleaved, md_table, median, training_update, write_results
from memtrain.presets import preset_config
from memtrain.training.build import build

SHAPES = [(32, 33), (32, 80), (64, 112), (256, 112), (256, 257), (512, 112), (1024, 112)]  # (T, Q groups)


def attention_case(T: int, Q: int, K: int = 4, B: int = 32, H: int = 4, Dh: int = 16):
    g = torch.Generator().manual_seed(0)
    leaf = [torch.randn(*s, generator=g, requires_grad=True) for s in [(B, H, Q * K, Dh)] * 3 + [(B, H, T, Dh)] * 2]
    pos = torch.randint(0, T + 1, (B, Q), generator=g)
    allowed = torch.arange(T) < pos[..., None]

    def run(chunk):
        def f():
            teacher_mod.register_attention(*leaf, allowed, K, chunk=chunk).square().sum().backward()
        return f
    auto = teacher_mod.register_chunk(Q, K, T)
    sizes = {"one call": Q, f"chosen ({auto})": auto}
    for c in (max(1, Q // 8), max(1, Q // 2)):
        if c not in (Q, auto):
            sizes[f"chunk {c}"] = c
    return {k: run(c) for k, c in sizes.items()}


def smt_update(one_call: bool):
    cfg = preset_config("retrieval-256", ["train.seed=0"])
    task, teacher, cell, method = build(cfg)
    x, y = task.sample(cfg.train.batch_size, torch.Generator().manual_seed(0))
    gen = torch.Generator().manual_seed(1)
    update = training_update(lambda: method.loss(x, y, gen)[0], list(method.trainable()))
    chosen = teacher_mod.register_chunk

    def f():
        teacher_mod.register_chunk = (lambda Q, K, T: Q) if one_call else chosen
        try:
            update()
        finally:
            teacher_mod.register_chunk = chosen
    return f


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--results", default=None)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    rows, data = [], {"threads": a.threads, "repeats": a.repeats, "attention": [], "update": {}}
    for T, Q in SHAPES:
        fns = attention_case(T, Q)
        for f in fns.values():
            f()
        med = {k: median(v) for k, v in interleaved(fns, a.repeats).items()}
        base = med["one call"]
        for k, v in med.items():
            rows.append([f"T={T}, Q={Q}", k, 1e3 * v, base / v])
        data["attention"].append({"T": T, "Q": Q, "ms": {k: 1e3 * v for k, v in med.items()}})
    fns = {"one call": smt_update(True), "chunks": smt_update(False)}
    for f in fns.values():
        f()
    med = {k: median(v) for k, v in interleaved(fns, a.repeats, rotate=True).items()}
    data["update"] = {k: v for k, v in med.items()}
    table = md_table(["shape (K=4, batch 32, 4 heads of 16)", "register attention", "median ms (fwd+bwd)", "speed-up vs one call"], rows)
    table += "\n\n" + md_table(["retrieval-256 SMT update (batch 32)", "median s", "speed-up"],
                               [[k, v, med["one call"] / v] for k, v in med.items()])
    table += f"\n\n{a.threads} thread(s), medians of {a.repeats} interleaved rounds."
    write_results("encoder_chunks", data, table, None, a.results)
    print(table)


if __name__ == "__main__":
    main()
