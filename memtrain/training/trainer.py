"""One training loop for every method: sample a batch, `method.loss`, step. It knows methods only
through `methods.base.Method` (found by name in `methods.METHODS`), so adding one never touches it.
Metrics go to `metrics.jsonl` (monitor.py), the final model to safetensors + JSON in `out_dir`.

Long runs are safe to interrupt. Every `train.ckpt_every` steps (and at the end) the loop saves a
training checkpoint (checkpoint.py, resume.py) keeping the last `train.keep_last`; running the same
command again resumes from the newest intact one and continues exactly, bit for bit on a CPU.
SIGINT / SIGTERM finish the current step, save, and return (exit 0). An update whose loss or
gradient is not finite is skipped and logged; `train.max_bad_steps` of them in a row stop the run
with TrainingError, leaving the last good checkpoint in place. One process at a time may train a
run: the second is refused while the first holds `out_dir/.lock` (lock.py).
"""
from __future__ import annotations

import inspect
import math
import signal
import sys
import threading
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch

from ..data.tasks import all_rows, build_task, require_rows, sample_eval
from ..fields import to_dict
from ..io import load_module, nonfinite_to_null
from ..lengths import mask_targets, unpack
from ..methods.evaluate import drift_at, evaluate
from . import distributed
from .build import (Parts, autocast_for, build_parts, compile_networks, configure_precision, load_init_weights,
                    pick_device, saved_config)
from .checkpoint import checkpoint_dir, list_checkpoints, read_run, remove_partial, save_checkpoint, save_run
from .config import RunConfig, resolve
from .lock import RunLock
from .monitor import MetricsLog, Progress, TensorBoardLog
from .resume import RunState, config_differences, find_resume


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. too many non-finite updates in a row); the message says why."""


def lr_at(step: int, cfg) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    if cfg.schedule == "cosine":
        frac = (step - cfg.warmup) / max(1, (cfg.schedule_steps or cfg.steps) - cfg.warmup)
        return cfg.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, frac)))
    return cfg.lr


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
    x, y, lengths = unpack(task.sample(2, torch.Generator().manual_seed(0)))
    with autocast:
        loss, _ = method(x.to(device), y.to(device), torch.Generator().manual_seed(0), _to(lengths, device))
    loss.backward()
    unused = any(p.grad is None for p in params)
    for p in params:
        p.grad = None
    return unused


@dataclass
class Run:
    """Everything the loop works with, assembled once by `_start`."""
    parts: Parts
    world: distributed.World
    device: torch.device
    out: Path | None
    model: torch.nn.Module  # what computes the loss: the method, or its DDP wrapper
    params: list
    opt: torch.optim.Optimizer
    gen: torch.Generator  # the data stream: the same on every rank
    x_eval: torch.Tensor
    y_eval: torch.Tensor
    lengths_eval: torch.Tensor | None  # where each held-out row ends (None: every row is full length)
    autocast: object
    state: RunState
    log: MetricsLog
    config: dict  # the resolved configuration, as saved
    said_not_finite: bool = False  # a non-finite evaluation has been reported on stderr (once per process)

    @property
    def tc(self):
        return self.parts.cfg.train

    def say(self, msg: str) -> None:
        if self.world.main:
            print(msg, file=sys.stderr)


def train(cfg: RunConfig, progress: bool = True) -> dict:
    """Train one run, or resume it from out_dir's newest intact checkpoint; returns a summary with the
    final evaluation and timings. A run stopped by SIGINT/SIGTERM returns {'stopped': signal name,
    'checkpoint': path, ...} after saving. Under torchrun it trains data-parallel (distributed.py).
    The settings are derived and checked once, here (`config.resolve`); the rest takes them as they are."""
    task = build_task(cfg.task, **cfg.task_args)
    cfg = resolve(cfg, task)
    device = pick_device(cfg.train.device)
    world = distributed.setup(device.type)
    try:
        return _train(cfg, task, progress, world, distributed.local_device(world, device))
    finally:
        distributed.teardown(world)


def _train(cfg: RunConfig, task, progress: bool, world: distributed.World, device: torch.device) -> dict:
    distributed.check_batch(cfg.train.batch_size, world, cfg.train.grad_accum)
    out = Path(cfg.out_dir) if cfg.out_dir else None
    if out is not None and out.exists() and not out.is_dir():
        raise ValueError(f"out_dir={cfg.out_dir!r} exists and is not a directory")
    lock = (lambda: RunLock(out, enabled=world.main)) if out is not None else nullcontext
    if out is not None and out.is_dir():  # an existing run: hold it before reading it (a second process stops here)
        with lock():
            return _run(*_parts(cfg, task, out, world), world, device, out, progress)
    parts, resume = _parts(cfg, task, out, world)  # a new run: every refusal before anything is written
    with lock():
        if out is not None and list_checkpoints(out):
            raise ValueError(f"out_dir={cfg.out_dir!r} was created by another run while this one started; "
                             "run the same command again to resume it")
        return _run(parts, resume, world, device, out, progress)


def _parts(cfg: RunConfig, task, out: Path | None, world) -> tuple[Parts, tuple | None]:
    """The run's parts (from its resolved configuration) with their starting weights, and the
    checkpoint to resume from (or None)."""
    torch.manual_seed(cfg.train.seed)  # the networks' initial weights (the same on every rank)
    parts = build_parts(cfg, task)
    if cfg.train.eval_rows == "all":
        require_rows(parts.task)  # (a file task has refused rows without a supervised target itself)
    else:
        _check_held_out(parts)
    if cfg.train.tensorboard and out is not None:
        TensorBoardLog.available()
    resume = find_resume(cfg.out_dir, cfg.train.resume, quiet=not world.main) if out is not None else None
    if resume is None and parts.cfg.init_from:
        load_init_weights(parts)
    return parts, resume


def _held_out(parts: Parts) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The rows every evaluation of the run uses: every held-out row (train.eval_rows=all), or
    train.eval_batch of them drawn once from a generator of their own -> (x, y, lengths or None)."""
    tc = parts.cfg.train
    if tc.eval_rows == "all":
        return unpack(all_rows(parts.task, "val"))
    return unpack(sample_eval(parts.task, tc.eval_batch, torch.Generator().manual_seed(tc.seed + 10_000)))


