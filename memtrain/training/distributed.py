"""Several processes, one run: `torchrun --nproc_per_node N -m memtrain.cli train ...` (or the
`memtrain` script under torchrun) trains the same run data-parallel with PyTorch's
DistributedDataParallel. Without torchrun's environment everything here is a no-op (one process).

How the work is split, so that the number of processes never changes what is trained:
- `train.batch_size` is the global batch of one update. Every rank draws the same global batch from
  the same data generator and keeps its own rows (rank r takes rows r*B/N .. (r+1)*B/N - 1), then
  `train.grad_accum` micro-batches of those. No sequence is seen twice, and N processes read the same
  data stream as one, so a run can be resumed with another number of processes.
- The randomness inside a loss (which memories SMT decodes, its uniformity sample, DMT's start
  positions) comes from a generator seeded from (seed, rank, step, micro-batch): different on every
  rank, reproducible, and with no state to save.
- DDP averages the gradients of the ranks' mean losses. Where every rank's rows carry the same number
  of supervised targets (e.g. retrieval) that is the global mean, and N x B/N matches 1 x B up to
  float rounding; SMT's uniformity loss is computed within each rank's rows (like batch-norm
  statistics under DDP), a different estimate of the same quantity.
- Rank 0 alone writes metrics, checkpoints and the progress bar; every rank reads a checkpoint to
  resume, so on several machines out_dir must be on a shared file system.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class World:
    rank: int = 0
    local_rank: int = 0
    size: int = 1
    owner: bool = False  # this setup() created the process group, so its teardown() ends it

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def launched() -> bool:
    """True in a process started by torchrun (or anything that sets its environment variables)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def main_process() -> bool:
    """False in every process torchrun started but rank 0 (they print nothing)."""
    return os.environ.get("RANK", "0") == "0"


def setup(device_kind: str) -> World:
    """Join the process group torchrun describes (NCCL on CUDA, gloo otherwise); one process: no-op."""
    if not launched():
        return World()
    try:
        rank, size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local = int(os.environ.get("LOCAL_RANK", rank))
    except ValueError:
        raise ValueError("RANK / WORLD_SIZE / LOCAL_RANK must be integers (they are set by torchrun)") from None
    if size == 1:
        return World()
    if not dist.is_available():
        raise ValueError("this PyTorch build has no torch.distributed; run one process")
    owner = not dist.is_initialized()
    if owner:
        backend = "nccl" if device_kind == "cuda" else "gloo"
        if device_kind == "cuda":
            torch.cuda.set_device(local)
        dist.init_process_group(backend=backend)
    return World(rank=rank, local_rank=local, size=size, owner=owner)


def teardown(world: World) -> None:
    """End the process group if `world` created it (a demo's stages share the one it opened)."""
    if world.owner and dist.is_initialized():
        dist.destroy_process_group()


def barrier(world: World) -> None:
    if world.distributed:
        dist.barrier()


def sum_across(world: World, values: list[float], device) -> list[float]:
    """The element-wise sum of `values` over all ranks (one small all-reduce); one process: as is."""
    if not world.distributed:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def share(world: World, obj):
    """Rank 0's `obj` (small and picklable: a method's Decision) on every rank; one process: as is."""
    if not world.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def loss_generator(seed: int, rank: int, step: int, micro: int) -> torch.Generator:
    """A CPU generator for the randomness inside one micro-batch's loss (no state to checkpoint)."""
    mixed = (seed * 0x9E3779B1 + rank * 0x85EBCA77 + step * 0xC2B2AE3D + micro * 0x27D4EB2F) % (2**63 - 1)
    return torch.Generator().manual_seed(mixed)


def rows_of(world: World, x: torch.Tensor, y: torch.Tensor, batch_size: int, lengths: torch.Tensor | None = None):
    """This rank's rows of the global batch: (x, y), or (x, y, lengths) where rows have lengths."""
    n = batch_size // world.size
    rows = slice(world.rank * n, (world.rank + 1) * n)
    return (x[rows], y[rows]) if lengths is None else (x[rows], y[rows], lengths[rows])


def check_batch(batch_size: int, world: World, grad_accum: int) -> None:
    if batch_size % (world.size * grad_accum):
        raise ValueError(f"train.batch_size={batch_size} must split evenly over {world.size} process(es) x "
                         f"train.grad_accum={grad_accum} micro-batches")


def local_device(world: World, device: torch.device) -> torch.device:
    """This process's device: under torchrun on CUDA, the GPU of its local rank."""
    if device.type == "cuda" and world.distributed:
        return torch.device("cuda", world.local_rank)
    return device


def wrap(method: torch.nn.Module, params: list, world: World, device: torch.device, has_unused) -> torch.nn.Module:
    """What computes the loss: the method itself, or under torchrun its DistributedDataParallel
    wrapper. Parameters outside `params` (frozen, or copies) are marked as needing no gradient so DDP
    does not reduce them; `has_unused()` says whether some of `params` get no gradient from a loss
    (DDP then searches for them every step, which it only should where there are some)."""
    if not world.distributed:
        return method
    for p in set(method.parameters()) - set(params):
        p.requires_grad_(False)
    return torch.nn.parallel.DistributedDataParallel(
        method, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=has_unused())


@dataclass
class Agreement:
    """What every rank decides alike after an update, from one small all-reduce."""
    loss: float  # the mean loss over ranks
    metrics: dict  # the mean of each metric over ranks
    bad_loss: bool  # some rank's loss was not finite
    stop: bool  # some rank received a stop signal
    seconds: float  # the update's mean wall-clock over ranks


def agree(world: World, loss: float, metrics: dict, stop: bool, seconds: float, device) -> Agreement:
    """Average the loss, metrics and timing over ranks; OR the non-finite and stop flags.
    (NCCL reduces CUDA tensors only: `device` is where the small vector goes.)"""
    keys = sorted(metrics)
    local = [loss, *[metrics[k] for k in keys], float(not math.isfinite(loss)), float(stop), seconds]
    total = sum_across(world, local, device)
    n = world.size
    return Agreement(loss=total[0] / n, metrics={k: v / n for k, v in zip(keys, total[1:1 + len(keys)])},
                     bad_loss=total[-3] > 0, stop=total[-2] > 0, seconds=total[-1] / n)
