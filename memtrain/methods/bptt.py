"""Backpropagation through time: the cell unrolled from its initial memory over the whole sequence,
cross-entropy at every supervised step. Also usable after SMT/DMT (start from their checkpoint).

Legend: B batch, T time, Z memory size, V vocabulary.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..lengths import mask_targets
from .base import Method
from .losses import readout_loss
from .rollout import rollout


@dataclass
class BPTTConfig:
    """Backpropagation through time: the cell unrolled over the whole sequence."""
    grad_horizon: int | None = None  # cut the gradient every this many steps (None: full BPTT; k: truncated BPTT)

    def validate(self) -> None:
        if self.grad_horizon is not None and self.grad_horizon < 1:
            raise ValueError(f"bptt.grad_horizon must be >= 1 or None, got {self.grad_horizon}")


class BPTT(Method):
    name, config_class = "bptt", BPTTConfig

    def loss(self, x, y, gen=None, lengths=None):
        B, T = x.shape[:2]
        M = rollout(self.cell, self.cell.init_memory(B), x, self.cfg.grad_horizon, self.rollout, lengths)  # (B, T+1, Z)
        loss = readout_loss(self.cell.output, self.cell.readout, M[:, 1:], mask_targets(y, lengths))  # readout of m_t predicts y_t
        return loss, {"loss_readout": loss.detach()}
