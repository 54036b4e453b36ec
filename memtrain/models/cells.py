"""Recurrent memory cells. Every cell keeps its memory as one flat (B, Z) tensor, Z = K*D, and offers

    init_memory(B) -> (B, Z)        the memory before any input (learned; SMT sets it to m_empty)
    update(m, x)   -> (B, Z)        m_{t+1} = f(m_t, x_{t+1}), x (B,) token ids
    readout(m)     -> (B, V)        logits for y_t from m_t
    sequence(m, x) -> (B, T, Z)     optional: the memories after each input of x (B, T) in one call
                                    (torch's fused cells); `methods.rollout` uses it when present

The readout is a `MemoryDecoder` of the teacher's shape reading the K memory tokens; after SMT it holds
a copy of the teacher decoder (`methods.smt.adopt_teacher`), so the RNN's prediction is exactly the teacher's
first-step prediction from the same memory. With `norm_memory` (default) every new memory is RMS
normalised per token (no parameters), so cell memories live where teacher memories live.

Legend: B batch, K memory tokens, D token width, Z = K*D, E input embedding width, V vocabulary.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .heads import OUTPUTS, make_output
from .inputs import init_input, input_embedding
from .layers import Block, MemoryDecoder, init_weights, rms_normalize, rotary
from .scan import linear_recurrence

# the memory shape of a cell built on its own (a run fills these from the teacher section, so that one
# set of numbers shapes both; see training/config.py resolve)
STANDALONE = {"mem_tokens": 4, "d_mem": 64, "n_heads": 4, "readout_depth": 1}
RESIDUAL_KINDS = ("mlp", "memtok")  # the cells with a residual form in m
FUSED_KINDS = ("torch-lstm", "torch-gru")  # torch's fused modules
PARA_KINDS = ("para-gru", "para-lstm")  # ParaRNN's cells: diagonal recurrence, closed-form diagonal / 2 x 2 Jacobians
TEXTBOOK_KINDS = FUSED_KINDS + PARA_KINDS  # BPTT baselines: no memory normalisation, a linear readout


@dataclass
class CellConfig:
    """The RNN cell (an SMT run's student, a BPTT run's network)."""
    kind: str = "mlp"  # one of mlp, memtok, elman, gru, lstm; BPTT baselines: torch-lstm, torch-gru (torch's fused nn.LSTM / nn.GRU), para-gru, para-lstm (ParaRNN's)
    vocab_size: int | None = None  # token ids 0..vocab_size-1 (None: the task's vocabulary)
    features: int | None = None  # real inputs: F features per step (None: teacher.features; null there too: token ids)
    output: str | None = None  # what the readout predicts: categorical | gaussian | student-t | quantile (None: teacher.output)
    targets: int | None = None  # G, the width of a real-valued target (None: teacher.targets, else the task's)
    mem_tokens: int | None = None  # K memory tokens (None: teacher.mem_tokens)
    d_mem: int | None = None  # D, width of one memory token (None: teacher.d_model)
    norm_memory: bool | None = None  # RMS-normalise each new memory token, parameter-free (None: true; the BPTT baselines have no such option)
    residual: bool | None = None  # mlp/memtok: m' = norm(m + f(m, x)) if true, norm(f(m, x)) if false (None: true); other cells have no such option
    hidden_mult: int = 4  # mlp: hidden width = hidden_mult * Z
    depth: int = 2  # memtok: Transformer blocks
    n_heads: int | None = None  # attention heads of memtok and of the readout (None: teacher.n_heads)
    readout_depth: int | None = None  # blocks in the readout head (None: teacher.decoder_depth)

    @property
    def mem_size(self) -> int:
        return self.mem_tokens * self.d_mem

    def filled(self) -> "CellConfig":
        """A copy with every unset shape at its standalone default and `residual` at the cell's own."""
        unset = {k: v for k, v in STANDALONE.items() if getattr(self, k) is None}
        if self.residual is None and self.kind in RESIDUAL_KINDS:
            unset["residual"] = True
        if self.norm_memory is None:
            unset["norm_memory"] = self.kind not in TEXTBOOK_KINDS
        if self.output is None:
            unset["output"] = "categorical"
        return dataclasses.replace(self, **unset)

    def validate(self) -> None:
        if self.kind not in CELLS:
            raise ValueError(f"cell.kind must be one of {sorted(CELLS)}, got {self.kind!r}")
        if self.vocab_size is not None and self.vocab_size < 1:
            raise ValueError(f"cell.vocab_size must be >= 1 (or null: from the task), got {self.vocab_size}")
        if self.output is not None and self.output not in OUTPUTS:
            raise ValueError(f"cell.output must be one of {OUTPUTS}, got {self.output!r}")
        for name in ("features", "targets", "mem_tokens", "d_mem", "hidden_mult", "depth", "n_heads", "readout_depth"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ValueError(f"cell.{name} must be >= 1, got {v}")
        if self.residual is not None and self.kind not in RESIDUAL_KINDS:
            raise ValueError(f"cell.residual applies to the cells with a residual form ({', '.join(RESIDUAL_KINDS)}); "
                             f"cell.kind={self.kind!r} has none: leave it null")
        if self.norm_memory and self.kind in TEXTBOOK_KINDS:
            raise ValueError(f"cell.kind={self.kind!r} is a textbook baseline cell, which does not normalise its state "
                             "between steps: leave cell.norm_memory null")
        if self.kind in ("lstm", "torch-lstm", "para-lstm") and self.mem_tokens is not None and self.mem_tokens % 2:
            raise ValueError(f"cell.kind={self.kind!r} keeps [h, c] as K/2 tokens each: cell.mem_tokens must be even, got {self.mem_tokens}")
        if self.d_mem is not None and self.n_heads is not None and (self.d_mem % self.n_heads or (self.d_mem // self.n_heads) % 2):
            raise ValueError(f"cell.d_mem={self.d_mem} must split into cell.n_heads={self.n_heads} heads of even width")


class Cell(nn.Module):
    """Base class: learned initial memory, readout head, and the (B, Z) contract. A pure network: how
    it runs through time is the caller's (`methods.rollout`). Built by `build_cell`, from a complete
    and checked config."""

    def __init__(self, cfg: CellConfig):
        super().__init__()
        self.cfg = cfg
        self.K, self.D, self.Z = cfg.mem_tokens, cfg.d_mem, cfg.mem_size
        # learned start memory: a random point where normalised memories live (zeros without norm)
        m_init = rms_normalize(torch.randn(self.Z), self.D) if cfg.norm_memory else torch.zeros(self.Z)
        self.m_init = nn.Parameter(m_init)
        self.output = make_output(cfg.output, cfg.vocab_size, cfg.targets)  # how the readout is read
        self.head = self.make_head(cfg)

    def make_head(self, cfg: CellConfig) -> nn.Module:
        """The readout: a MemoryDecoder of the teacher's shape over the K memory tokens."""
        return MemoryDecoder(self.D, cfg.n_heads, cfg.readout_depth, self.output.dim)

    def make_input(self, width: int, std: float | None = None) -> nn.Module:
        """The input embedding (token ids or real features, `models/inputs.py`) of `width`; with `std`,
        initialised at that scale (`inputs.init_input`)."""
        e = input_embedding(self.cfg.vocab_size, self.cfg.features, width)
        if std is not None:
            init_input(e, std)
        return e

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
        self.embed = self.make_input(self.D)
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
        self.embed = self.make_input(self.D)
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
        self.embed = self.make_input(self.Z)
        self.W = nn.Linear(self.Z, self.Z)
        init_weights(self)
        nn.init.orthogonal_(self.W.weight)

    def update(self, m, x):
        return self._finish(torch.tanh(self.W(m) + self.embed(x)))


class GRUCell(Cell):
    """GRU over the whole flat memory: m' = norm(GRU(e(x), m))."""

    def __init__(self, cfg: CellConfig):
        super().__init__(cfg)
        self.embed = self.make_input(self.D)
        self.gru = nn.GRUCell(self.D, self.Z)
        init_weights(self.head)
        init_input(self.embed, 1.0)

    def update(self, m, x):
        return self._finish(self.gru(self.embed(x), m))


class LSTMCell(Cell):
    """LSTM with memory [h, c]: h fills the first K/2 memory tokens, c the last K/2."""

    def __init__(self, cfg: CellConfig):
        super().__init__(cfg)
        self.embed = self.make_input(self.D)
        self.lstm = nn.LSTMCell(self.D, self.Z // 2)
        init_weights(self.head)
        init_input(self.embed, 1.0)

    def update(self, m, x):
        h, c = m.chunk(2, dim=-1)
        h, c = self.lstm(self.embed(x), (h, c))
        return self._finish(torch.cat([h, c], dim=-1))

    def jacobian_block_index(self):
        """(Z/2, 2): unit i's (h_i, c_i), the 2 x 2 blocks a structured trajectory solver keeps."""
        return _unit_pairs(self.Z, self.m_init.device)


class TorchLSTMCell(Cell):
    """torch's fused nn.LSTM, the baseline a sceptic picks: memory [h, c] (hidden Z/2 units each),
    input embedding of width D, a linear readout of h, a learned start memory (zeros at first), no
    normalisation. `sequence` runs the whole sequence in one call of the fused kernel."""

    def __init__(self, cfg: CellConfig):
        super().__init__(cfg)
        self.embed = self.make_input(self.D)
        self.lstm = nn.LSTM(self.D, self.Z // 2, batch_first=True)
        init_input(self.embed, 1.0)

    def make_head(self, cfg):
        return nn.Linear(self.Z // 2, self.output.dim)

    def readout(self, m):
        return self.head(m[..., : self.Z // 2])

    def update(self, m, x):
        """One step of torch's LSTM equations with the fused module's own weights, written out so that
        forward-mode AD and torch.func (Jacobians, Lyapunov exponents) work; `sequence` is the fast path."""
        h, c = m.chunk(2, dim=-1)
        i, f, g, o = self._gates(self.embed(x), h)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        return torch.cat([torch.sigmoid(o) * torch.tanh(c), c], dim=-1)

    def _gates(self, e, h):
        """The fused module's gate pre-activations from input embeddings e and hidden states h, in
        torch's order: input, forget, cell, output."""
        lstm = self.lstm
        return (F.linear(e, lstm.weight_ih_l0, lstm.bias_ih_l0) + F.linear(h, lstm.weight_hh_l0, lstm.bias_hh_l0)).chunk(4, dim=-1)

    def jacobian_block_index(self):
        return _unit_pairs(self.Z, self.m_init.device)

    def sequence(self, m0, x):
        """Memories after each input (B, T, Z) in one fused call. The kernel returns h_t only; c_t
        follows from the gates, c_t = f_t c_{t-1} + i_t g_t, a linear recurrence (models/scan.py: stepped
        on a CPU, a parallel scan elsewhere; exact up to rounding, differentiable)."""
        h0, c0 = m0.chunk(2, dim=-1)
        e = self.embed(x)  # (B, T, D)
        hs, _ = self.lstm(e, (h0[None].contiguous(), c0[None].contiguous()))  # (B, T, Z/2)
        h_prev = torch.cat([h0[:, None], hs[:, :-1]], dim=1)
        i, f, g, _ = self._gates(e, h_prev)
        cs = linear_recurrence(torch.sigmoid(f), torch.sigmoid(i) * torch.tanh(g), c0)
        return torch.cat([hs, cs], dim=-1)


class TorchGRUCell(Cell):
    """torch's fused nn.GRU: memory h (Z units), input embedding of width D, a linear readout, a
    learned start memory (zeros at first), no normalisation; `sequence` is one fused call."""

    def __init__(self, cfg: CellConfig):
        super().__init__(cfg)
        self.embed = self.make_input(self.D)
        self.gru = nn.GRU(self.D, self.Z, batch_first=True)
        init_input(self.embed, 1.0)

    def make_head(self, cfg):
        return nn.Linear(self.Z, self.output.dim)

    def readout(self, m):
        return self.head(m)

    def update(self, m, x):
        """One step of torch's GRU equations with the fused module's own weights (forward-mode AD and
        torch.func work on it); `sequence` is the fast path."""
        gi = F.linear(self.embed(x), self.gru.weight_ih_l0, self.gru.bias_ih_l0)
        gh = F.linear(m, self.gru.weight_hh_l0, self.gru.bias_hh_l0)
        (ri, zi, ni), (rh, zh, nh) = gi.chunk(3, dim=-1), gh.chunk(3, dim=-1)  # torch's order: reset, update, new
        r, z = torch.sigmoid(ri + rh), torch.sigmoid(zi + zh)
        return (1 - z) * torch.tanh(ni + r * nh) + z * m

    def sequence(self, m0, x):
        """Memories after each input (B, T, Z) in one fused call."""
        return self.gru(self.embed(x), m0[None].contiguous())[0]


class ParaGRUCell(Cell):
    """ParaRNN's GRU (Danieli et al. 2025): the recurrent weights are diagonal, so unit i of the next
    memory depends on unit i only and the Jacobian df/dm is diagonal (given in closed form):

        z = sig(a_z + w_z h),  r = sig(a_r + w_r h),  c = tanh(a_c + w_c (r h)),  h' = (1 - z) h + z c

    with a = W e(x) + b from the input alone and w_* vectors. Memory h (Z units), a linear readout."""

    def __init__(self, cfg: CellConfig):
        super().__init__(cfg)
        self.embed = self.make_input(self.D)
        self.inp = nn.Linear(self.D, 3 * self.Z)
        self.w = nn.Parameter(torch.empty(3, self.Z).uniform_(-1.0, 1.0))
        init_input(self.embed, 1.0)

    def make_head(self, cfg):
        return nn.Linear(self.Z, self.output.dim)

    def readout(self, m):
        return self.head(m)

    def _parts(self, h, x):
        a_z, a_r, a_c = self.inp(self.embed(x)).chunk(3, dim=-1)
        z, r = torch.sigmoid(a_z + self.w[0] * h), torch.sigmoid(a_r + self.w[1] * h)
        return z, r, torch.tanh(a_c + self.w[2] * r * h)

    def update(self, m, x):
        z, _, c = self._parts(m, x)
        return (1 - z) * m + z * c

    def jacobian_diag(self, m, x):
        z, r, c = self._parts(m, x)
        dz, dr = z * (1 - z) * self.w[0], r * (1 - r) * self.w[1]
        dc = (1 - c * c) * self.w[2] * (r + m * dr)
        return (1 - z) + dz * (c - m) + z * dc

    def jacobian_block_index(self):
        return torch.arange(self.Z, device=self.m_init.device)[:, None]  # 1 x 1 blocks: the Jacobian is diagonal

    def jacobian_block(self, m, x):
        return self.jacobian_diag(m, x)[..., None, None]


class ParaLSTMCell(Cell):
    """ParaRNN's LSTM: input and forget gates coupled (i = 1 - f) and diagonal recurrence, so unit i's
    (h_i, c_i) depends on (h_i, c_i) only and the Jacobian is 2 x 2 blocks (given in closed form):

        f = sig(a_f + w_f h),  o = sig(a_o + w_o h),  g = tanh(a_g + w_g h)
        c' = f c + (1 - f) g,  h' = o tanh(c')

    Memory [h, c] (Z/2 units each), a linear readout of h."""

    def __init__(self, cfg: CellConfig):
        super().__init__(cfg)
        self.U = self.Z // 2
        self.embed = self.make_input(self.D)
        self.inp = nn.Linear(self.D, 3 * self.U)
        self.w = nn.Parameter(torch.empty(3, self.U).uniform_(-1.0, 1.0))
        init_input(self.embed, 1.0)

    def make_head(self, cfg):
        return nn.Linear(self.Z // 2, self.output.dim)

    def readout(self, m):
        return self.head(m[..., : self.U])

    def _parts(self, m, x):
        h, c = m.chunk(2, dim=-1)
        a_f, a_o, a_g = self.inp(self.embed(x)).chunk(3, dim=-1)
        f, o, g = torch.sigmoid(a_f + self.w[0] * h), torch.sigmoid(a_o + self.w[1] * h), torch.tanh(a_g + self.w[2] * h)
        c_new = f * c + (1 - f) * g
        return h, c, f, o, g, c_new, torch.tanh(c_new)

    def update(self, m, x):
        *_, o, _, c_new, tc = self._parts(m, x)
        return torch.cat([o * tc, c_new], dim=-1)

    def jacobian_block_index(self):
        return _unit_pairs(self.Z, self.m_init.device)

    def jacobian_block(self, m, x):
        """(rows, Z/2, 2, 2): per unit [[dh'/dh, dh'/dc], [dc'/dh, dc'/dc]]."""
        _, c, f, o, g, _, tc = self._parts(m, x)
        df, do, dg = f * (1 - f) * self.w[0], o * (1 - o) * self.w[1], (1 - g * g) * self.w[2]
        dc_dh, dc_dc = df * (c - g) + (1 - f) * dg, f
        dh_dh, dh_dc = do * tc + o * (1 - tc * tc) * dc_dh, o * (1 - tc * tc) * dc_dc
        return torch.stack([torch.stack([dh_dh, dh_dc], -1), torch.stack([dc_dh, dc_dc], -1)], -2)


def _unit_pairs(Z: int, device=None) -> torch.Tensor:
    """The memory positions (h_i, c_i) of each LSTM unit i, as (Z/2, 2), for memory [h, c] (made where
    the cell lives: solvers index device tensors with it every iteration)."""
    h = torch.arange(Z // 2, device=device)
    return torch.stack([h, h + Z // 2], dim=-1)


CELLS: dict[str, type[Cell]] = {
    "mlp": MLPCell,
    "memtok": MemoryTokenCell,
    "elman": ElmanCell,
    "gru": GRUCell,
    "lstm": LSTMCell,
    "torch-lstm": TorchLSTMCell,
    "torch-gru": TorchGRUCell,
    "para-gru": ParaGRUCell,
    "para-lstm": ParaLSTMCell,
}


def build_cell(cfg: CellConfig) -> Cell:
    """A cell of config `cfg`, its unset settings at the cell's own defaults (`CellConfig.filled`; a
    run's resolved config has them already), checked."""
    cfg = cfg.filled()
    cfg.validate()
    if cfg.features is None and cfg.vocab_size is None:
        raise ValueError("cell.vocab_size must be set (>= 1) to build a cell that reads token ids")
    return CELLS[cfg.kind](cfg)


def check_compatible(cell: CellConfig, teacher) -> None:
    """Raise a clear error if a cell of config `cell` (a built cell's: complete) cannot follow the
    memories of a teacher of config `teacher` (a TeacherConfig): the same memory shape, vocabulary and
    readout shape. Checked once where the two networks meet: when SMT or DMT is built."""
    if cell.kind in TEXTBOOK_KINDS:
        raise ValueError(f"cell.kind={cell.kind!r} is a textbook baseline for BPTT (no memory normalisation, a linear "
                         "readout): it cannot follow a teacher's memories; use mlp, memtok, elman, gru or lstm")
    pairs = [("mem_tokens", cell.mem_tokens, teacher.mem_tokens), ("d_mem", cell.d_mem, teacher.d_model),
             ("vocab_size", cell.vocab_size, teacher.vocab_size), ("readout_depth", cell.readout_depth, teacher.decoder_depth),
             ("n_heads", cell.n_heads, teacher.n_heads), ("features", cell.features, teacher.features),
             ("output", cell.output, teacher.output), ("targets", cell.targets, teacher.targets)]
    bad = [f"cell.{n}={a} but teacher has {b}" for n, a, b in pairs if a != b]
    if bad:
        raise ValueError("cell and teacher memories do not match: " + "; ".join(bad))
