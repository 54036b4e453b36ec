"""SMT throughput: memory-transition labels per second, authors' `forward_smt` vs memtrain's `SMT`.

One "update" = forward + backward + gradient clipping + AdamW step, as in each codebase's training loop
(the authors clip the RNN and the teacher separately, memtrain clips all trainable parameters at once).
A "label" is one supervised memory transition (m_t, x_{t+1}) -> m_{t+1} in the dynamics loss:

- authors: `forward_smt` trains ONE transition per sequence (encode the context x_0..x_{Tc-1} and the
  shifted context x_1..x_Tc, one RNN step), so labels/update = B. Their sequence is T = Tc + Tf.
- memtrain: `SMT.loss` encodes every prefix of the sequence in one pass and trains every transition,
  so labels/update = B * T (or B * smt.transitions). Its sequence is T = Tc, with smt.future = Tf.

Setting: memory-token cell, d=64, K=4 memory tokens (Z=256), teacher encoder depth 2, RNN depth 2,
decoder depth 1, 4 heads, context Tc=128, future Tf=32, batch 32, vocabulary 9 (retrieval-like random
tokens; the speed does not depend on the data), float32. memtrain is timed decoding every memory and
with smt.dec_samples=32 (its default) and 8. x_transformers gives each attention head width 64 unless
told otherwise, so the authors' model at d=64 with 4 heads has 256-wide attention (about twice
memtrain's parameters); it is also timed with attn_dim_head=16, which matches memtrain's sizes.

The authors' code is NOT part of this repository and is never copied into it: the script imports their
`model.py` from a folder given with --authors-src (default third_party/smt/src, ignored by git):

    git clone https://github.com/akarshkumar0101/smt third_party/smt
    pip install x-transformers==2.18.5 einops  # their model.py needs these (version from their
                                               # requirements.txt); memtrain does not

Without it the script says so and measures memtrain alone.

    python benchmarks/smt_throughput.py [--threads 2] [--repeats 5]   # writes benchmarks/results/smt_throughput.*

Methods are timed in interleaved blocks (every repeat runs each method once, in a rotating order),
so a busy machine slows all of them alike and the ratio stays meaningful even when the absolute
numbers do not.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import importlib.util
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from common import md_table, pyplot, write_results

from memtrain import build, build_task
from memtrain.presets import preset_config

B, D, K, HEADS, ENC_DEPTH, RNN_DEPTH, DEC_DEPTH, TC, TF, N_SYMBOLS = 32, 64, 4, 4, 2, 2, 1, 128, 32, 8
VOCAB = N_SYMBOLS + 1


def load_authors(src: str):
    """Import the authors' model.py from `src`; returns the module, or None with a printed reason."""
    path = Path(src) / "model.py"
    if not path.is_file():
        print(f"[authors] {path} not found: measuring memtrain alone. To compare, get the authors' code with\n"
              f"    git clone https://github.com/akarshkumar0101/smt third_party/smt\n"
              f"and pass --authors-src third_party/smt/src (the default).\n")
        return None
    spec = importlib.util.spec_from_file_location("smt_authors_model", path)
    mod = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(mod)
    except ImportError as e:
        print(f"[authors] could not import {path}: {e}\n    their model.py needs: pip install x-transformers einops\n"
              f"measuring memtrain alone.\n")
        return None
    return mod


@contextlib.contextmanager
def head_width(am, dim_head: int | None):
    """While building the authors' classes, have x_transformers' Encoder/Decoder (looked up in their
    module) give every attention head width `dim_head` (None: their default, 64). Their code is not
    changed; only the constructor they look up is wrapped, and restored afterwards."""
    saved = am.Encoder, am.Decoder
    if dim_head is not None:
        try:  # x_transformers warns (via loguru) that rotary dims < 32 are small for language models
            from loguru import logger
            logger.disable("x_transformers")
        except ImportError:
            pass
        am.Encoder = functools.partial(saved[0], attn_dim_head=dim_head)
        am.Decoder = functools.partial(saved[1], attn_dim_head=dim_head)
    try:
        yield
    finally:
        am.Encoder, am.Decoder = saved


