"""One training loop for every method (SMT, DMT, BPTT): sample a batch, method.loss, step.
Metrics go to `metrics.jsonl`, the final model to safetensors + JSON in `out_dir`.

Long runs are safe to interrupt. Every `train.ckpt_every` steps (and at the end) the loop saves a
training checkpoint (checkpoint.py, resume.py) keeping the last `train.keep_last`; running the same
command again resumes from the newest intact one and continues exactly, bit for bit on a CPU.
SIGINT / SIGTERM finish the current step, save, and return (exit 0). An update whose loss or
gradient is not finite is skipped and logged; `train.max_bad_steps` of them in a row stop the run
with TrainingError, leaving the last good checkpoint in place.

A method is an nn.Module wrapping the networks with three members: `trainable()` (the parameters
to optimise), `loss(x, y, gen) -> (loss, metrics)`, and `sync()` (run before the cell is evaluated
alone; SMT copies the teacher's readout and m_empty into the cell there)."""
from __future__ import annotations

import json
import math
import os
import signal
import sys
import threading
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..methods.bptt import BPTT
from ..models.cells import build_cell, check_compatible
from . import distributed
from .checkpoint import META, checkpoint_dir, list_checkpoints, load_module, read_run, remove_partial, save_checkpoint, save_run
from ..fields import from_dict, to_dict
from .config import RunConfig
from ..methods.dmt import DMT
from ..methods.evaluate import drift_at, evaluate
from .resume import (config_differences, find_resume, load_optimizer_state, optimizer_state, rng_state,
                     set_rng_state)
from ..methods.smt import SMT
from ..data.tasks import build_task, sample_eval
from ..models.teacher import Teacher


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


def build(cfg: RunConfig, load_init: bool = True):
    """Validate everything, then build task, teacher, cell and method (loading `init_from` unless
    `load_init` is False: a resumed run takes its weights from its own checkpoint)."""
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
    if cfg.init_from and load_init:
        meta, tensors = read_run(cfg.init_from)
        try:
            prev = from_dict(RunConfig, meta["config"])
        except ValueError as e:
            raise ValueError(f"init_from={cfg.init_from!r}: its {META} holds a configuration this memtrain cannot read ({e})") from None
        if teacher is not None and "teacher" not in meta["modules"]:
            raise ValueError(f"init_from={cfg.init_from!r} has no teacher ({prev.method} run); {cfg.method} needs one")
        parts = ("cell", "teacher") if teacher is not None else ("cell",)
        diffs = config_differences({p: to_dict(getattr(prev, p)) for p in parts}, {p: to_dict(getattr(cfg, p)) for p in parts})
        if diffs:
            raise ValueError(f"init_from={cfg.init_from!r} holds networks of other sizes: {'; '.join(diffs[:4])}")
        load_module(cell, tensors, "cell", cfg.init_from)
        if teacher is not None:
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




class MethodExtras:
    """A method's own tensors, without the networks it wraps (e.g. SMT's last-input probe, trained
    but not part of the final model): a training checkpoint must hold them for an exact resume."""

    def __init__(self, method: torch.nn.Module):
        self.method = method

    def state_dict(self) -> dict:
        return {k: v for k, v in self.method.state_dict().items() if not k.startswith(("cell.", "teacher."))}

    def load_state_dict(self, tensors: dict) -> None:
        self.method.load_state_dict({**self.method.state_dict(), **tensors})


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. too many non-finite updates in a row); the message says why."""


class StopSignals:
    """While active, SIGINT and SIGTERM only set `received`; the loop reads it after each step, saves
    and returns. The first signal restores the previous handlers, so a second one acts as usual
    (Ctrl-C twice stops at once). A signal the process was told to ignore (e.g. SIGINT under `nohup`
    or `&`) stays ignored. Outside the main thread signals cannot be caught: a no-op."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.received: str | None = None
        self._old = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._old = {s: signal.signal(s, self._handle) for s in self.SIGNALS if signal.getsignal(s) is not signal.SIG_IGN}
        return self

    def _handle(self, signum, frame):
        self.received = signal.Signals(signum).name
        self._restore()
        print(f"\nmemtrain: {self.received} received: finishing this step and saving (send it again to stop at once)",
              file=sys.stderr, flush=True)

    def _restore(self):
        for s, old in self._old.items():
            signal.signal(s, old)
        self._old = {}

    def __exit__(self, *exc):
        self._restore()
        return False


