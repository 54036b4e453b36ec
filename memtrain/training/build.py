"""From a configuration to the objects of a run: the task, the networks and the method, built from
the run's settings as `config.resolve` derived and checked them, once. Training, `memtrain eval` /
`sample` (runs.py) and the benchmarks all build their networks here.
"""
from __future__ import annotations

import warnings
from contextlib import nullcontext
from dataclasses import dataclass

import torch

from ..data.tasks import build_task
from ..fields import from_dict, to_dict
from ..io import load_module
from ..methods import Method, method_class
from ..methods.rollout import Rollout
from ..models.cells import Cell, build_cell
from ..models.teacher import Teacher
from .checkpoint import META, read_run
from .config import RunConfig, method_settings, resolve, upgrade
from .resume import config_differences


def saved_config(meta: dict) -> dict:
    """The configuration in a run.json, in today's setting names (older formats translated)."""
    return upgrade(meta["config"], meta.get("version", 1))


def pick_device(name: str) -> torch.device:
    """The device `train.device` names ("auto": CUDA if there is one, else the CPU), refused if absent."""
    if name == "auto":
        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("train.device='cuda' but no CUDA device is available")
    if name == "mps" and not torch.backends.mps.is_available():
        raise ValueError("train.device='mps' but no MPS device is available")
    return torch.device(name)


@dataclass
class Parts:
    """What a run trains: its resolved configuration, the task, the networks and the method."""
    cfg: RunConfig
    task: object
    teacher: Teacher | None
    cell: Cell
    method: Method


def networks(cfg: RunConfig, with_teacher: bool) -> tuple[Teacher | None, Cell]:
    """The cell and (if asked) the teacher of a resolved configuration, freshly initialised from
    torch's global generator (the cell first). They are networks only: how the cell runs through time
    (the `rollout` section) is the method's `Rollout`."""
    cell = build_cell(cfg.cell)
    teacher = Teacher(cfg.teacher) if with_teacher else None
    return teacher, cell


def build_parts(cfg: RunConfig, task) -> Parts:
    """The parts of a run from its resolved configuration (`resolve(cfg, task)`) and its task, with
    fresh weights; the method checks that its networks fit together (models.cells.check_compatible)."""
    cls = method_class(cfg.method)
    teacher, cell = networks(cfg, cls.needs_teacher)
    if "smt" in (cls.sections or (cls.name,)):
        warn_short_future(cfg.smt.future, task)
    warn_small_data(cfg.task, task, cfg.train)
    return Parts(cfg, task, teacher, cell, cls(teacher, cell, method_settings(cfg), rollout=Rollout(cfg.rollout)))


def assemble(cfg: RunConfig) -> Parts:
    """Build the task, resolve the settings (checked once), refuse a device that is not there, and
    build the networks and the method (fresh weights)."""
    task = build_task(cfg.task, **cfg.task_args)
    rcfg = resolve(cfg, task)
    pick_device(rcfg.train.device)
    return build_parts(rcfg, task)


class SettingWarning(UserWarning):
    """A setting that works but probably not as intended (the CLI prints it as 'memtrain: warning: ...')."""


def warn_short_future(future: int, task) -> None:
    """Warn when the decoder's future is shorter than the task's recall gap (synthetic tasks know it):
    the memories right after what must be remembered are then never asked about it by the decoder,
    only by the dynamics loss through every step in between (docs/guide.md: choosing smt.future)."""
    gap = getattr(task, "recall_gap", None)
    if gap is not None and future < gap + 1:
        warnings.warn(f"smt.future={future} is shorter than the recall gap of task {type(task).__name__.lower()!r}: an "
                      f"input may be asked for {gap} steps after it is read, so only smt.future >= {gap + 1} asks "
                      "every memory that holds it; with less, the memories in between are shaped only by the "
                      "dynamics loss and the RNN may not learn to carry it (docs/guide.md: choosing smt.future)",
                      SettingWarning, stacklevel=3)


def warn_small_data(name: str, task, tc) -> None:
    """Warn when a file task's data cannot fill a batch: fewer distinct sequences in the training
    split than train.batch_size (every batch repeats some), or in the held-out split than
    train.eval_batch (the evaluation draws its rows with replacement, so its `rows` counts repeats).
    Synthetic tasks draw fresh sequences and never warn."""
    count = getattr(task, "n_sequences", None)
    if count is None:
        return
    T, n_train, n_val = task.length, count("train"), count("val")
    if n_train < tc.batch_size:
        warnings.warn(f"task '{name}': the training data holds {n_train} distinct sequences of length {T}, fewer "
                      f"than train.batch_size={tc.batch_size}: every batch repeats sequences (drawn with replacement)",
                      SettingWarning, stacklevel=3)
    if tc.eval_rows != "all" and n_val < tc.eval_batch:
        warnings.warn(f"task '{name}': the held-out data holds {n_val} distinct sequences of length {T}, fewer than "
                      f"train.eval_batch={tc.eval_batch}: each evaluation draws {tc.eval_batch} rows from them with "
                      "replacement, so its 'rows' counts repeats (train.eval_rows=all evaluates each one once)",
                      SettingWarning, stacklevel=3)


def load_init_weights(parts: Parts) -> None:
    """Load the networks of the finished run `init_from` into `parts`, refusing other sizes."""
    cfg, where = parts.cfg, parts.cfg.init_from
    meta, tensors = read_run(where)
    try:
        prev = from_dict(RunConfig, saved_config(meta))
    except ValueError as e:
        raise ValueError(f"init_from={where!r}: its {META} holds a configuration this memtrain cannot read ({e})") from None
    if parts.teacher is not None and "teacher" not in meta["modules"]:
        raise ValueError(f"init_from={where!r} has no teacher ({prev.method} run); {cfg.method} needs one")
    names = ("cell", "teacher") if parts.teacher is not None else ("cell",)
    diffs = config_differences({p: to_dict(getattr(prev, p)) for p in names}, {p: to_dict(getattr(cfg, p)) for p in names})
    if diffs:
        raise ValueError(f"init_from={where!r} holds networks of other sizes: {'; '.join(diffs[:4])}")
    for name in names:
        load_module(getattr(parts, name), tensors, name, where)


def build(cfg: RunConfig, load_init: bool = True):
    """-> (task, teacher or None, cell, method), with `init_from`'s weights loaded unless `load_init`
    is False (a resumed run takes its weights from its own checkpoint)."""
    parts = assemble(cfg)
    if parts.cfg.init_from and load_init:
        load_init_weights(parts)
    return parts.task, parts.teacher, parts.cell, parts.method


def compile_networks(cell, teacher=None, **options) -> None:
    """torch.compile the two functions every hot path calls: `cell.update` (SMT calls it once on all
    T transitions; rollouts call it once per step) and `teacher.encode` (the one-pass encoder). Loops
    over time stay in Python: a rollout is never unrolled into one graph, so compile time does not
    grow with T. The compiled functions shadow the methods on these instances only; parameters and
    checkpoints are unchanged. `options` go to torch.compile (e.g. backend="aot_eager" in tests)."""
    cell.update = torch.compile(cell.update, **options)
    if teacher is not None:
        teacher.encode = torch.compile(teacher.encode, **options)


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
