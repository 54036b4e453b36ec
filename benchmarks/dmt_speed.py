"""DMT update time: memtrain's DMT against the authors' `forward_dmt` at the same Td, k and sizes.

Sizes as benchmarks/smt_throughput.py (memory-token cell d=64, K=4, depth 2; teacher encoder depth 2,
decoder depth 1, 4 heads; context Tc=128, future Tf=32, batch 32), rollout Td=64, every k-th memory
regressed. Both start the rollout from a teacher memory after a context of Tc tokens and freeze the
teacher (only the RNN is in the optimiser, as their train_dmt.py with hot_teacher_* = False).

- authors: Td/k separate encoder calls on windows of Tc tokens (one per regressed memory), their
  decoder loss on each (computed, not trained), then Td sequential RNN steps with the graph of each
  step kept (state detached between steps).
- memtrain: one windowed encoder pass (teacher.window=Tc) gives every target; a forward-only rollout
  gives the RNN's own states; one batched cell update over all Td steps gives the same one-step
  gradients (tests/test_dmt.py checks the equivalence to an explicit loop).

Their code is not part of this repository: it is imported from --authors-src (see
benchmarks/smt_throughput.py for how to fetch it). Without it only memtrain is timed.

    python benchmarks/dmt_speed.py [--td 64] [--k 1 4] [--repeats 5] [--threads 1]
"""
from __future__ import annotations

import argparse

import torch

from common import interleaved, legend_right, md_table, median, pyplot, training_update, write_results
from smt_throughput import B, D, DEC_DEPTH, ENC_DEPTH, HEADS, K, N_SYMBOLS, RNN_DEPTH, TC, TF, VOCAB, load_authors
from memtrain.presets import preset_config
from memtrain.data.tasks import build_task
from memtrain.training.build import build


def batch(length: int, gen):
    x, y_ret = build_task("retrieval", length=length, n_symbols=N_SYMBOLS).sample(B, gen)
    return x, torch.cat([x[:, 1:], y_ret[:, -1:]], dim=1)  # dense targets: every loss well defined


def authors_update(am, td: int, k: int, gen):
    tcfg = am.TeacherConfig(vocab_size=VOCAB, mem_size=K * D, mem_tokens=K, d_model=D, encoder_depth=ENC_DEPTH,
                            decoder_depth=DEC_DEPTH, n_heads=HEADS)
    rcfg = am.RNNConfig(vocab_size=VOCAB, mem_size=K * D, mem_tokens=K, d_model=D, rnn_depth=RNN_DEPTH,
                        decoder_depth=DEC_DEPTH, n_heads=HEADS)
    dcfg = am.DMTConfig(T=TC + td + TF, Td=td, Tc=TC, Tf=TF, k=k)
    teacher, rnn = am.Teacher(tcfg), am.RNN(rcfg)
    teacher.requires_grad_(False)
    x, y = batch(TC + td + TF, gen)
    b = {"x": x, "y": y}
    return training_update(lambda: am.forward_dmt(rnn, teacher, b, dcfg)["loss"], list(rnn.parameters()))


def memtrain_update(td: int, k: int, gen):
    over = ["method=smt", f'task_args={{"length": {TC + td}, "n_symbols": {N_SYMBOLS}}}', f"train.batch_size={B}",
            "cell.kind=memtok", f"cell.depth={RNN_DEPTH}", f"cell.d_mem={D}", f"cell.mem_tokens={K}", f"cell.n_heads={HEADS}",
            f"cell.readout_depth={DEC_DEPTH}", f"teacher.d_model={D}", f"teacher.mem_tokens={K}", f"teacher.n_heads={HEADS}",
            f"teacher.encoder_depth={ENC_DEPTH}", f"teacher.decoder_depth={DEC_DEPTH}", f"teacher.window={TC}",
            "smt.coef_last_input=0"]
    cfg = preset_config("retrieval-smt", over)
    _, teacher, cell, _ = build(cfg)
    from memtrain.methods.dmt import DMT, DMTConfig

    method = DMT(teacher, cell, DMTConfig(rollout=td, every=k, start="encoder"))
    x, y = batch(TC + td, gen)
    lgen = torch.Generator().manual_seed(0)
    return training_update(lambda: method.loss(x, y, lgen)[0], method.trainable())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--authors-src", default="third_party/smt/src")
    p.add_argument("--td", type=int, default=64)
    p.add_argument("--k", nargs="+", type=int, default=[1, 4])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--results", default=None)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    am = load_authors(a.authors_src)
    fns = {}
    for k in a.k:
        fns[("memtrain DMT", k)] = memtrain_update(a.td, k, gen)
        if am is not None:
            fns[("authors forward_dmt", k)] = authors_update(am, a.td, k, gen)
    for f in fns.values():
        f()  # warm-up
    times = interleaved(fns, a.repeats, rotate=True)
    rows, data = [], []
    for k in a.k:
        ours = median(times[("memtrain DMT", k)])
        theirs = median(times[("authors forward_dmt", k)]) if am is not None else None
        rows.append([a.td, k, B * (a.td // k), ours, theirs, theirs / ours if theirs else None])
        data.append({"td": a.td, "k": k, "memtrain_s": ours, "authors_s": theirs,
                     "memtrain_raw": times[("memtrain DMT", k)], "authors_raw": times.get(("authors forward_dmt", k))})
    table = md_table(["Td", "k", "regressed memories / update", "memtrain s / update", "authors s / update",
                      "authors / memtrain"], rows)
    table += (f"\n\nMemory-token cell d={D}, K={K}, depth {RNN_DEPTH}; teacher depth {ENC_DEPTH}/{DEC_DEPTH}; Tc={TC}; "
              f"batch {B}; {a.threads} thread(s); medians of {a.repeats} interleaved rounds."
              + ("" if am is not None else " The authors' code was not found: memtrain alone."))
    result = {"td": a.td, "threads": a.threads, "authors_found": am is not None, "rows": data}
    write_results("dmt_speed", result, table, draw(result), a.results)
    print(table)


def draw(data: dict):
    """Seconds per update, memtrain's DMT beside the authors' forward_dmt, per k; legend on the right."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.4))
    rows = data["rows"]
    xs = range(len(rows))
    ax.bar([i - 0.2 for i in xs], [d["memtrain_s"] for d in rows], 0.4, label="memtrain DMT")
    if data["authors_found"]:
        ax.bar([i + 0.2 for i in xs], [d["authors_s"] for d in rows], 0.4, label="authors forward_dmt")
    ax.set_xticks(list(xs), [f"Td={d['td']}, k={d['k']}" for d in rows])
    ax.set_ylabel("seconds per update")
    legend_right(ax)
    return fig


if __name__ == "__main__":
    main()