def make_batch(length: int, gen: torch.Generator):
    """Retrieval-like tokens (marker 0 before a needle, 0 at the end asks for it), with dense
    next-token targets so that every method's masked losses are well defined (the authors' decoder
    loss is 0/0 if its Tf targets are all unsupervised). Returns x, y (B, length) int64."""
    x, y_ret = build_task("retrieval", length=length, n_symbols=N_SYMBOLS).sample(B, gen)
    y = torch.cat([x[:, 1:], y_ret[:, -1:]], dim=1)
    return x, y


def n_params(module) -> int:
    return sum(p.numel() for p in module.parameters())


class Runner:
    """One method: a fixed batch, an optimizer, and `update()` (one training update)."""

    def __init__(self, name, labels, params, loss_fn, clip_groups, device):
        self.name, self.labels, self.params, self.loss_fn = name, labels, params, loss_fn
        self.clip_groups, self.device = clip_groups, device
        self.opt = torch.optim.AdamW(params, lr=3e-4, betas=(0.9, 0.95), weight_decay=0.01)
        self.times: list[float] = []  # seconds per update, one entry per timed block
        self.iters = 1  # updates per timed block (calibrated after warmup)

    def update(self):
        loss = self.loss_fn()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        for group in self.clip_groups:
            torch.nn.utils.clip_grad_norm_(group, 1.0)
        self.opt.step()
        return loss

    def sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def block(self, n: int) -> float:
        self.sync()
        t0 = time.perf_counter()
        for _ in range(n):
            self.update()
        self.sync()
        return (time.perf_counter() - t0) / n

    def trained_params(self) -> int:
        """Parameters that actually receive a gradient in one update (after `update`)."""
        return sum(p.numel() for p in self.params if p.grad is not None)


def authors_runner(am, device, gen, dim_head: int | None = None) -> tuple[Runner, dict]:
    """The authors' Teacher, RNN and forward_smt. x_transformers gives every attention head width 64 by
    default (attn_dim_head), so at d=64 with 4 heads their attention is 256 wide (ours: 64). With
    `dim_head` set, their classes are built with `attn_dim_head=dim_head` passed to x_transformers'
    Encoder/Decoder (their code is not changed; only the constructor they look up is wrapped while
    building), which makes the sizes match memtrain's."""
    name = "authors forward_smt" if dim_head is None else f"authors forward_smt, attn_dim_head={dim_head}"
    with head_width(am, dim_head):
        teacher, rnn, _, scfg = _build_authors(am, device)
    x, y = make_batch(TC + TF, gen)
    batch = {"x": x.to(device), "y": y.to(device)}
    params = list(rnn.parameters()) + list(teacher.parameters())  # as train_smt.py (hot_rnn, hot_teacher)
    r = Runner(name, B, params, lambda: am.forward_smt(rnn, teacher, batch, scfg)["loss"],
               [list(rnn.parameters()), list(teacher.parameters())], device)
    sizes = {"teacher": n_params(teacher), "rnn": n_params(rnn), "rnn_update_only": n_params(rnn.embed) + n_params(rnn.rnn),
             "optimizer": sum(p.numel() for p in params), "T": TC + TF, "Tc": TC, "Tf": TF,
             "attn_dim_head": dim_head or "x_transformers default (64)"}
    return r, sizes


def _build_authors(am, device):
    tcfg = am.TeacherConfig(vocab_size=VOCAB, mem_size=K * D, mem_tokens=K, d_model=D, encoder_depth=ENC_DEPTH,
                            decoder_depth=DEC_DEPTH, n_heads=HEADS)
    rcfg = am.RNNConfig(vocab_size=VOCAB, mem_size=K * D, mem_tokens=K, d_model=D, rnn_depth=RNN_DEPTH,
                        decoder_depth=DEC_DEPTH, n_heads=HEADS)
    scfg = am.SMTConfig(T=TC + TF, Tc=TC, Tf=TF)  # their defaults otherwise (coefs, hot_rnn, hot_teacher)
    teacher, rnn = am.Teacher(tcfg).to(device), am.RNN(rcfg).to(device)
    teacher.train(), rnn.train()
    return teacher, rnn, tcfg, scfg


