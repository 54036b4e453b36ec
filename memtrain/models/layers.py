"""Transformer parts shared by the teacher, the memory-token cell and every cell's readout.

Legend: B batch, N tokens, H heads, Dh head width, D model width, K memory tokens, Z = K*D.

Pre-norm blocks with RMSNorm, rotary position embeddings (RoPE) and a GELU MLP (x4). Attention is
written so that callers can pass queries and keys from different token streams; the one-pass encoder
in `teacher.py` relies on that.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def rms_normalize(m: torch.Tensor, D: int) -> torch.Tensor:
    """Parameter-free RMS normalisation of each width-D memory token of a flat (..., K*D) memory."""
    shape = m.shape
    m = m.reshape(*shape[:-1], shape[-1] // D, D)
    return F.rms_norm(m, (D,)).reshape(shape)


class RMSNorm(nn.Module):
    def __init__(self, d: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(h, (h.shape[-1],), self.weight)


def rotary(pos: torch.Tensor, head_dim: int, dtype=torch.float32, base: float = 10000.0):
    """RoPE tables for positions pos (N,): (cos, sin), each (N, Dh/2). Compute once per forward."""
    half = head_dim // 2
    inv_freq = base ** (-torch.arange(half, device=pos.device, dtype=torch.float64) * 2 / head_dim)
    ang = pos.to(torch.float64)[:, None] * inv_freq[None, :]  # (N, Dh/2)
    return ang.cos().to(dtype), ang.sin().to(dtype)


def rope(h: torch.Tensor, rot) -> torch.Tensor:
    """Rotate pairs (i, i + Dh/2) of h (..., N, Dh) by the angles in rot = rotary(pos, Dh)."""
    cos, sin = rot
    half = h.shape[-1] // 2
    h1, h2 = h[..., :half], h[..., half:]
    return torch.cat([h1 * cos - h2 * sin, h1 * sin + h2 * cos], dim=-1)


def band_attention(q, k, v, window: int | None) -> torch.Tensor:
    """Causal attention in which query i sees keys i-window < j <= i (all j <= i for window None).
    q, k, v (..., T, Dh). The sequence is cut into blocks of `window` and each block attends to
    itself and the block before, so the cost is O(T * window) and no T x T mask is ever built."""
    T = q.shape[-2]
    if window is None or window >= T:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    W, n = window, -(-T // window)
    qb, kb, vb = (F.pad(t, (0, 0, 0, n * W - T)).unflatten(-2, (n, W)) for t in (q, k, v))  # (..., n, W, Dh)
    # keys and values of the block before each block (zeros before the first) and of the block itself
    k2, v2 = (torch.cat([F.pad(t, (0, 0, 0, 0, 1, 0))[..., :-1, :, :], t], dim=-2) for t in (kb, vb))  # (..., n, 2W, Dh)
    i = torch.arange(W, device=q.device)[:, None]
    j = torch.arange(2 * W, device=q.device)[None, :] - W  # key offset from the block's start
    ok = (j <= i) & (j > i - W)  # (W, 2W)
    mask = ok.expand(n, W, 2 * W).clone()
    mask[0] &= j >= 0  # the first block has no block before it
    o = F.scaled_dot_product_attention(qb, k2, v2, attn_mask=mask)  # (..., n, W, Dh)
    return o.flatten(-3, -2)[..., :T, :]


class Attention(nn.Module):
    def __init__(self, d: int, n_heads: int):
        super().__init__()
        if d % n_heads or (d // n_heads) % 2:
            raise ValueError(f"width {d} must split into {n_heads} heads of even width")
        self.n_heads = n_heads
        self.qkv = nn.Linear(d, 3 * d, bias=False)
        self.proj = nn.Linear(d, d, bias=False)

    def heads(self, h: torch.Tensor, rot):
        """h (B, N, D), rot = rotary(pos, Dh) -> q, k, v each (B, H, N, Dh), RoPE on q and k."""
        B, N, D = h.shape
        q, k, v = self.qkv(h).view(B, N, 3, self.n_heads, D // self.n_heads).permute(2, 0, 3, 1, 4)
        return rope(q, rot), rope(k, rot), v

    def merge(self, o: torch.Tensor) -> torch.Tensor:
        """(B, H, N, Dh) -> projected (B, N, D)."""
        B, H, N, Dh = o.shape
        return self.proj(o.transpose(1, 2).reshape(B, N, H * Dh))

    def forward(self, h, rot, mask=None, causal=False):
        q, k, v = self.heads(h, rot)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal and mask is None)
        return self.merge(o)


class MLP(nn.Module):
    def __init__(self, d: int, mult: int = 4):
        super().__init__()
        self.fc = nn.Linear(d, mult * d)
        self.out = nn.Linear(mult * d, d)

    def forward(self, h):
        return self.out(F.gelu(self.fc(h)))


class Block(nn.Module):
    """Pre-norm Transformer block: h + attn(norm(h)), then h + mlp(norm(h))."""

    def __init__(self, d: int, n_heads: int, mlp_mult: int = 4):
        super().__init__()
        self.norm1, self.attn = RMSNorm(d), Attention(d, n_heads)
        self.norm2, self.mlp = RMSNorm(d), MLP(d, mlp_mult)

    def forward(self, h, rot, mask=None, causal=False):
        h = h + self.attn(self.norm1(h), rot, mask=mask, causal=causal)
        return h + self.mlp(self.norm2(h))


class MemoryDecoder(nn.Module):
    """Causal Transformer over [K memory tokens, future input embeddings] -> logits at every position.
    The teacher's decoder, and (as a copy) an RNN cell's readout head."""

    def __init__(self, d: int, n_heads: int, depth: int, vocab_size: int):
        super().__init__()
        self.blocks = nn.ModuleList(Block(d, n_heads) for _ in range(depth))
        self.head_dim = d // n_heads
        self.norm = RMSNorm(d)
        self.head = nn.Linear(d, vocab_size)

    def forward(self, h: torch.Tensor) -> torch.Tensor:  # (N, L, D) -> (N, L, V)
        rot = rotary(torch.arange(h.shape[1], device=h.device), self.head_dim, h.dtype)
        for blk in self.blocks:
            h = blk(h, rot, causal=True)
        return self.head(self.norm(h))

    def first_step(self, m: torch.Tensor, K: int) -> torch.Tensor:
        """The prediction from a memory alone: (N, Z) -> (N, V) logits, output at token K-1."""
        return self(m.view(m.shape[0], K, -1))[:, K - 1]


def init_weights(module: nn.Module, std: float = 0.02) -> None:
    """GPT-style init: normal(0, std) for linear and embedding weights, zero biases."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, 0.0, std)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)
    # scale residual output projections down with depth (GPT-2)
    n_blocks = sum(isinstance(m, Block) for m in module.modules())
    for name, p in module.named_parameters():
        if name.endswith("attn.proj.weight") or name.endswith("mlp.out.weight"):
            nn.init.normal_(p, 0.0, std / math.sqrt(2 * max(n_blocks, 1)))
