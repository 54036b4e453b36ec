"""One training loop for every method (SMT, DMT, BPTT): sample a batch, method.loss, step.
Metrics go to `metrics.jsonl`, the final model to safetensors + JSON in `out_dir`.

A method is an nn.Module wrapping the networks with three members: `trainable()` (the parameters
to optimise), `loss(x, y, gen) -> (loss, metrics)`, and `sync()` (run before the cell is evaluated
alone; SMT copies the teacher's readout and m_empty into the cell there)."""
from __future__ import annotations

import json
import math
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .bptt import BPTT
from .cells import build_cell, check_compatible
from .checkpoint import load_module, read_run, save_run
from .config import RunConfig, from_dict, to_dict
from .dmt import DMT
from .evaluate import drift_at, evaluate
from .smt import SMT
from .tasks import build_task, sample_eval
from .teacher import Teacher


def pick_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("train.device='cuda' but no CUDA device is available")
    if name == "mps" and not torch.backends.mps.is_available():
        raise ValueError("train.device='mps' but no MPS device is available")
    return torch.device(name)


def lr_at(step: int, cfg) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    if cfg.schedule == "cosine":
        frac = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
        return cfg.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, frac)))
    return cfg.lr


def sequential_steps(cfg: RunConfig, T: int) -> int:
    """Cell updates that must run one after another in one training update."""
    if cfg.method == "smt":
        return 1
    if cfg.method == "dmt":
        return cfg.dmt.rollout or T
    return T


def build(cfg: RunConfig):
    """Validate everything, then build task, teacher, cell and method (loading `init_from`)."""
    cfg.validate()
    task = build_task(cfg.task, **cfg.task_args)
    V = task.vocab_size
    for part, name in ((cfg.teacher, "teacher"), (cfg.cell, "cell")):
        if 0 < part.vocab_size < V:
            raise ValueError(f"{name}.vocab_size={part.vocab_size} but task '{cfg.task}' uses token ids up to {V - 1} (vocab {V})")
    chosen = cfg.teacher.vocab_size or cfg.cell.vocab_size or V  # 0 means "as the task / the other"
    cfg.teacher.vocab_size = cfg.teacher.vocab_size or chosen
    cfg.cell.vocab_size = cfg.cell.vocab_size or chosen
    pick_device(cfg.train.device)
    T = task.length
    if cfg.method == "dmt" and cfg.dmt.rollout is not None and cfg.dmt.rollout > T:
        raise ValueError(f"dmt.rollout={cfg.dmt.rollout} needs sequences at least that long; task length is {T}")
    if cfg.method == "dmt" and cfg.dmt.every > (cfg.dmt.rollout or T):
        raise ValueError(f"dmt.every={cfg.dmt.every} is longer than the rollout ({cfg.dmt.rollout or T} steps)")
    if cfg.method == "dmt" and not cfg.init_from:
        raise ValueError("method 'dmt' fine-tunes a finished SMT run: set init_from=<run dir>")
    cell = build_cell(cfg.cell)
    teacher = Teacher(cfg.teacher) if cfg.method in ("smt", "dmt") else None
    if teacher is not None:
        check_compatible(cell, teacher)  # a clear message before any weights are loaded
    if cfg.init_from:
        meta, tensors = read_run(cfg.init_from)
        prev = from_dict(RunConfig, meta["config"])
        load_module(cell, tensors, "cell", cfg.init_from)
        if teacher is not None:
            if "teacher" not in meta["modules"]:
                raise ValueError(f"init_from={cfg.init_from!r} has no teacher ({prev.method} run); {cfg.method} needs one")
            load_module(teacher, tensors, "teacher", cfg.init_from)
    if cfg.method == "smt":
        method = SMT(teacher, cell, cfg.smt)
    elif cfg.method == "dmt":
        method = DMT(teacher, cell, cfg.dmt)
    else:
        method = BPTT(cell, cfg.bptt)
    return task, teacher, cell, method