def _to(t: torch.Tensor | None, device) -> torch.Tensor | None:
    return None if t is None else t.to(device)


def _check_held_out(parts: Parts) -> None:
    """Refuse (before anything is written) a held-out batch without a single supervised target: every
    evaluation of the run would have nothing to score."""
    _, y, lengths = _held_out(parts)
    if lengths is not None and "lengths" not in inspect.signature(parts.method.loss).parameters:
        raise ValueError(f"task {parts.cfg.task!r} has sequences of different lengths, and method {parts.cfg.method!r} "
                         "takes none: its loss needs a `lengths` argument (methods/base.py)")
    if not bool((mask_targets(y, lengths) >= 0).any()):
        tc = parts.cfg.train
        raise ValueError(f"train.eval_batch={tc.eval_batch}: the held-out sequences drawn for evaluation (task "
                         f"{parts.cfg.task!r}) have no supervised position (every target is -1); raise "
                         "train.eval_batch, or set train.eval_rows=all to evaluate every held-out row")


def _run(parts: Parts, resume, world, device, out: Path | None, progress: bool) -> dict:
    run = _start(parts, world, device, out, resume)
    if isinstance(run, dict):  # the run had finished already
        return run
    flush = parts.cfg.train.flush_denormal and torch.set_flush_denormal(True)
    try:
        return _loop(run, progress)
    finally:
        run.log.close()
        if flush:
            torch.set_flush_denormal(False)  # torch's default, for whatever runs in this process next