def _has_unused(method, task, params, device, autocast) -> bool:
    """Does a loss leave some trainable parameter without a gradient (e.g. DMT from encoder memories
    never uses m_empty)? One forward and backward on two sequences, drawn from a generator of its own;
    DDP then searches for unused parameters every step only where there are some."""
    x, y = task.sample(2, torch.Generator().manual_seed(0))
    with autocast:
        loss, _ = method(x.to(device), y.to(device), torch.Generator().manual_seed(0))
    loss.backward()
    unused = any(p.grad is None for p in params)
    for p in params:
        p.grad = None
    return unused


def _finite_row(row: dict) -> dict:
    """JSON has no NaN: non-finite numbers are logged as null (the row says why the step was skipped)."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}


def train(cfg: RunConfig, progress: bool = True) -> dict:
    """Train one run, or resume it from out_dir's newest intact checkpoint; returns a summary with the
    final evaluation and timings. A run stopped by SIGINT/SIGTERM returns {'stopped': signal name,
    'checkpoint': path, ...} after saving. Under torchrun it trains data-parallel (distributed.py)."""
    cfg.validate()
    device = pick_device(cfg.train.device)
    world = distributed.setup(device.type)
    if device.type == "cuda" and world.distributed:
        device = torch.device("cuda", world.local_rank)
    try:
        return _train(cfg, progress, world, device)
    finally:
        distributed.teardown(world)


def configure_precision(device: torch.device, tf32: bool) -> None:
    """TF32 matmuls and convolutions on CUDA when `tf32` (Ampere and newer: ~8x the fp32 rate, 10-bit
    mantissa inputs, fp32 accumulation); nothing changes on other devices."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32


def autocast_for(device: torch.device, precision: str):
    """'auto': bf16 autocast on CUDA, fp32 elsewhere; 'bf16': bf16 autocast on any device; 'fp32'."""
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