def compile_networks(cell, teacher=None, **options) -> None:
    """torch.compile the two functions every hot path calls: `cell.update` (SMT calls it once on all
    T transitions; rollouts call it once per step) and `teacher.encode` (the one-pass encoder). Loops
    over time stay in Python: a rollout is never unrolled into one graph, so compile time does not
    grow with T. The compiled functions shadow the methods on these instances only; parameters and
    checkpoints are unchanged. `options` go to torch.compile (e.g. backend="aot_eager" in tests)."""
    cell.update = torch.compile(cell.update, **options)
    if teacher is not None:
        teacher.encode = torch.compile(teacher.encode, **options)


def train(cfg: RunConfig, progress: bool = True) -> dict:
    """Train one run; returns a summary with the final evaluation and timings."""
    task, teacher, cell, method = build(cfg)
    tc = cfg.train
    if tc.threads:
        torch.set_num_threads(tc.threads)
    device = pick_device(tc.device)
    torch.manual_seed(tc.seed)
    gen = torch.Generator().manual_seed(tc.seed)
    x_eval, y_eval = sample_eval(task, tc.eval_batch, torch.Generator().manual_seed(tc.seed + 10_000))
    x_eval, y_eval = x_eval.to(device), y_eval.to(device)
    method.to(device)
    if tc.compile:
        compile_networks(cell, teacher)
    params = method.trainable()
    opt = torch.optim.AdamW(params, lr=tc.lr, betas=tc.betas, weight_decay=tc.weight_decay)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()

    out = Path(cfg.out_dir) if cfg.out_dir else None
    metrics_file = None
    if out:
        out.mkdir(parents=True, exist_ok=True)
        metrics_file = open(out / "metrics.jsonl", "w")

    def record(row):
        if metrics_file:
            metrics_file.write(json.dumps(row) + "\n")
            metrics_file.flush()

    def run_eval(step, elapsed):
        method.sync()
        method.eval()
        ev = evaluate(cell, teacher, x_eval, y_eval)
        method.train()
        row = {"step": step, "time": round(elapsed, 2), **{k: v for k, v in ev.items() if k != "drift"}}
        if "drift" in ev:
            row.update(drift_at(ev["drift"]))
            row["rel_drift"] = ev["drift"][-1] / max(ev["spread"], 1e-12)
        record({**row, "drift": ev.get("drift")})
        return row, ev

    bar = tqdm(range(tc.steps), disable=not progress, desc=cfg.method, dynamic_ncols=True)
    t_train, last = 0.0, {}
    step = 0
    for step in bar:
        t0 = time.perf_counter()
        for group in opt.param_groups:
            group["lr"] = lr_at(step, tc)
        x, y = task.sample(tc.batch_size, gen)
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with autocast:
            loss, metrics = method.loss(x, y, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(params, tc.clip if tc.clip > 0 else float("inf"))
        opt.step()
        t_train += time.perf_counter() - t0
        if step % 10 == 0 or step == tc.steps - 1:
            row = {"step": step, "loss": loss.item(), "grad_norm": gnorm.item(), "lr": lr_at(step, tc),
                   **{k: float(v) for k, v in metrics.items()}}
            record(row)
            bar.set_postfix(loss=f"{row['loss']:.3f}", **({"acc": f"{last['rnn_acc']:.2f}"} if "rnn_acc" in last else {}))
        if (step + 1) % tc.eval_every == 0 and step + 1 < tc.steps:
            last, _ = run_eval(step + 1, t_train)
            bar.set_postfix(loss=f"{loss.item():.3f}", acc=f"{last['rnn_acc']:.2f}")
        if tc.time_limit is not None and t_train > tc.time_limit:
            break
    bar.close()
    final, ev = run_eval(step + 1, t_train)
    summary = {"method": cfg.method, "steps": step + 1, "train_seconds": round(t_train, 3),
               "sequential_steps": sequential_steps(cfg, task.length), **final, "drift": ev.get("drift")}
    if out:
        metrics_file.close()
        save_run(out, {"cell": cell, "teacher": teacher}, to_dict(cfg), {"step": step + 1, "summary": {k: v for k, v in summary.items() if k != "drift"}})
    return summary