def _start(parts: Parts, world, device, out: Path | None, resume) -> Run | dict:
    """Set up the optimizer, data and evaluation batch, restore a checkpoint, wrap for DDP."""
    tc = parts.cfg.train
    if tc.threads:
        torch.set_num_threads(tc.threads)
    configure_precision(device, tc.tf32)
    gen = torch.Generator().manual_seed(tc.seed)
    x_eval, y_eval, lengths_eval = _held_out(parts)  # (all: evaluated eval_batch rows at a time)
    method = parts.method.to(device)
    params = method.trainable()
    opt = torch.optim.AdamW(params, lr=tc.lr, betas=tc.betas, weight_decay=tc.weight_decay)
    config, state = to_dict(parts.cfg), RunState()
    if resume is not None:
        state = _restore(parts, resume, opt, gen, config, out, world)
        if isinstance(state, dict):
            return state
    if tc.compile:
        compile_networks(parts.cell, parts.teacher)
    autocast = autocast_for(device, tc.precision)
    model = distributed.wrap(method, params, world, device,
                             lambda: _has_unused(method, parts.task, params, device, autocast))
    if out is not None and world.main:
        out.mkdir(parents=True, exist_ok=True)
        remove_partial(out)
    tensorboard = None
    if tc.tensorboard and out is not None and world.main:
        tensorboard = TensorBoardLog(out, state.step if resume is not None else None)
    log = MetricsLog(out, state.metrics_bytes if resume is not None else None, enabled=world.main, tensorboard=tensorboard)
    distributed.barrier(world)  # nobody starts before rank 0 has cleaned up out_dir
    return Run(parts, world, device, out, model, params, opt, gen, x_eval.to(device), y_eval.to(device), _to(lengths_eval, device), autocast,
               state, log, config)


def _modules(parts: Parts, with_method: bool = False) -> dict:
    """The final model's modules ({'cell', 'teacher'}), and for a training checkpoint the method's own tensors."""
    mods = {"cell": parts.cell, "teacher": parts.teacher}
    return {**mods, "method": _MethodState(parts.method)} if with_method else mods


class _MethodState:
    """A method's own tensors as a module-like object for the checkpoint writer and reader."""

    def __init__(self, method):
        self.method = method

    def state_dict(self) -> dict:
        return self.method.extra_state()

    def load_state_dict(self, tensors: dict) -> None:
        self.method.load_extra_state(tensors)


def _restore(parts: Parts, resume, opt, gen, config: dict, out: Path, world) -> RunState | dict:
    """Load a training checkpoint into the run; a run that had finished returns its summary."""
    path, meta, tensors, state_tensors = resume
    cfg, tc, where = parts.cfg, parts.cfg.train, str(path)
    diffs = config_differences(saved_config(meta), config)
    if diffs:
        raise ValueError(f"out_dir={cfg.out_dir!r} holds a run with other settings, so it cannot be resumed with "
                         f"these: {'; '.join(diffs[:6])}{' ...' if len(diffs) > 6 else ''}. Use another out_dir "
                         "(init_from=<run> starts a new run from its weights)")
    # the method's own tensors in today's names and layout (the method translates an older memtrain's)
    own = {k[len("method."):]: v for k, v in tensors.items() if k.startswith("method.")}
    tensors = {**{k: v for k, v in tensors.items() if not k.startswith("method.")},
               **{f"method.{k}": v for k, v in parts.method.upgrade_state(own, meta.get("version", 1)).items()}}
    for name, module in _modules(parts, with_method=True).items():
        if module is not None:
            load_module(module, tensors, name, where)
    state = RunState.restore(meta, state_tensors, opt, gen, where)
    summary = meta["train"].get("summary")
    done = state.step >= tc.steps or (tc.time_limit is not None and state.seconds >= tc.time_limit) or parts.method.finished()
    if done and summary:
        if world.main:
            print(f"memtrain: {cfg.out_dir} already finished at step {state.step}; nothing to train", file=sys.stderr)
            try:
                read_run(out)
            except ValueError:  # killed while writing the final model: write it again from the checkpoint
                save_run(out, _modules(parts), config, {"step": state.step, "summary": _no_drift(summary)})
        distributed.barrier(world)
        return summary
    if world.main:
        print(f"memtrain: resuming {cfg.out_dir} from {path.name} (step {state.step})"
              + (f" with {world.size} processes" if world.distributed else ""), file=sys.stderr)
    return state


