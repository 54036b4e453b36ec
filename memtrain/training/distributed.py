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


def loss_generator(seed: int, rank: int, step: int, micro: int) -> torch.Generator:
    """A CPU generator for the randomness inside one micro-batch's loss (no state to checkpoint)."""
    mixed = (seed * 0x9E3779B1 + rank * 0x85EBCA77 + step * 0xC2B2AE3D + micro * 0x27D4EB2F) % (2**63 - 1)
    return torch.Generator().manual_seed(mixed)


def rows_of(world: World, x: torch.Tensor, y: torch.Tensor, batch_size: int):
    """This rank's rows of the global batch."""
    n = batch_size // world.size
    return x[world.rank * n: (world.rank + 1) * n], y[world.rank * n: (world.rank + 1) * n]


def check_batch(batch_size: int, world: World, grad_accum: int) -> None:
    if batch_size % (world.size * grad_accum):
        raise ValueError(f"train.batch_size={batch_size} must split evenly over {world.size} process(es) x "
                         f"train.grad_accum={grad_accum} micro-batches")
