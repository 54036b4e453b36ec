"""Recurrent memory cells. Every cell keeps its memory as one flat (B, Z) tensor, Z = K*D, and offers

    init_memory(B) -> (B, Z)        the memory before any input (learned; SMT sets it to m_empty)
    update(m, x)   -> (B, Z)        m_{t+1} = f(m_t, x_{t+1}), x (B,) token ids
    readout(m)     -> (B, V)        logits for y_t from m_t

The readout is a `MemoryDecoder` of the teacher's shape reading the K memory tokens; after SMT it holds
a copy of the teacher decoder (`adopt_teacher`), so the RNN's prediction is exactly the teacher's
first-step prediction from the same memory. With `norm_memory` (default) every new memory is RMS
normalised per token (no parameters), so cell memories live where teacher memories live.

Legend: B batch, K memory tokens, D token width, Z = K*D, E input embedding width, V vocabulary.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .layers import Block, init_weights, rms_normalize, rotary
from .teacher import MemoryDecoder, Teacher


@dataclass
class CellConfig:
    kind: str = "mlp"  # one of CELLS
    vocab_size: int = 0  # 0: take it from the task
    mem_tokens: int = 4  # K
    d_mem: int = 64  # D, width of one memory token
    norm_memory: bool = True  # RMS-normalise each new memory token (parameter-free)
    residual: bool = True  # mlp/memtok: m' = norm(m + f(m, x)); False: m' = norm(f(m, x))
    hidden_mult: int = 4  # mlp: hidden width = hidden_mult * Z
    depth: int = 2  # memtok: Transformer blocks
    n_heads: int = 4  # memtok, and the readout head
    readout_depth: int = 1  # blocks in the readout head (= teacher decoder depth)

    @property
    def mem_size(self) -> int:
        return self.mem_tokens * self.d_mem

    def validate(self) -> None:
        if self.kind not in CELLS:
            raise ValueError(f"cell.kind must be one of {sorted(CELLS)}, got {self.kind!r}")
        if self.vocab_size < 0:
            raise ValueError(f"cell.vocab_size must be >= 1 (or 0: from the task), got {self.vocab_size}")
        for name in ("mem_tokens", "d_mem", "hidden_mult", "depth", "n_heads", "readout_depth"):
            if getattr(self, name) < 1:
                raise ValueError(f"cell.{name} must be >= 1, got {getattr(self, name)}")
        if self.kind == "lstm" and self.mem_tokens % 2:
            raise ValueError(f"cell.kind='lstm' keeps [h, c] as K/2 tokens each: cell.mem_tokens must be even, got {self.mem_tokens}")
        if self.d_mem % self.n_heads or (self.d_mem // self.n_heads) % 2:
            raise ValueError(f"cell.d_mem={self.d_mem} must split into cell.n_heads={self.n_heads} heads of even width")


class Cell(nn.Module):
    """Base class: learned initial memory, readout head, and the (B, Z) contract."""

    def __init__(self, cfg: CellConfig):
        super().__init__()
        cfg.validate()
        if cfg.vocab_size < 1:
            raise ValueError("cell.vocab_size must be set (>= 1) to build a cell")
        self.cfg = cfg
        self.K, self.D, self.Z = cfg.mem_tokens, cfg.d_mem, cfg.mem_size
        # learned start memory: a random point where normalised memories live (zeros without norm)
        m_init = rms_normalize(torch.randn(self.Z), self.D) if cfg.norm_memory else torch.zeros(self.Z)
        self.m_init = nn.Parameter(m_init)
        self.head = MemoryDecoder(self.D, cfg.n_heads, cfg.readout_depth, cfg.vocab_size)

    def init_memory(self, batch_size: int) -> torch.Tensor:
        return self.m_init.expand(batch_size, self.Z)

    def update(self, m: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def readout(self, m: torch.Tensor) -> torch.Tensor:
        return self.head.first_step(m, self.K)

    def _finish(self, m: torch.Tensor) -> torch.Tensor:
        return rms_normalize(m, self.D) if self.cfg.norm_memory else m


class MLPCell(Cell):
    """Non-gated MLP cell: m' = norm(m + W2 gelu(W1 [m, e(x)])) (without `residual`: no `m +`)."""

    def __init__(self, cfg: CellConfig):
        super().__init__(cfg)
        self.embed = nn.Embedding(cfg.vocab_size, self.D)
        self.fc = nn.Linear(self.Z + self.D, cfg.hidden_mult * self.Z)
        self.out = nn.Linear(cfg.hidden_mult * self.Z, self.Z)
        init_weights(self)

    def update(self, m, x):
        h = self.out(F.gelu(self.fc(torch.cat([m, self.embed(x)], dim=-1))))  # (B, Z)
        return self._finish(m + h if self.cfg.residual else h)