def _no_drift(summary: dict) -> dict:
    return {k: v for k, v in summary.items() if k != "drift"}


def one_update(run: Run, stop: StopSignals) -> tuple[distributed.Agreement, float]:
    """Forward and backward over this rank's micro-batches, gradient clipping; -> what the ranks
    agree on (mean loss and metrics, flags, seconds) and the gradient norm. The optimizer does not step."""
    tc, world, device = run.tc, run.world, run.device
    t0 = time.perf_counter()
    x_all, y_all, lengths_all = unpack(run.parts.task.sample(tc.batch_size, run.gen))
    x_all, y_all, lengths_all = unpack(distributed.rows_of(world, x_all, y_all, tc.batch_size, lengths_all))
    n = x_all.shape[0] // tc.grad_accum
    loss_sum, metric_sums = 0.0, {}
    run.opt.zero_grad(set_to_none=True)
    for k in range(tc.grad_accum):
        x, y = x_all[k * n:(k + 1) * n], y_all[k * n:(k + 1) * n]
        lengths = None if lengths_all is None else lengths_all[k * n:(k + 1) * n].to(device)
        if device.type == "cuda":
            x, y = x.pin_memory(), y.pin_memory()
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        last_micro = k == tc.grad_accum - 1
        with nullcontext() if last_micro or not world.distributed else run.model.no_sync():
            with run.autocast:
                loss, metrics = run.model(x, y, distributed.loss_generator(tc.seed, world.rank, run.state.step, k), lengths)
            (loss / tc.grad_accum).backward()
        loss_sum += loss.item() / tc.grad_accum
        for key, v in metrics.items():
            metric_sums[key] = metric_sums.get(key, 0.0) + float(v) / tc.grad_accum
    gnorm = torch.nn.utils.clip_grad_norm_(run.params, tc.clip if tc.clip is not None else float("inf")).item()
    agreed = distributed.agree(world, loss_sum, metric_sums, stop.received is not None, time.perf_counter() - t0, device)
    return agreed, gnorm


def evaluate_now(run: Run, bar: Progress | None = None) -> tuple[dict, dict]:
    """Evaluate the RNN alone (and the teacher) on the held-out rows; rank 0 logs the row, keeps the
    best model (train.keep_best) and counts the time (not training time: train.time_limit ignores it).
    A diverged RNN is a measurement: its non-finite values are logged (and returned in the row) as
    null, said once on stderr, and training goes on. -> (the row, evaluate's own numbers)."""
    t0 = time.perf_counter()
    method = run.parts.method
    method.before_eval()  # on every rank: SMT changes the cell's copy of the teacher's readout
    if not run.world.main:
        return {}, {}
    method.eval()
    ev = evaluate(run.parts.cell, run.parts.teacher, run.x_eval, run.y_eval, chunk=run.tc.eval_batch, how=method.rollout,
                  lengths=run.lengths_eval)
    policy = getattr(run.parts.task, "evaluate_policy", None)  # task=control: the RNN policy in its environment
    if policy is not None:
        ev.update(policy(run.parts.cell))
    method.train()
    row = {"step": run.state.step, "time": round(run.state.seconds, 2), **_no_drift(ev)}
    if "drift" in ev:
        row.update(drift_at(ev["drift"]))
    bad = _not_finite({**row, "drift": ev.get("drift")})
    if bad and not run.said_not_finite:
        run.said_not_finite = True
        msg = (f"memtrain: evaluation at update {run.state.step}: {', '.join(bad)} {'is' if len(bad) == 1 else 'are'} "
               "not finite (inf/nan); logged as null in metrics.jsonl (so is any later one), training goes on")
        if bar is not None:
            bar.write(msg)
        else:
            run.say(msg)
    row = nonfinite_to_null(row)
    run.log.write({**row, "drift": nonfinite_to_null(ev.get("drift"))})
    if run.tc.keep_best:
        _keep_best(run, row)
    run.state.eval_seconds += time.perf_counter() - t0
    return row, ev


