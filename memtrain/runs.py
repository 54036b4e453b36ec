"""Loading a finished run back: the config, the teacher (if any) and the cell, ready to evaluate."""
from __future__ import annotations

import torch

from .data.tasks import all_rows, build_task, sample_eval
from .fields import from_dict
from .io import load_module
from .lengths import mask_targets, unpack
from .methods.dynamics import largest_lyapunov
from .methods.evaluate import evaluate
from .methods.rollout import Rollout
from .training.build import networks, saved_config
from .training.checkpoint import read_run
from .training.config import RunConfig


def load_run(run_dir: str, device: str = "cpu"):
    """-> (config, task, teacher or None, cell), weights loaded, in eval mode. The cell is a network
    only: roll it out as the run did with `Rollout(config.rollout)`."""
    meta, tensors = read_run(run_dir)
    cfg = from_dict(RunConfig, saved_config(meta))
    task = build_task(cfg.task, **cfg.task_args)
    teacher, cell = networks(cfg, with_teacher="teacher" in meta["modules"])
    load_module(cell, tensors, "cell", run_dir)
    if teacher is not None:
        load_module(teacher, tensors, "teacher", run_dir)
        teacher.to(device).eval()
    return cfg, task, teacher, cell.to(device).eval()


def evaluate_run(run_dir: str, lengths=None, batch_size: int = 256, seed: int = 1234, data: str | None = None,
                 every_row: bool = False, rnn_only: bool = False) -> list[dict]:
    """Evaluate at the training length and (by default) 2T and 4T: length generalisation. With `data`
    (a file of the run's kind: a token file, an .npz, a prepared folder or split) every row of it
    once, `batch_size` at a time, at the file's own length (an .npz's T, a prepared set's whole
    images; token streams: windows of the run's T), or cut to each of `lengths`; with `every_row`
    the run's own held-out split likewise, at the training length. Otherwise `batch_size` sequences
    drawn from the held-out split. The RNN and the teacher run at any length. Rows without a single
    supervised target are refused (ValueError) rather than scored 0. With `rnn_only` the teacher is not
    run (its encoder attends over the whole prefix, the cost that dominates at long lengths): the RNN's
    own figures only, the same as with it."""
    if batch_size < 1:
        raise ValueError(f"batch must be >= 1, got {batch_size}")
    if lengths is not None and any(L < 1 for L in lengths):
        raise ValueError(f"lengths must be >= 1, got {list(lengths)}")
    cfg, task, teacher, cell = load_run(run_dir)
    teacher = None if rnn_only else teacher
    how = Rollout(cfg.rollout)  # the run's own rollout settings
    T = task.length
    if data is not None or every_row:
        rows = []
        for L in lengths or [None]:  # None: the file's own length (the split's: the run's T)
            x, y, rows_end = unpack(all_rows(task, "val", length=L, path=data))
            if not bool((mask_targets(y, rows_end) >= 0).any()):
                cut = f" (--length {L} cut them: leave it out to evaluate at the file's own length)" if L and data else ""
                raise ValueError(f"{'data ' + repr(data) if data else 'the held-out split'} has no supervised position "
                                 f"in its {len(x)} sequences of length {x.shape[1]}: every target is -1{cut}")
            rows.append({"length": x.shape[1], **({"data": data} if data else {}),
                         **evaluate(cell, teacher, x, y, chunk=batch_size, how=how, lengths=rows_end)})
        return rows
    rows = []
    for L in lengths or [T, 2 * T, 4 * T]:
        try:
            x, y, rows_end = unpack(sample_eval(task, batch_size, torch.Generator().manual_seed(seed), length=L))
            if not bool((mask_targets(y, rows_end) >= 0).any()):
                raise ValueError(f"the {batch_size} held-out sequences drawn at length {L} have no supervised position")
        except ValueError as e:  # e.g. kv cannot make that many distinct keys
            if lengths:
                raise
            rows.append({"length": L, "skipped": str(e)})
            continue
        rows.append({"length": L, **evaluate(cell, teacher, x, y, how=how, lengths=rows_end)})
    return rows


def lyapunov_run(run_dir: str, lengths=None, batch_size: int = 32, seed: int = 1234, burn_in: int | None = None) -> list[dict]:
    """The largest Lyapunov exponent of a run's cell along its own trajectories from its initial memory,
    on `batch_size` held-out sequences per length (default: the run's T): per length its mean, median,
    min and max over the sequences (nats per step; < 0 contracting, > 0 chaotic). burn_in: steps that
    only align the tangent vector (default T // 4)."""
    if batch_size < 1:
        raise ValueError(f"batch must be >= 1, got {batch_size}")
    cfg, task, _, cell = load_run(run_dir)
    rows = []
    for L in lengths or [task.length]:
        if L < 2:
            raise ValueError(f"lengths must be >= 2 for a Lyapunov exponent, got {L}")
        x, _, rows_end = unpack(sample_eval(task, batch_size, torch.Generator().manual_seed(seed), length=L))
        if rows_end is not None and int(rows_end.min()) < L:
            raise ValueError(f"lengths: the Lyapunov exponent follows whole trajectories of length {L}; the held-out "
                             f"sequences are as short as {int(rows_end.min())} (ask for a length they all reach)")
        b = L // 4 if burn_in is None else burn_in
        lle = largest_lyapunov(cell, cell.init_memory(batch_size), x, burn_in=b, gen=torch.Generator().manual_seed(seed))
        rows.append({"length": L, "burn_in": b, "sequences": batch_size, "cell": cfg.cell.kind, "lle_mean": lle.mean().item(),
                     "lle_median": lle.median().item(), "lle_min": lle.min().item(), "lle_max": lle.max().item()})
    return rows
