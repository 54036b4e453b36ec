"""Evaluation of the RNN running alone from its initial memory, of the teacher, and of drift.

Legend: B batch, T time, S = T+1 memories, Z memory size.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..models.cells import Cell
from ..models.teacher import Teacher
from .rollout import rollout


def _scores(logits: torch.Tensor, y: torch.Tensor) -> dict:
    ce = F.cross_entropy(logits.float(), y).item()  # nats per supervised token
    # bits per token: bits per byte on byte-level text
    return {"acc": (logits.argmax(-1) == y).float().mean().item(), "ce": ce, "bits": ce / math.log(2)}


@torch.no_grad()
def evaluate(cell: Cell, teacher: Teacher | None, x: torch.Tensor, y: torch.Tensor) -> dict:
    """Accuracy and cross-entropy on supervised positions for the cell alone (from init_memory, never
    seeing a teacher memory) and the teacher; drift[s] = MSE(m^_s, M[:, s]) for s = 0..T."""
    B, T = x.shape
    mask = y >= 0
    M_hat = rollout(cell, cell.init_memory(B), x)  # (B, S, Z)
    out = {f"rnn_{k}": v for k, v in _scores(cell.readout(M_hat[:, 1:][mask]), y[mask]).items()}
    if teacher is not None:
        M = teacher.encode(x)  # (B, S, Z)
        out.update({f"teacher_{k}": v for k, v in _scores(teacher.readout(M[:, 1:][mask]), y[mask]).items()})
        drift = (M_hat.float() - M.float()).pow(2).mean(-1).mean(0)  # (S,)
        out["drift"] = [round(v, 6) for v in drift.tolist()]
        # how much the teacher's final memories differ between sequences: drift is small only
        # relative to this (a collapsed memory space makes any drift look small)
        out["spread"] = M[:, -1].float().var(0).mean().item()
        out["dyn_rel"] = one_step_error(cell, M, x)
    return out


def one_step_error(cell: Cell, M: torch.Tensor, x: torch.Tensor, budget: int = 2048) -> float:
    """Followability: MSE(cell.update(M[:, s], x_s), M[:, s+1]) / MSE(M[:, s], M[:, s+1]) over the
    first sequences' transitions (about `budget` of them, one batched call). Near 1 the cell cannot
    compute the teacher's transitions; well below 1 DMT can make it follow (EXPERIMENTS.md 5)."""
    B, T = x.shape
    n = min(B, max(1, budget // max(T, 1)))
    m, m_next, Z = M[:n, :-1].float(), M[:n, 1:].float(), M.shape[-1]
    pred = cell.update(M[:n, :-1].reshape(-1, Z), x[:n].reshape(-1)).float().view_as(m)
    return ((pred - m_next).pow(2).mean() / (m - m_next).pow(2).mean().clamp_min(1e-12)).item()


def drift_at(drift: list, fractions=(0.25, 0.5, 1.0)) -> dict:
    """Drift at a few horizons (fractions of T), for logs and tables."""
    T = len(drift) - 1
    return {f"drift@{max(1, round(f * T))}": drift[max(1, round(f * T))] for f in fractions}