def memtrain_runner(name, dec_samples, transitions, device, gen) -> tuple[Runner, dict]:
    over = ["method=smt", f'task_args={{"length": {TC}, "n_symbols": {N_SYMBOLS}}}', f"train.batch_size={B}",
            "cell.kind=memtok", f"cell.depth={RNN_DEPTH}", f"cell.d_mem={D}", f"cell.mem_tokens={K}", f"cell.n_heads={HEADS}",
            f"cell.readout_depth={DEC_DEPTH}", f"teacher.d_model={D}", f"teacher.mem_tokens={K}", f"teacher.n_heads={HEADS}",
            f"teacher.encoder_depth={ENC_DEPTH}", f"teacher.decoder_depth={DEC_DEPTH}", f"smt.future={TF}",
            f"smt.dec_samples={json.dumps(dec_samples)}", f"smt.transitions={json.dumps(transitions)}"]
    cfg = preset_config("retrieval-smt", over)
    task, teacher, cell, method = build(cfg)
    assert task.vocab_size == VOCAB and cell.cfg.kind == "memtok"
    method.to(device).train()
    x, y = make_batch(TC, gen)
    x, y = x.to(device), y.to(device)
    lgen = torch.Generator().manual_seed(0)
    params = method.trainable()
    T = x.shape[1]
    labels = B * (min(transitions, T) if transitions else T)
    r = Runner(name, labels, params, lambda: method.loss(x, y, lgen)[0], [params], device)
    sizes = {"teacher": n_params(teacher), "cell": n_params(cell),
             "cell_update_only": n_params(cell) - n_params(cell.head) - cell.m_init.numel(),
             "optimizer": sum(p.numel() for p in params), "T": T, "future": cfg.smt.future,
             "dec_samples": dec_samples, "transitions": transitions, "encoder": cfg.teacher.encoder}
    return r, sizes


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--authors-src", default="third_party/smt/src", help="folder holding the authors' model.py")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument("--repeats", type=int, default=5, help="timed blocks per method (interleaved)")
    p.add_argument("--warmup", type=int, default=2, help="untimed updates per method first")
    p.add_argument("--min-block", type=float, default=0.5,
                   help="seconds a timed block should last at least (fast methods run several updates per block)")
    p.add_argument("--dec-samples", type=int, nargs="*", default=[32, 8],
                   help="extra memtrain variants with smt.dec_samples=N (the main one decodes every memory)")
    p.add_argument("--authors-dim-head", type=int, default=D // HEADS,
                   help="also time the authors' model with this x_transformers attn_dim_head (size-matched to memtrain "
                        "at d/heads=16; 0: skip). Their unmodified model (head width 64) is always timed.")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--results", default=None, help="folder for smt_throughput.{json,md,png} (default benchmarks/results)")
    return p.parse_args(argv)


def make_runners(a, am, device, gen) -> tuple[list[Runner], dict]:
    """The authors' variants (when their code is there), then memtrain's; -> (runners, sizes by name)."""
    runners, sizes = [], {}
    if am is not None:
        for dh in [None] + ([a.authors_dim_head] if a.authors_dim_head else []):
            r, sizes_r = authors_runner(am, device, gen, dh)
            runners.append(r)
            sizes[r.name] = sizes_r
    variants = [("memtrain SMT (decode all memories)", None)] + [(f"memtrain SMT dec_samples={n}", n) for n in a.dec_samples]
    for name, ds in variants:
        r, sizes_r = memtrain_runner(name, ds, None, device, gen)
        runners.append(r)
        sizes[r.name] = sizes_r
    return runners, sizes


