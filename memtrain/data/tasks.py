"""The task registry: `TASKS[name]` is the dataclass behind `task=name`, built from `task_args` by
`build_task`. Synthetic tasks are in synthetic.py, file-backed ones in files.py."""
from __future__ import annotations

import typing
from dataclasses import fields

from ..fields import coerce
from .control import ControlTask
from .files import NpzTask, PreparedTask, TokenFile
from .series import SeriesTask
from .synthetic import Copy, KeyValue, ModularICL, Parity, Retrieval, Stack

TASKS: dict[str, type] = {
    "retrieval": Retrieval,
    "copy": Copy,
    "stack": Stack,
    "kv": KeyValue,
    "icl": ModularICL,
    "parity": Parity,
    "tokens": TokenFile,
    "npz": NpzTask,
    "prepared": PreparedTask,
    "series": SeriesTask,
    "control": ControlTask,
}


def build_task(name: str, **params):
    if name not in TASKS:
        raise ValueError(f"task must be one of {sorted(TASKS)}, got {name!r}")
    cls = TASKS[name]
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(params) - set(hints))
    if unknown:
        raise ValueError(f"task '{name}' has no parameter(s) {unknown}; it takes {sorted(f.name for f in fields(cls))}")
    return cls(**{k: coerce(v, hints[k], f"task_args.{k}") for k, v in params.items()})


def sample_eval(task, batch_size, gen, length=None):
    """A held-out batch: the "val" split (file tasks: their held-out data; synthetic ones: a fresh draw)."""
    return task.sample(batch_size, gen, length=length, split="val")


def all_rows(task, split="val", length=None, path=None):
    """Every held-out row of a file task once (x, y) (N, T); `path` reads another file of the task's
    kind instead. Synthetic tasks have no fixed held-out set and are refused."""
    require_rows(task)
    return task.rows(split, length, path)


def require_rows(task) -> None:
    """Refuse a task without a fixed held-out set (the synthetic ones draw fresh sequences)."""
    if not hasattr(task, "rows"):
        raise ValueError(f"task {type(task).__name__.lower()!r} draws fresh sequences and has no fixed set of rows; "
                         "every-row evaluation (train.eval_rows=all, `memtrain eval --data`) is for tokens, npz and prepared")
