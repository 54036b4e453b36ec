"""What crash safety costs: time to write one training checkpoint (safetensors, SHA-256, fsync,
rename, prune) and to read and verify it back, against the time of one training update measured in
the same process, at the demo's sizes and at the paper's.

The networks are those of each preset on the retrieval task (the size of a checkpoint does not depend
on the data; `--vocab 256` gives the byte-level embedding). The paper-size update is not timed by
default: on a CPU one takes minutes.

    python benchmarks/checkpoint_cost.py [--presets retrieval-smt text-paper] [--repeats 5] [--threads 1]
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import torch

from common import md_table, median, training_update, write_results
from memtrain.training.checkpoint import list_checkpoints, read_checkpoint, save_checkpoint
from memtrain.fields import to_dict
from memtrain.presets import PRESETS, preset_config
from memtrain.training.resume import optimizer_state, rng_state
from memtrain.training.build import build


def networks(preset: str, vocab: int):
    keep = [o for o in PRESETS[preset][1] if not o.startswith(("task=", "task_args="))]
    cfg = preset_config(None, keep + ["task=retrieval", 'task_args={"length": 64}', f"teacher.vocab_size={vocab}",
                                      f"cell.vocab_size={vocab}", "smt.future=32"])
    task, teacher, cell, method = build(cfg)
    return cfg, task, teacher, cell, method


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--presets", nargs="+", default=["retrieval-smt", "text-paper"])
    p.add_argument("--time-update", nargs="+", default=["retrieval-smt"], help="presets whose update is timed")
    p.add_argument("--vocab", type=int, default=256)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--results", default=None)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    rows, data = [], []
    for preset in a.presets:
        cfg, task, teacher, cell, method = networks(preset, a.vocab)
        params = method.trainable()
        opt = torch.optim.AdamW(params, lr=1e-4)
        gen = torch.Generator().manual_seed(0)
        timed = preset in a.time_update
        x, y = task.sample(cfg.train.batch_size if timed else 2, gen)  # untimed: a small batch fills the optimizer state
        update = training_update(lambda: method.loss(x, y, gen)[0], params)
        update()  # warm-up; also fills the optimizer state a checkpoint must hold
        opt.zero_grad()
        method.loss(x, y, gen)[0].backward()
        opt.step()
        n_params = sum(t.numel() for m in (teacher, cell) for t in m.parameters())
        update_s = []
        if timed:
            for _ in range(a.repeats):
                t0 = time.perf_counter()
                update()
                update_s.append(time.perf_counter() - t0)
        save_s, read_s = [], []
        tmp = Path(tempfile.mkdtemp(prefix="ckpt-bench-"))
        try:
            for step in range(1, a.repeats + 1):
                t0 = time.perf_counter()
                plain, tensors = optimizer_state(opt)
                info = {"seconds": 0.0, "metrics_bytes": 0, "bad_streak": 0, "optimizer": plain, "finished": False,
                        "summary": None}
                path = save_checkpoint(tmp, step, {"cell": cell, "teacher": teacher}, to_dict(cfg),
                                       {**tensors, **rng_state(gen)}, {"train": info}, keep=2)
                save_s.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                read_checkpoint(path)
                read_s.append(time.perf_counter() - t0)
            size = sum(f.stat().st_size for f in list_checkpoints(tmp)[-1].iterdir())
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        up = median(update_s) if update_s else None
        rows.append([preset, f"{n_params / 1e6:.2f}", f"{size / 2**20:.1f}", median(save_s), median(read_s),
                     "-" if up is None else up, "-" if up is None else f"{median(save_s) / up:.2f}"])
        data.append({"preset": preset, "params": n_params, "bytes": size, "save_s": save_s, "read_s": read_s,
                     "update_s": update_s})
        print(rows[-1], flush=True)
    table = md_table(["preset (networks)", "parameters (M)", "checkpoint MiB", "save s", "read + verify s",
                      "one update s", "save / update"], rows)
    table += (f"\n\nMedians of {a.repeats}; a save is the optimizer snapshot, safetensors encoding, SHA-256 of each file, "
              f"fsync of files and folders, the rename into place and pruning to the last 2. {a.threads} thread(s). "
              "Updates: batch and sizes of each preset, retrieval T=64.")
    write_results("checkpoint_cost", {"threads": a.threads, "rows": data}, table, None, a.results)
    print(table)


if __name__ == "__main__":
    main()
