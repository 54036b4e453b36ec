"""The SMT teacher: an encoder that writes a memory after every timestep and a decoder that reads the
future back out of it (paper, "Supervised Memory Training", step 1).

Legend: B batch, T time, S = T+1 memories (before any input, then after each), K memory tokens,
D width, Z = K*D, V vocabulary, Tc encoder window, Tf future length, H heads, Dh head width.

Memory indexing used throughout the library: M[:, s] is the memory after reading s inputs, so
M[:, 0] = m_empty and M[:, t+1] = m_t of the paper (the memory after x_0..x_t). M[:, s] predicts
y_{s-1} (nothing for s = 0) and, with the future inputs x_s, x_{s+1}, ..., the outputs after it.

Two encoders, one interface (`Teacher.encode(x) -> (B, T+1, Z)`):
- "causal" (default): ONE pass over the sequence. The T tokens form a causal stream; T+1 groups of
  K register queries sit beside it. Group s sits at rotary position s, attends to tokens j < s and to
  the K registers of its own group, and is never attended to by tokens. This equals encoding every
  prefix separately with the same masks (`encode_reference`) at O(T^2 + T*K*T) attention cost; the
  register groups attend in chunks (`register_chunk`), so no (T*K)^2 mask is built. With a window Tc,
  tokens and registers see only the last Tc tokens in each layer, so the receptive field of m_t is
  depth*(Tc-1)+1 tokens, not Tc.
- "window": the authors' fidelity option. Each memory encodes exactly its last Tc inputs in a fresh
  bidirectional pass over [window tokens, K registers]: S separate passes of length Tc+K, slower.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .heads import OUTPUTS, make_output
from .inputs import FeatureEmbedding, input_embedding
from .layers import (
    Block,
    MemoryDecoder,
    band_attention,
    init_weights,
    rms_normalize,
    rotary,
)

ENCODERS = ("causal", "window")


@dataclass
class TeacherConfig:
    """The SMT teacher: an encoder that writes the memory, a decoder that predicts the future from it."""
    vocab_size: int | None = None  # token ids 0..vocab_size-1 (None: the task's vocabulary)
    features: int | None = None  # real inputs: F features per step (None: token ids; set from a real-valued task)
    output: str = "categorical"  # what the decoder predicts: categorical (token ids) | gaussian | student-t | quantile (real targets)
    targets: int | None = None  # G, the width of a real-valued target (None: the task's)
    mem_tokens: int = 4  # K, memory tokens per memory (Z = K * d_model)
    d_model: int = 64  # D, also the width of one memory token
    n_heads: int = 4  # attention heads of the encoder and the decoder
    encoder_depth: int = 2  # Transformer blocks of the encoder
    decoder_depth: int = 1  # Transformer blocks of the decoder (and of the cell's readout)
    encoder: str = "causal"  # "causal" (one pass) | "window" (per-window bidirectional, as the authors)
    window: int | None = None  # Tc; None = the whole prefix (needed for "window")
    token_shift: bool = True  # each encoder token also embeds the previous input (a "smeared key": retrieval ~2x sooner)
    running_sums: float | None = None  # each encoder token also embeds the sum of the inputs so far (token ids as one-hots) divided by this, about the largest count expected, and each decoder input the sum of the future inputs up to it: a count, which attention (an average) does not form; None: off

    @property
    def mem_size(self) -> int:
        return self.mem_tokens * self.d_model

    def validate(self) -> None:
        if self.encoder not in ENCODERS:
            raise ValueError(f"teacher.encoder must be one of {ENCODERS}, got {self.encoder!r}")
        if self.encoder == "window" and not self.window:
            raise ValueError("teacher.encoder='window' needs teacher.window (Tc) to be set")
        if self.vocab_size is not None and self.vocab_size < 1:
            raise ValueError(f"teacher.vocab_size must be >= 1 (or null: from the task), got {self.vocab_size}")
        if self.output not in OUTPUTS:
            raise ValueError(f"teacher.output must be one of {OUTPUTS}, got {self.output!r}")
        for name in ("features", "targets"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"teacher.{name} must be >= 1 or null, got {getattr(self, name)}")
        for name in ("mem_tokens", "d_model", "n_heads", "encoder_depth", "decoder_depth"):
            if getattr(self, name) < 1:
                raise ValueError(f"teacher.{name} must be >= 1, got {getattr(self, name)}")
        if self.window is not None and self.window < 1:
            raise ValueError(f"teacher.window must be >= 1 or None, got {self.window}")
        if self.running_sums is not None and not self.running_sums > 0:
            raise ValueError(f"teacher.running_sums must be > 0 (the divisor of the sums) or null (off), got {self.running_sums}")
        if self.running_sums is not None and self.window is not None:
            raise ValueError("teacher.running_sums sums the whole past, which teacher.window would not bound: use one or the other")
        if self.d_model % self.n_heads or (self.d_model // self.n_heads) % 2:
            raise ValueError(f"teacher.d_model={self.d_model} must split into teacher.n_heads={self.n_heads} heads of even width")


def register_chunk(Q: int, K: int, T: int) -> int:
    """How many register groups share one attention call over the shared tokens (`register_attention`).
    All Q groups in one call read Q*K register keys each, of which only their own K are unmasked: the
    wasted part grows as (Q*K)^2. Chunks of c groups read T + c*K keys, but each chunk copies the T
    token keys. The per-query cost ~ T + c*K + a*T/(c*K) is least near c*K = sqrt(a*T); a ~ 40 fits the
    measured CPU times (benchmarks/encoder_chunks.py). Returns Q (one call) where chunks would not pay."""
    n = round(Q * K / (40 * max(T, 1)) ** 0.5)
    return Q if n < 2 else -(-Q // n)


def register_attention(q_r, k_r, v_r, k_t, v_t, allowed, K, chunk: int | None = None):
    """Attention of register queries to (allowed) tokens and to their own group, with one softmax.

    q_r, k_r, v_r: (B, H, Q*K, Dh), Q groups of K registers. Tokens either shared by every group,
    k_t, v_t (B, H, T, Dh) with allowed (B, Q, T), or a band gathered per group, k_t, v_t
    (B, H, Q, W, Dh) with allowed (B, Q, W). Returns (B, H, Q*K, Dh).
    Shared tokens: fused attention calls over chunks of `chunk` groups (None: `register_chunk`), each
    chunk's queries reading [all tokens, the chunk's registers] with a (c*K, T + c*K) mask (a group's own
    registers on the diagonal blocks); the chunks ride in the batch dimension of one call. A band: per
    group over [its band, its registers], written out (torch's fused kernel is slower on these 5-d shapes).
    """
    B, H, QK, Dh = q_r.shape
    Q = QK // K
    if k_t.dim() == 4:
        T = k_t.shape[2]
        c = min(Q, chunk or register_chunk(Q, K, T))
        n = -(-Q // c)
        if n * c > Q:  # pad with groups that read nothing but their own (zero) registers; dropped below
            z = q_r.new_zeros(B, H, (n * c - Q) * K, Dh)
            q_r, k_r, v_r = (torch.cat([a, z], 2) for a in (q_r, k_r, v_r))
            allowed = F.pad(allowed, (0, 0, 0, n * c - Q))
        cK = c * K

        def chunks(a):  # (B, H, n*c*K, Dh) -> (B*n, H, c*K, Dh)
            return a.view(B, H, n, cK, Dh).transpose(1, 2).reshape(B * n, H, cK, Dh)

        def tokens(a):  # (B, H, T, Dh) -> (B*n, H, T, Dh), a copy per chunk
            return a[:, None].expand(B, n, H, T, Dh).reshape(B * n, H, T, Dh)

        group = torch.arange(c, device=q_r.device).repeat_interleave(K)  # (c*K,)
        own = (group[:, None] == group[None, :]).expand(B * n, cK, cK)
        reads = allowed.reshape(B, n, c, T).repeat_interleave(K, dim=2).reshape(B * n, cK, T)
        mask = torch.cat([reads, own], dim=2)[:, None]  # (B*n, 1, c*K, T + c*K)
        k, v = torch.cat([tokens(k_t), chunks(k_r)], 2), torch.cat([tokens(v_t), chunks(v_r)], 2)
        o = F.scaled_dot_product_attention(chunks(q_r), k, v, attn_mask=mask)  # (B*n, H, c*K, Dh)
        return o.view(B, n, H, cK, Dh).transpose(1, 2).reshape(B, H, n * cK, Dh)[:, :, :QK]
    qg, kg, vg = (a.view(B, H, Q, K, Dh) for a in (q_r * Dh ** -0.5, k_r, v_r))
    s_tok = (qg @ k_t.transpose(-1, -2)).masked_fill(~allowed[:, None, :, None, :], float("-inf"))  # (B, H, Q, K, W)
    p = torch.cat([s_tok, qg @ kg.transpose(-1, -2)], dim=-1).softmax(dim=-1)  # (B, H, Q, K, W+K)
    W = k_t.shape[-2]
    return (p[..., :W] @ v_t + p[..., W:] @ vg).reshape(B, H, QK, Dh)


def gather_band(t: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """t (B, H, T, Dh), idx (B, Q, W) token indices -> (B, H, Q, W, Dh), t[b, :, idx[b, q, w]]."""
    B, H, _, Dh = t.shape
    Q, W = idx.shape[1:]
    flat = idx.reshape(B, 1, Q * W, 1).expand(B, H, Q * W, Dh)
    return torch.gather(t, 2, flat).view(B, H, Q, W, Dh)


class Teacher(nn.Module):
    def __init__(self, cfg: TeacherConfig):
        super().__init__()
        cfg.validate()
        if cfg.vocab_size is None and (cfg.features is None or cfg.output == "categorical"):
            raise ValueError("teacher.vocab_size must be set (>= 1) to build a teacher that reads or predicts token ids")
        self.cfg = cfg
        D, K = cfg.d_model, cfg.mem_tokens
        self.embed = input_embedding(cfg.vocab_size, cfg.features, D)
        # previous-input embedding; token id V (zero features) stands for "no previous input" (the first step)
        self.prev_embed = None
        if cfg.token_shift:
            self.prev_embed = nn.Embedding(cfg.vocab_size + 1, D) if cfg.features is None else FeatureEmbedding(cfg.features, D)
        # running sums of the inputs (a count per token id, or per feature), embedded without a bias
        self.sum_embed = None
        if cfg.running_sums is not None:
            self.sum_embed = nn.Linear(cfg.vocab_size if cfg.features is None else cfg.features, D, bias=False)
        self.registers = nn.Parameter(torch.zeros(K, D))
        self.blocks = nn.ModuleList(Block(D, cfg.n_heads) for _ in range(cfg.encoder_depth))
        self.output = make_output(cfg.output, cfg.vocab_size, cfg.targets)  # how the decoder's outputs are read
        self.decoder = MemoryDecoder(D, cfg.n_heads, cfg.decoder_depth, self.output.dim)
        init_weights(self)
        nn.init.normal_(self.registers, 0.0, 1.0)

    # ---- encoder --------------------------------------------------------------------------
    def running_sums(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, V or F): at step t the sum of x_0..x_t (token ids as one-hots, a NaN feature as 0),
        divided by `running_sums`."""
        v = (F.one_hot(x, self.cfg.vocab_size).to(self.registers.dtype) if self.cfg.features is None
             else torch.nan_to_num(x, nan=0.0))
        return v.cumsum(1) / self.cfg.running_sums

    def embed_inputs(self, x: torch.Tensor, lo: int = 0) -> torch.Tensor:
        """Input embeddings for x[:, lo:] (B, T-lo, D); with token_shift, plus the previous input's; with
        running_sums, plus the embedded sums of the inputs up to each step."""
        h = self.embed(x[:, lo:])
        if self.prev_embed is not None:
            if self.cfg.features is None:
                prev = F.pad(x, (1, 0), value=self.cfg.vocab_size)[:, lo:-1]  # x_{t-1}, V before x_0
            else:
                prev = F.pad(x, (0, 0, 1, 0))[:, lo:-1]  # x_{t-1}, zeros before x_0
            h = h + self.prev_embed(prev)
        if self.sum_embed is not None:
            h = h + self.sum_embed(self.running_sums(x)[:, lo:])
        return h

    def encode(self, x: torch.Tensor, at: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, T) token ids or (B, T, F) features -> M (B, T+1, Z): the memory before any input and after every input.
        With `at` (B, Q) memory positions in 0..T, only those memories: (B, Q, Z), M[b, at[b, q]].
        The token stream is still one pass over x; register work scales with Q instead of T+1."""
        if self.cfg.encoder == "window":
            return self._encode_windows(x, at)
        return self._encode_one_pass(x, at)

    def empty_memory(self, batch_size: int = 1) -> torch.Tensor:
        """m_empty (B, Z): the encoder's memory for an empty past."""
        dev = self.registers.device
        x = (torch.zeros(batch_size, 0, dtype=torch.long, device=dev) if self.cfg.features is None
             else torch.zeros(batch_size, 0, self.cfg.features, dtype=self.registers.dtype, device=dev))
        return self.encode(x)[:, 0]

    def _register_keys(self, pos: torch.Tensor, T: int):
        """Which tokens each register group at memory position pos (B, Q) reads: group s sees tokens
        j < s (and j >= s - Tc with a window). Usually (None, allowed (B, Q, T)): a mask over the
        shared token keys. With a window at most T/8 long: the band's token indices (B, Q, Tc) and
        allowed (B, Q, Tc), so a group costs O(Tc), not O(T) (measured faster only for such windows)."""
        W = self.cfg.window
        if W is None or 8 * W > T:
            j = torch.arange(T, device=pos.device)
            ok = j < pos[..., None]
            return None, ok if W is None else ok & (j >= pos[..., None] - W)
        idx = pos[..., None] - W + torch.arange(W, device=pos.device)  # (B, Q, W): tokens s-W .. s-1
        return idx.clamp(min=0), idx >= 0

    def _encode_one_pass(self, x, at):
        B, T = x.shape[:2]
        K, D = self.cfg.mem_tokens, self.cfg.d_model
        pos = torch.arange(T + 1, device=x.device).expand(B, T + 1) if at is None else at  # (B, Q)
        Q = pos.shape[1]
        h_tok = self.embed_inputs(x)  # (B, T, D)
        h_reg = self.registers.expand(B, Q, K, D).reshape(B, Q * K, D)  # (B, Q*K, D)
        Dh, dt = D // self.cfg.n_heads, h_tok.dtype
        rot_tok = rotary(torch.arange(T, device=x.device), Dh, dt)
        cos, sin = rotary(pos.repeat_interleave(K, dim=1).reshape(-1), Dh, dt)  # group at memory position s: rotary s
        rot_reg = (cos.view(B, 1, Q * K, -1), sin.view(B, 1, Q * K, -1))
        band, allowed = self._register_keys(pos, T)
        for i, blk in enumerate(self.blocks):
            q_r, k_r, v_r = blk.attn.heads(blk.norm1(h_reg), rot_reg)
            if T > 0:
                q_t, k_t, v_t = blk.attn.heads(blk.norm1(h_tok), rot_tok)
            else:
                k_t = v_t = q_r[:, :, :0]
            keys = (k_t, v_t) if band is None else (gather_band(k_t, band), gather_band(v_t, band))
            h_reg = h_reg + blk.attn.merge(register_attention(q_r, k_r, v_r, *keys, allowed, K))
            h_reg = h_reg + blk.mlp(blk.norm2(h_reg))
            if T > 0 and i < len(self.blocks) - 1:  # the last layer's token outputs are never read
                o_t = band_attention(q_t, k_t, v_t, self.cfg.window)
                h_tok = h_tok + blk.attn.merge(o_t)
                h_tok = h_tok + blk.mlp(blk.norm2(h_tok))
        return rms_normalize(h_reg.reshape(B, Q, K * D), D)  # (B, Q, Z)

    def _encode_windows(self, x, at):
        B, T = x.shape[:2]
        K, D, Tc = self.cfg.mem_tokens, self.cfg.d_model, self.cfg.window
        S = T + 1
        pos = torch.arange(S, device=x.device).expand(B, S) if at is None else at  # (B, Q)
        Q = pos.shape[1]
        idx = pos[..., None] - Tc + torch.arange(Tc, device=x.device)  # (B, Q, Tc): window s holds x_{s-Tc} .. x_{s-1}
        real = idx >= 0
        e = F.pad(self.embed_inputs(x), (0, 0, Tc, 0))  # (B, Tc+T, D), left padding
        win = torch.gather(e, 1, (idx + Tc).reshape(B, Q * Tc, 1).expand(-1, -1, D)).view(B, Q, Tc, D)
        h = torch.cat([win, self.registers.expand(B, Q, K, D)], dim=2).reshape(B * Q, Tc + K, D)
        keep = torch.cat([real, real.new_ones(B, Q, K)], dim=2)  # (B, Q, Tc+K) key mask
        mask = keep.reshape(B * Q, 1, 1, Tc + K)
        pos_in = torch.cat([torch.arange(Tc, device=x.device), torch.full((K,), Tc, device=x.device)])
        rot = rotary(pos_in, D // self.cfg.n_heads, h.dtype)
        for blk in self.blocks:
            h = blk(h, rot, mask=mask)
        return rms_normalize(h[:, Tc:].reshape(B, Q, K * D), D)

    # ---- decoder --------------------------------------------------------------------------
    def decode(self, m: torch.Tensor, x_fut: torch.Tensor) -> torch.Tensor:
        """m (N, Z), x_fut (N, Tf-1) (or (N, Tf-1, F)) the next inputs -> the outputs' raw predictions (N, Tf,
        output.dim) for the next Tf steps (logits for token ids). With running_sums, each future input also
        embeds the running sum of the future inputs up to it (the memory holds the past's count, the
        decoder adds the future's: an answer that is a count is then in reach of every future step)."""
        N, K = m.shape[0], self.cfg.mem_tokens
        e = self.embed(x_fut)
        if self.sum_embed is not None:
            e = e + self.sum_embed(self.running_sums(x_fut))
        h = torch.cat([m.view(N, K, -1), e], dim=1)  # (N, K+Tf-1, D)
        return self.decoder(h)[:, K - 1:]

    def readout(self, m: torch.Tensor) -> torch.Tensor:
        """The decoder's first-step prediction from a memory: (N, Z) -> (N, output.dim)."""
        return self.decoder.first_step(m, self.cfg.mem_tokens)


def encode_reference(teacher: Teacher, x: torch.Tensor) -> torch.Tensor:
    """Slow reference: encode every prefix separately (for "window": every window, as the authors do),
    one sequence per memory, with a dense mask. Must equal `teacher.encode(x)`; used in tests only.
    The causal encoder's window limits what each layer sees, so its reference reads whole prefixes."""
    cfg = teacher.cfg
    B, T = x.shape[:2]
    K, D, Tc = cfg.mem_tokens, cfg.d_model, cfg.window
    out = []
    for s in range(T + 1):
        lo = max(0, s - Tc) if cfg.encoder == "window" else 0
        n = s - lo
        h = torch.cat([teacher.embed_inputs(x[:, :s], lo), teacher.registers.expand(B, K, D)], dim=1)  # (B, n+K, D)
        if cfg.encoder == "window":
            pos = torch.cat([torch.arange(n), torch.full((K,), n)])
            mask = None  # bidirectional over the window and the registers
        else:
            pos = torch.cat([torch.arange(lo, s), torch.full((K,), s)])
            mask = torch.zeros(n + K, n + K, dtype=torch.bool)
            ti = torch.arange(lo, s)
            mask[:n, :n] = ti[None, :] <= ti[:, None]  # tokens: causal
            if Tc is not None:
                mask[:n, :n] &= ti[None, :] > ti[:, None] - Tc
            mask[n:, :] = True  # registers see the window's tokens and each other
            if Tc is not None:
                mask[n:, :n] = ti[None, :] > s - 1 - Tc
        rot = rotary(pos.to(x.device), D // cfg.n_heads, h.dtype)
        for blk in teacher.blocks:
            h = blk(h, rot, mask=None if mask is None else mask.to(x.device))
        out.append(rms_normalize(h[:, n:].reshape(B, K * D), D))
    return torch.stack(out, dim=1)