def warm_up(runners: list[Runner], sizes: dict, warmup: int, min_block: float) -> None:
    """Untimed updates, then calibrate updates per block so that every block lasts >= min_block seconds."""
    for r in runners:
        for _ in range(max(1, warmup)):
            r.sync()
            t0 = time.perf_counter()
            loss = r.update()
            r.sync()
            per = time.perf_counter() - t0  # the last warmup update calibrates the block size
        if not torch.isfinite(loss):
            print(f"warning: {r.name} loss is {loss.item()} (timing is still valid)")
        sizes[r.name]["trained_params"] = r.trained_params()
        r.iters = max(1, int(min_block / max(per, 1e-6) + 0.999))


def time_interleaved(runners: list[Runner], repeats: int) -> None:
    """Every repeat runs each method's block once, in an order rotated by one each repeat."""
    for rep in range(repeats):
        k = rep % len(runners)
        for r in runners[k:] + runners[:k]:  # rotate the order each repeat
            r.times.append(r.block(r.iters))


def result_rows(runners: list[Runner], sizes: dict) -> list[dict]:
    rows = []
    for r in runners:
        med = statistics.median(r.times)
        rows.append({"method": r.name, "median_s_per_update": med, "min_s_per_update": min(r.times),
                     "times_s_per_update": r.times, "updates_per_block": r.iters, "labels_per_update": r.labels,
                     "labels_per_s": r.labels / med, "sizes": sizes[r.name]})
    return rows


def ratios_to_authors(ours_rows: list[dict], authors_rows: list[dict]) -> dict:
    """Print and return the labels/s ratios of every memtrain variant to every authors' variant."""
    ratios = {}
    print("\nratio of labels/s, memtrain / authors (same process, interleaved blocks). 'of medians' is the headline;"
          "\n'per-repeat' pairs blocks of the same repeat (robust to load that drifts between repeats); 'of minima'"
          "\nuses each method's fastest block (other jobs only ever add time):")
    print("| memtrain variant | authors variant | of medians | per-repeat (median) | of minima | s/update ratio (medians) |")
    print("|---|---|---:|---:|---:|---:|")
    for row in ours_rows:
        ratios[row["method"]] = {}
        for b in authors_rows:
            r = {"of_medians": row["labels_per_s"] / b["labels_per_s"],
                 "median_of_per_repeat": statistics.median(
                     (row["labels_per_update"] / t) / (b["labels_per_update"] / tb)
                     for t, tb in zip(row["times_s_per_update"], b["times_s_per_update"])),
                 "of_minima": (row["labels_per_update"] / row["min_s_per_update"]) / (b["labels_per_update"] / b["min_s_per_update"]),
                 "s_per_update_of_medians": row["median_s_per_update"] / b["median_s_per_update"]}
            ratios[row["method"]][b["method"]] = r
            print(f"| {row['method']} | {b['method']} | {r['of_medians']:.0f}x | {r['median_of_per_repeat']:.0f}x "
                  f"| {r['of_minima']:.0f}x | {r['s_per_update_of_medians']:.1f}x |")
    return ratios