def _not_finite(row: dict) -> list[str]:
    """The names of a row's entries that are, or hold (a list: the drift per step), a float that is not finite."""
    def bad(v) -> bool:
        return isinstance(v, float) and not math.isfinite(v)

    return [k for k, v in row.items() if bad(v) or (isinstance(v, list) and any(map(bad, v)))]


def _keep_best(run: Run, row: dict) -> None:
    """out_dir/best: the final-model files of the evaluation with the lowest RNN-alone loss so far
    (a loss that is not finite, null in the row, is never the lowest)."""
    ce = row.get("rnn_ce")
    if run.out is None or ce is None or not math.isfinite(ce) or (run.state.best is not None and ce >= run.state.best):
        return
    run.state.best, run.state.best_step = ce, run.state.step
    save_run(run.out / "best", _modules(run.parts), run.config, {"step": run.state.step, "summary": row})


def save(run: Run, finished: bool = False, summary: dict | None = None) -> Path | None:
    """A training checkpoint of the run as it stands (rank 0 writes, every rank waits)."""
    if run.out is None:
        return None
    if run.world.main:
        run.state.metrics_bytes = run.log.sync()
        info, tensors = run.state.record(run.opt, run.gen, finished, summary, run.world.size)
        save_checkpoint(run.out, run.state.step, _modules(run.parts, with_method=True), run.config, tensors, info,
                        run.tc.keep_last)
    distributed.barrier(run.world)
    return checkpoint_dir(run.out, run.state.step)


def _skipped(run: Run, agreed: distributed.Agreement, gnorm: float, bar: Progress) -> None:
    """Log a skipped non-finite update; too many in a row end the run."""
    st, what = run.state, "loss" if agreed.bad_loss else "gradient"
    run.log.write({"step": st.step, "skipped": f"non-finite {what}", "loss": agreed.loss, "grad_norm": gnorm,
                   "bad_streak": st.bad_streak})
    if run.world.main:
        bar.write(f"memtrain: step {st.step}: non-finite {what}, update skipped ({st.bad_streak} in a row)")
    if st.bad_streak >= run.tc.max_bad_steps:
        kept = [str(p) for p in list_checkpoints(run.out)] if run.out is not None else []
        raise TrainingError(
            f"{st.bad_streak} updates in a row had a non-finite loss or gradient (steps {st.step - st.bad_streak + 1}.."
            f"{st.step}); stopped. The weights were not changed by them. Last good checkpoint: "
            f"{kept[-1] if kept else 'none'}. Lower train.lr, set train.clip, or raise train.max_bad_steps")