class MemoryTokenCell(Cell):
    """The paper's memory-token RNN: a bidirectional Transformer over [K memory tokens, e(x)];
    the first K outputs are the next memory. Its residual stream makes it residual in m."""

    def __init__(self, cfg: CellConfig):
        super().__init__(cfg)
        self.embed = nn.Embedding(cfg.vocab_size, self.D)
        self.blocks = nn.ModuleList(Block(self.D, cfg.n_heads) for _ in range(cfg.depth))
        init_weights(self)

    def update(self, m, x):
        B = m.shape[0]
        h = torch.cat([m.view(B, self.K, self.D), self.embed(x)[:, None]], dim=1)  # (B, K+1, D)
        rot = rotary(torch.arange(self.K + 1, device=m.device), self.D // self.cfg.n_heads, h.dtype)
        for blk in self.blocks:
            h = blk(h, rot)
        new = h[:, : self.K].reshape(B, self.Z)
        return self._finish(new if self.cfg.residual else new - m)


class ElmanCell(Cell):
    """Elman RNN: m' = norm(tanh(W m + U x + b)), U x an embedding of width Z."""

    def __init__(self, cfg: CellConfig):
        super().__init__(cfg)
        self.embed = nn.Embedding(cfg.vocab_size, self.Z)
        self.W = nn.Linear(self.Z, self.Z)
        init_weights(self)
        nn.init.orthogonal_(self.W.weight)

    def update(self, m, x):
        return self._finish(torch.tanh(self.W(m) + self.embed(x)))


class GRUCell(Cell):
    """GRU over the whole flat memory: m' = norm(GRU(e(x), m))."""

    def __init__(self, cfg: CellConfig):
        super().__init__(cfg)
        self.embed = nn.Embedding(cfg.vocab_size, self.D)
        self.gru = nn.GRUCell(self.D, self.Z)
        init_weights(self.head)
        nn.init.normal_(self.embed.weight, 0.0, 1.0)

    def update(self, m, x):
        return self._finish(self.gru(self.embed(x), m))


class LSTMCell(Cell):
    """LSTM with memory [h, c]: h fills the first K/2 memory tokens, c the last K/2."""

    def __init__(self, cfg: CellConfig):
        super().__init__(cfg)
        self.embed = nn.Embedding(cfg.vocab_size, self.D)
        self.lstm = nn.LSTMCell(self.D, self.Z // 2)
        init_weights(self.head)
        nn.init.normal_(self.embed.weight, 0.0, 1.0)

    def update(self, m, x):
        h, c = m.chunk(2, dim=-1)
        h, c = self.lstm(self.embed(x), (h, c))
        return self._finish(torch.cat([h, c], dim=-1))


CELLS: dict[str, type[Cell]] = {
    "mlp": MLPCell,
    "memtok": MemoryTokenCell,
    "elman": ElmanCell,
    "gru": GRUCell,
    "lstm": LSTMCell,
}


def build_cell(cfg: CellConfig) -> Cell:
    cfg.validate()
    return CELLS[cfg.kind](cfg)


def check_compatible(cell: Cell, teacher: Teacher) -> None:
    """Raise a clear error if the cell cannot follow this teacher's memories."""
    c, t = cell.cfg, teacher.cfg
    pairs = [("mem_tokens", c.mem_tokens, t.mem_tokens), ("d_mem", c.d_mem, t.d_model),
             ("vocab_size", c.vocab_size, t.vocab_size), ("readout_depth", c.readout_depth, t.decoder_depth),
             ("n_heads", c.n_heads, t.n_heads)]
    bad = [f"cell.{n}={a} but teacher has {b}" for n, a, b in pairs if a != b]
    if bad:
        raise ValueError("cell and teacher memories do not match: " + "; ".join(bad))


@torch.no_grad()
def adopt_teacher(cell: Cell, teacher: Teacher) -> None:
    """The explicit step that gives the RNN its readout and start: copy the teacher decoder into the
    cell's readout head and the teacher's m_empty into the cell's initial memory."""
    check_compatible(cell, teacher)
    cell.head.load_state_dict(teacher.decoder.state_dict())
    cell.m_init.copy_(teacher.empty_memory(1)[0])