def print_tables(rows: list[dict], sizes: dict, a, load0, load1) -> dict:
    """Throughput, the ratios (when the authors' code ran), parameters and the setting; -> the ratios."""
    print("\n| method | median s/update | labels/update | labels/s |")
    print("|---|---:|---:|---:|")
    for row in rows:
        print(f"| {row['method']} | {row['median_s_per_update']:.4f} | {row['labels_per_update']} | {row['labels_per_s']:,.0f} |")

    authors_rows = [row for row in rows if row["method"].startswith("authors")]
    ours_rows = [row for row in rows if not row["method"].startswith("authors")]
    ratios = ratios_to_authors(ours_rows, authors_rows) if authors_rows else {}

    print("\nparameters (authors: the RNN's own decoder+to_logits gets no gradient from forward_smt;"
          " memtrain: the cell's readout head and m_init are copies of the teacher's, not trained):")
    print("| method | teacher | RNN / cell | of which update path | in optimizer | receiving gradients |")
    print("|---|---:|---:|---:|---:|---:|")
    for row in rows:
        s = sizes[row["method"]]
        cell = s.get("rnn", s.get("cell"))
        upd = s.get("rnn_update_only", s.get("cell_update_only"))
        print(f"| {row['method']} | {s['teacher']:,} | {cell:,} | {upd:,} | {s['optimizer']:,} | {s['trained_params']:,} |")

    print(f"\nsequences: authors T=Tc+Tf={TC + TF} (Tc={TC}, Tf={TF}), one transition per sequence; memtrain T={TC} "
          f"with smt.future={TF}, every transition (B*T={B * TC}). batch {B}, float32, threads {a.threads}.")
    print(f"load average before/after: {load0[0]:.2f} / {load1[0]:.2f} on {os.cpu_count()} CPUs. The machine may be"
          " busy with other jobs: absolute times can be inflated, but the methods run in interleaved blocks in"
          " the same process, so the ratio is the meaningful number.")
    return ratios


def save_results(a, device, am, rows: list[dict], ratios: dict, load0, load1) -> None:
    """smt_throughput.{json,md,png}: every figure and the setting, the table, a bar chart."""
    result = {"setting": {"B": B, "d_model": D, "mem_tokens": K, "Z": K * D, "n_heads": HEADS, "encoder_depth": ENC_DEPTH,
                          "rnn_depth": RNN_DEPTH, "decoder_depth": DEC_DEPTH, "Tc": TC, "Tf": TF, "vocab": VOCAB,
                          "dtype": "float32", "device": str(device), "threads": a.threads, "repeats": a.repeats,
                          "warmup": a.warmup},
              "authors_code": str(Path(a.authors_src) / "model.py") if am is not None else None,
              "results": rows, "ratios_labels_per_s_memtrain_over_authors": ratios,
              "loadavg_before_after": [load0[0], load1[0]]}
    authors_rows = [row for row in rows if row["method"].startswith("authors")]
    head = authors_rows[0] if authors_rows else None
    table = md_table(["method", "median s/update", "labels/update", "labels/s", "x authors (unmodified)"],
                     [[r["method"], r["median_s_per_update"], r["labels_per_update"], round(r["labels_per_s"]),
                       f"{r['labels_per_s'] / head['labels_per_s']:.1f}x" if head else None] for r in rows])
    table += (f"\n\nMemory-token cell, d={D}, K={K}, context {TC}, future {TF}, batch {B}, float32, {a.threads} threads, "
              f"median of {a.repeats} interleaved blocks. A label is one supervised memory transition.")
    write_results("smt_throughput", result, table, draw(result), a.results)


def draw(data: dict):
    """Labels per second of each method, one bar each (log scale)."""
    rows = data["results"]
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 0.5 + 0.45 * len(rows)))
    ax.barh([r["method"] for r in rows][::-1], [r["labels_per_s"] for r in rows][::-1])
    ax.set_xscale("log")
    ax.set_xlabel("memory-transition labels per second (log)")
    return fig


def main(argv=None) -> int:
    a = parse_args(argv)
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    device = torch.device(a.device)
    gen = torch.Generator().manual_seed(a.seed)
    load0 = os.getloadavg()

    am = load_authors(a.authors_src)
    runners, sizes = make_runners(a, am, device, gen)
    warm_up(runners, sizes, a.warmup, a.min_block)
    print(f"timing {len(runners)} methods x {a.repeats} interleaved blocks "
          f"({', '.join(f'{r.iters} upd/block' for r in runners)}), threads={a.threads}, device={device}", flush=True)
    time_interleaved(runners, a.repeats)
    load1 = os.getloadavg()

    rows = result_rows(runners, sizes)
    ratios = print_tables(rows, sizes, a, load0, load1)
    save_results(a, device, am, rows, ratios, load0, load1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
