"""Backpropagation through time: the cell unrolled from its initial memory over the whole sequence,
cross-entropy at every supervised step. Also usable after SMT/DMT (start from their checkpoint).

Legend: B batch, T time, Z memory size, V vocabulary.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch.nn as nn

from ..models.cells import Cell
from .losses import readout_ce
from .rollout import rollout


@dataclass
class BPTTConfig:
    truncate: int | None = None  # cut the gradient every `truncate` steps (None: full BPTT)

    def validate(self) -> None:
        if self.truncate is not None and self.truncate < 1:
            raise ValueError(f"bptt.truncate must be >= 1 or None, got {self.truncate}")


class BPTT(nn.Module):
    def __init__(self, cell: Cell, cfg: BPTTConfig):
        super().__init__()
        cfg.validate()
        self.cell, self.cfg = cell, cfg

    def trainable(self):
        return list(self.cell.parameters())

    def forward(self, x, y, gen=None):  # what DistributedDataParallel calls
        return self.loss(x, y, gen)

    def loss(self, x, y, gen=None):
        B, T = x.shape
        M = rollout(self.cell, self.cell.init_memory(B), x, grad_horizon=self.cfg.truncate)  # (B, T+1, Z)
        loss = readout_ce(self.cell.readout, M[:, 1:], y)  # readout of m_t predicts y_t
        return loss, {"loss_readout": loss.detach()}

    def sync(self):
        pass