def _train(cfg: RunConfig, progress: bool, world: distributed.World, device: torch.device) -> dict:
    tc = cfg.train
    distributed.check_batch(tc.batch_size, world, tc.grad_accum)
    out = Path(cfg.out_dir) if cfg.out_dir else None
    if out is not None and out.exists() and not out.is_dir():
        raise ValueError(f"out_dir={cfg.out_dir!r} exists and is not a directory")
    resume = find_resume(cfg.out_dir, tc.resume, quiet=not world.main) if out is not None else None
    torch.manual_seed(tc.seed)  # the networks' initial weights (the same on every rank)
    task, teacher, cell, method = build(cfg, load_init=resume is None)
    if tc.threads:
        torch.set_num_threads(tc.threads)
    configure_precision(device, tc.tf32)
    gen = torch.Generator().manual_seed(tc.seed)  # the data stream: the same on every rank
    x_eval, y_eval = sample_eval(task, tc.eval_batch, torch.Generator().manual_seed(tc.seed + 10_000))
    x_eval, y_eval = x_eval.to(device), y_eval.to(device)
    method.to(device)
    params = method.trainable()
    opt = torch.optim.AdamW(params, lr=tc.lr, betas=tc.betas, weight_decay=tc.weight_decay)
    modules = {"cell": cell, "teacher": teacher}  # the final model
    state_modules = {**modules, "method": MethodExtras(method)}  # + what training checkpoints add
    config = to_dict(cfg)
    say = (lambda msg: print(msg, file=sys.stderr)) if world.main else (lambda msg: None)

    step, t_train, bad_streak, metrics_bytes = 0, 0.0, 0, 0
    if resume is not None:
        path, meta, tensors, state = resume
        where = str(path)
        diffs = config_differences(meta["config"], config)
        if diffs:
            raise ValueError(f"out_dir={cfg.out_dir!r} holds a run with other settings, so it cannot be resumed with "
                             f"these: {'; '.join(diffs[:6])}{' ...' if len(diffs) > 6 else ''}. Use another out_dir "
                             "(init_from=<run> starts a new run from its weights)")
        info = meta["train"]
        for name, module in state_modules.items():
            if module is not None:
                load_module(module, tensors, name, where)
        load_optimizer_state(opt, info.get("optimizer"), state, where)
        set_rng_state(gen, state, where)
        step, t_train, bad_streak = meta["step"], float(info["seconds"]), int(info.get("bad_streak", 0))
        metrics_bytes = int(info["metrics_bytes"])
        if (step >= tc.steps or (tc.time_limit is not None and t_train >= tc.time_limit)) and info.get("summary"):
            say(f"memtrain: {cfg.out_dir} already finished at step {step}; nothing to train")
            summary = info["summary"]
            if world.main:
                try:
                    read_run(out)
                except ValueError:  # killed while writing the final model: write it again from the checkpoint
                    save_run(out, modules, config, {"step": step, "summary": {k: v for k, v in summary.items() if k != "drift"}})
            distributed.barrier(world)
            return summary
        say(f"memtrain: resuming {cfg.out_dir} from {path.name} (step {step})"
            + (f" with {world.size} processes" if world.distributed else ""))
    if tc.compile:
        compile_networks(cell, teacher)
    autocast = autocast_for(device, tc.precision)
    model = method  # what computes the loss: the method itself, or its DDP wrapper
    if world.distributed:
        for p in set(method.parameters()) - set(params):  # frozen or copied: DDP need not reduce them
            p.requires_grad_(False)
        model = torch.nn.parallel.DistributedDataParallel(
            method, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=_has_unused(method, task, params, device, autocast))

    metrics_file = None
    if out is not None and world.main:
        out.mkdir(parents=True, exist_ok=True)
        remove_partial(out)
        log = out / "metrics.jsonl"
        if resume is not None and log.is_file():
            metrics_file = open(log, "r+b")
            metrics_file.truncate(min(metrics_bytes, log.stat().st_size))  # drop rows written after the checkpoint
            metrics_file.seek(0, os.SEEK_END)
        else:
            metrics_file = open(log, "wb")
    distributed.barrier(world)  # nobody starts before rank 0 has cleaned up out_dir

    def record(row):
        if metrics_file:
            metrics_file.write((json.dumps(_finite_row(row), allow_nan=False) + "\n").encode())
            metrics_file.flush()

    def run_eval(at, elapsed):
        method.sync()  # on every rank: it changes the cell's copy of the teacher's readout
        if not world.main:
            return {}, {}
        method.eval()
        ev = evaluate(cell, teacher, x_eval, y_eval)
        method.train()
        row = {"step": at, "time": round(elapsed, 2), **{k: v for k, v in ev.items() if k != "drift"}}
        if "drift" in ev:
            row.update(drift_at(ev["drift"]))
            row["rel_drift"] = ev["drift"][-1] / max(ev["spread"], 1e-12)
        record({**row, "drift": ev.get("drift")})
        return row, ev

    def checkpoint(finished=False, summary=None):
        if out is None:
            return None
        if world.main:
            os_flush(metrics_file)
            plain, tensors = optimizer_state(opt)
            info = {"train": {"seconds": t_train, "metrics_bytes": metrics_file.tell(), "bad_streak": bad_streak,
                              "optimizer": plain, "finished": finished, "summary": summary, "processes": world.size}}
            save_checkpoint(out, step, state_modules, config, {**tensors, **rng_state(gen)}, info, tc.keep_last)
        distributed.barrier(world)
        return checkpoint_dir(out, step)

    def one_update():
        """Forward and backward over this rank's micro-batches; -> (mean loss, mean metrics) here."""
        x_all, y_all = task.sample(tc.batch_size, gen)
        x_all, y_all = distributed.rows_of(world, x_all, y_all, tc.batch_size)
        n = x_all.shape[0] // tc.grad_accum
        loss_sum, metric_sums = 0.0, {}
        opt.zero_grad(set_to_none=True)
        for k in range(tc.grad_accum):
            x, y = x_all[k * n:(k + 1) * n], y_all[k * n:(k + 1) * n]
            if device.type == "cuda":
                x, y = x.pin_memory(), y.pin_memory()
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            last_micro = k == tc.grad_accum - 1
            sync = nullcontext() if last_micro or not world.distributed else model.no_sync()
            with sync:
                with autocast:
                    loss, metrics = model(x, y, distributed.loss_generator(tc.seed, world.rank, step, k))
                (loss / tc.grad_accum).backward()
            loss_sum += loss.item() / tc.grad_accum
            for key, v in metrics.items():
                metric_sums[key] = metric_sums.get(key, 0.0) + float(v) / tc.grad_accum
        return loss_sum, metric_sums

    bar = tqdm(total=tc.steps, initial=min(step, tc.steps), disable=not (progress and world.main), desc=cfg.method,
               dynamic_ncols=True)
    last = {}
    try:
        with StopSignals() as stop:
            time_up = tc.time_limit is not None and t_train >= tc.time_limit
            while step < tc.steps and not time_up:
                t0 = time.perf_counter()
                lr = lr_at(step, tc)
                for group in opt.param_groups:
                    group["lr"] = lr
                loss_here, metrics_here = one_update()
                gnorm = torch.nn.utils.clip_grad_norm_(params, tc.clip if tc.clip > 0 else float("inf"))
                # every rank must take the same decisions: skip, stop, time up (one small all-reduce)
                keys = sorted(metrics_here)
                local = [loss_here, *[metrics_here[k] for k in keys], float(not math.isfinite(loss_here)),
                         float(stop.received is not None), time.perf_counter() - t0]
                total = distributed.sum_across(world, local, device)  # (NCCL reduces CUDA tensors only)
                loss_mean = total[0] / world.size
                metrics_mean = {k: v / world.size for k, v in zip(keys, total[1:1 + len(keys)])}
                bad_loss, stop_any, elapsed = total[-3] > 0, total[-2] > 0, total[-1] / world.size
                finite = not bad_loss and math.isfinite(gnorm.item())
                if finite:
                    opt.step()
                    bad_streak = 0
                else:
                    opt.zero_grad(set_to_none=True)
                    bad_streak += 1
                t_train += elapsed
                time_up = tc.time_limit is not None and t_train >= tc.time_limit
                if not finite:
                    what = "loss" if bad_loss else "gradient"
                    record({"step": step, "skipped": f"non-finite {what}", "loss": loss_mean, "grad_norm": gnorm.item(),
                            "bad_streak": bad_streak})
                    if world.main:
                        bar.write(f"memtrain: step {step}: non-finite {what}, update skipped ({bad_streak} in a row)")
                    if bad_streak >= tc.max_bad_steps:
                        kept = [str(p) for p in list_checkpoints(out)] if out is not None else []
                        raise TrainingError(
                            f"{bad_streak} updates in a row had a non-finite loss or gradient (steps {step - bad_streak + 1}.."
                            f"{step}); stopped. The weights were not changed by them. Last good checkpoint: "
                            f"{kept[-1] if kept else 'none'}. Lower train.lr, set train.clip, or raise train.max_bad_steps")
                elif step % tc.log_every == 0 or step == tc.steps - 1:
                    row = {"step": step, "loss": loss_mean, "grad_norm": gnorm.item(), "lr": lr, **metrics_mean}
                    record(row)
                    bar.set_postfix(loss=f"{row['loss']:.3f}", **({"acc": f"{last['rnn_acc']:.2f}"} if "rnn_acc" in last else {}))
                step += 1
                bar.update(1)
                if step % tc.eval_every == 0 and step < tc.steps:
                    last, _ = run_eval(step, t_train)
                    if last:
                        bar.set_postfix(loss=f"{loss_mean:.3f}", acc=f"{last['rnn_acc']:.2f}")
                if stop_any:
                    saved = checkpoint()
                    bar.close()
                    name = stop.received or "a signal to another process"
                    where = f"; checkpoint {saved}" if saved else " (no out_dir, nothing saved)"
                    say(f"memtrain: stopped by {name} after step {step}{where}")
                    return {"method": cfg.method, "steps": step, "train_seconds": round(t_train, 3),
                            "stopped": name, "checkpoint": str(saved) if saved else None}
                if tc.ckpt_every and step % tc.ckpt_every == 0 and step < tc.steps and bad_streak == 0:
                    checkpoint()  # (not in the middle of a run of skipped updates)
            bar.close()
            final, ev = run_eval(step, t_train)
            summary = {"method": cfg.method, "steps": step, "train_seconds": round(t_train, 3),
                       "sequential_steps": sequential_steps(cfg, task.length), **final, "drift": ev.get("drift")}
            if world.distributed:
                summary["processes"] = world.size
            if out is not None:
                checkpoint(finished=True, summary=summary if world.main else None)
                if world.main:
                    save_run(out, modules, config, {"step": step, "summary": {k: v for k, v in summary.items() if k != "drift"}})
                distributed.barrier(world)
            return summary
    finally:
        bar.close()
        if metrics_file:
            metrics_file.close()


def os_flush(f) -> None:
    if f is not None:
        f.flush()
        os.fsync(f.fileno())