def _loop(run: Run, progress: bool) -> dict:
    tc, st, name, method = run.tc, run.state, run.parts.cfg.method, run.parts.method
    bar = Progress(tc, st, progress and run.world.main, name)
    shown = {}
    try:
        with StopSignals() as stop:
            while st.step < tc.steps and not (tc.time_limit is not None and st.seconds >= tc.time_limit):
                lr = method.lr(lr_at(method.schedule_step(st.step, tc.warmup), tc), tc.lr)
                for group in run.opt.param_groups:
                    group["lr"] = lr
                agreed, gnorm = one_update(run, stop)
                st.seconds += agreed.seconds
                if not agreed.bad_loss and math.isfinite(gnorm):
                    run.opt.step()
                    st.bad_streak = 0
                else:  # skipped: the weights and the optimizer stay as they were
                    run.opt.zero_grad(set_to_none=True)
                    st.bad_streak += 1
                    _skipped(run, agreed, gnorm, bar)
                if st.bad_streak == 0 and (st.step % tc.log_every == 0 or st.step == tc.steps - 1):
                    run.log.write({"step": st.step, "time": round(st.seconds, 2), "loss": agreed.loss, "grad_norm": gnorm, "lr": lr,
                                   **agreed.metrics})
                    shown["loss"] = f"{agreed.loss:.3f}"
                st.step += 1
                ends = False
                if st.step % tc.eval_every == 0 and st.step < tc.steps:
                    last, ev = evaluate_now(run, bar)
                    if last:
                        if last.get("rnn_acc") is not None:
                            shown["acc"] = f"{last['rnn_acc']:.2f}"
                        else:  # real-valued targets: the RNN alone's loss per value
                            shown["nll"] = f"{last['rnn_ce']:.3f}"
                    ends = _decide(run, ev, bar)
                bar.advance(st.step, st.seconds, **shown)
                if ends:
                    break
                if agreed.stop:
                    bar.close()
                    return _stopped(run, stop.received or "a signal to another process")
                if tc.ckpt_every and st.step % tc.ckpt_every == 0 and st.step < tc.steps and st.bad_streak == 0:
                    save(run)  # (not in the middle of a run of skipped updates)
            bar.close()
            return _finish(run)
    finally:
        bar.close()


def budget_used(run: Run) -> float:
    """The fraction of the run's budget spent: updates of train.steps or seconds of train.time_limit,
    whichever is further along."""
    tc, st = run.tc, run.state
    return max(st.step / tc.steps, st.seconds / tc.time_limit if tc.time_limit else 0.0)


def _decide(run: Run, ev: dict, bar: Progress) -> bool:
    """The method's decision after an evaluation (main process), carried out on every process and
    logged; -> True when the method ends the run."""
    method = run.parts.method
    decision = distributed.share(run.world, method.after_eval(ev, run.state.step, budget_used(run)) if run.world.main else None)
    if not decision:
        return False
    run.log.write({"step": run.state.step, **decision.row()})
    if run.world.main:
        bar.write(f"memtrain: step {run.state.step}: {decision.event}: {decision.why}")
    return method.apply(decision, run.state.step)


def _stopped(run: Run, signal_name: str) -> dict:
    saved = save(run)
    where = f"; checkpoint {saved}" if saved else " (no out_dir, nothing saved)"
    run.say(f"memtrain: stopped by {signal_name} after step {run.state.step}{where}")
    return {"method": run.parts.cfg.method, "steps": run.state.step, "train_seconds": round(run.state.seconds, 3),
            "eval_seconds": round(run.state.eval_seconds, 3), "stopped": signal_name, "checkpoint": str(saved) if saved else None}


def _finish(run: Run) -> dict:
    """The final evaluation, checkpoint and model; -> the run's summary."""
    st, parts = run.state, run.parts
    final, ev = evaluate_now(run)
    summary = {"method": parts.cfg.method, "steps": st.step, "train_seconds": round(st.seconds, 3),
               "eval_seconds": round(st.eval_seconds, 3),
               "sequential_steps": parts.method.sequential_steps(parts.task.length), **parts.method.report(), **final,
               "drift": ev.get("drift")}
    if parts.cfg.rollout.solver == "auto":  # what it measured and chose
        summary["rollout_auto"] = parts.method.rollout.choices()
    if run.tc.keep_best and run.out is not None:
        summary["best"] = {"step": st.best_step, "rnn_ce": st.best, "dir": str(run.out / "best")}
    if run.world.distributed:
        summary["processes"] = run.world.size
    summary = nonfinite_to_null(summary)  # (run.json and the checkpoint are strict JSON)
    if run.out is not None:
        save(run, finished=True, summary=summary if run.world.main else None)
        if run.world.main:
            save_run(run.out, _modules(parts), run.config, {"step": st.step, "summary": _no_drift(summary)})
        distributed.barrier(run.world)
    return summary
