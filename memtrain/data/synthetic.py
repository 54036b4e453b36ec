"""Synthetic memory tasks: every batch is freshly generated, so the held-out split (`split="val"`)
is simply another draw (from the evaluation's own generator).

Every task is a dataclass with a `length` and difficulty fields, a `vocab_size`, and
`sample(batch_size, generator, length=None, split="train") -> (x, y)`: int64 tensors (B, T), y = -1
where a position is unsupervised. y_t is predicted from the memory after reading x_0..x_t.

Example (retrieval, length 10, 4 symbols; 0 marks the needle and asks for it at the end):
    x = 3 1 0 4 2 2 1 3 4 0        y = -1 -1 -1 -1 -1 -1 -1 -1 -1 4
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


def _check_length(name: str, length: int, minimum: int) -> None:
    if length < minimum:
        raise ValueError(f"task '{name}' needs length >= {minimum}, got {length}")


def _check_at_least(name: str, **values) -> None:
    for key, (value, minimum) in values.items():
        if value < minimum:
            raise ValueError(f"task '{name}' needs {key} >= {minimum}, got {value}")


def _rand_ints(lo: int, hi: int, shape, gen) -> torch.Tensor:
    return torch.randint(lo, hi, shape, generator=gen)


@dataclass
class Retrieval:
    """Needle in a haystack: random symbols 1..n; a marker 0 precedes the needle, placed in the first
    `max_frac` of the sequence; the last input is 0 again and asks for the needle."""
    length: int = 64
    n_symbols: int = 8
    max_frac: float = 0.5

    def __post_init__(self):
        _check_length("retrieval", self.length, 4)
        _check_at_least("retrieval", n_symbols=(self.n_symbols, 1))
        if not 0 < self.max_frac <= 1:
            raise ValueError(f"task 'retrieval' needs 0 < max_frac <= 1, got {self.max_frac}")

    @property
    def vocab_size(self) -> int:
        return self.n_symbols + 1

    @property
    def recall_gap(self) -> int:
        """The most steps between reading an input and the output that asks for it (the needle at
        position 1, asked at T-1)."""
        return self.length - 2

    def sample(self, batch_size, gen=None, length=None, split="train"):
        T = self.length if length is None else length
        _check_length("retrieval", T, 4)
        B = batch_size
        x = _rand_ints(1, self.n_symbols + 1, (B, T), gen)
        hi = max(2, min(T - 2, int(T * self.max_frac)))
        pos = _rand_ints(1, hi, (B,), gen)  # needle position in 1 .. hi-1, marker just before
        needle = _rand_ints(1, self.n_symbols + 1, (B,), gen)
        rows = torch.arange(B)
        x[rows, pos - 1] = 0
        x[rows, pos] = needle
        x[:, -1] = 0
        y = torch.full((B, T), -1, dtype=torch.long)
        y[:, -1] = needle
        return x, y


@dataclass
class Copy:
    """String copy: L = (length-1)//2 random symbols 1..n, a separator 0, then the string again as
    teacher-forced input; y asks for the string (reversed with `reverse`) after the separator."""
    length: int = 64
    n_symbols: int = 8
    reverse: bool = False

    def __post_init__(self):
        _check_length("copy", self.length, 3)
        _check_at_least("copy", n_symbols=(self.n_symbols, 1))

    @property
    def vocab_size(self) -> int:
        return self.n_symbols + 1

    @property
    def recall_gap(self) -> int:
        """The first symbol is asked L steps later (reversed: 2L-1, as the last answer)."""
        L = (self.length - 1) // 2
        return 2 * L - 1 if self.reverse else L

    def sample(self, batch_size, gen=None, length=None, split="train"):
        T = self.length if length is None else length
        _check_length("copy", T, 3)
        L = (T - 1) // 2
        s = _rand_ints(1, self.n_symbols + 1, (batch_size, L), gen)
        target = s.flip(1) if self.reverse else s
        x = torch.zeros(batch_size, T, dtype=torch.long)
        y = torch.full((batch_size, T), -1, dtype=torch.long)
        x[:, :L] = s
        x[:, L] = 0
        x[:, L + 1: 2 * L] = target[:, :-1]
        y[:, L: 2 * L] = target
        return x, y


@dataclass
class Stack:
    """Stack state tracking: x_t = symbol in 1..n pushes it, x_t = 0 pops; y_t is the popped symbol
    (-1 on pushes). Pushes and pops are equally likely while the stack is neither empty nor full."""
    length: int = 64
    n_symbols: int = 4
    max_depth: int = 10

    def __post_init__(self):
        _check_length("stack", self.length, 1)
        _check_at_least("stack", n_symbols=(self.n_symbols, 1), max_depth=(self.max_depth, 1))

    @property
    def vocab_size(self) -> int:
        return self.n_symbols + 1

    @property
    def recall_gap(self) -> int:
        """A symbol pushed first may be popped last."""
        return self.length - 1

    def sample(self, batch_size, gen=None, length=None, split="train"):
        T = self.length if length is None else length
        _check_length("stack", T, 1)
        B = batch_size
        stack = torch.zeros(B, self.max_depth, dtype=torch.long)
        depth = torch.zeros(B, dtype=torch.long)
        coin = torch.rand(B, T, generator=gen) < 0.5
        sym = _rand_ints(1, self.n_symbols + 1, (B, T), gen)
        x = torch.zeros(B, T, dtype=torch.long)
        y = torch.full((B, T), -1, dtype=torch.long)
        rows = torch.arange(B)
        for t in range(T):
            push = (depth == 0) | ((depth < self.max_depth) & coin[:, t])
            top = stack[rows, (depth - 1).clamp(min=0)]
            x[:, t] = torch.where(push, sym[:, t], 0)
            y[:, t] = torch.where(push, -1, top)
            stack[rows[push], depth[push]] = sym[push, t]
            depth = torch.where(push, depth + 1, depth - 1)
        return x, y


@dataclass
class KeyValue:
    """Associative recall: pairs (key, value) with distinct keys, then a query key; y at the query
    is its value. Keys are 1..n_keys, values n_keys+1..n_keys+n_values, 0 pads the front."""
    length: int = 33
    n_keys: int = 32
    n_values: int = 8

    def __post_init__(self):
        _check_length("kv", self.length, 3)
        _check_at_least("kv", n_keys=(self.n_keys, (self.length - 1) // 2), n_values=(self.n_values, 1))

    @property
    def vocab_size(self) -> int:
        return 1 + self.n_keys + self.n_values

    @property
    def recall_gap(self) -> int:
        """The first key is read 2n steps before the query that may ask for its value."""
        return 2 * ((self.length - 1) // 2)

    def sample(self, batch_size, gen=None, length=None, split="train"):
        T = self.length if length is None else length
        _check_length("kv", T, 3)
        n = (T - 1) // 2
        if n > self.n_keys:
            raise ValueError(f"task 'kv' with length {T} needs {n} distinct keys but n_keys={self.n_keys}")
        B = batch_size
        keys = torch.rand(B, self.n_keys, generator=gen).argsort(1)[:, :n] + 1  # (B, n) distinct
        vals = _rand_ints(self.n_keys + 1, self.n_keys + self.n_values + 1, (B, n), gen)
        q = _rand_ints(0, n, (B,), gen)
        rows = torch.arange(B)
        x = torch.zeros(B, T, dtype=torch.long)
        pairs = torch.stack([keys, vals], dim=-1).reshape(B, 2 * n)
        x[:, T - 1 - 2 * n: T - 1] = pairs
        x[:, -1] = keys[rows, q]
        y = torch.full((B, T), -1, dtype=torch.long)
        y[:, -1] = vals[rows, q]
        return x, y


@dataclass
class ModularICL:
    """In-context learning of a map a -> (w*a + b) mod p, with w, b drawn per sequence from
    0..difficulty*p: x alternates a_1, o_1, a_2, o_2, ...; y at each a_i is o_i."""
    length: int = 64
    modulus: int = 8
    difficulty: float = 1.0

    def __post_init__(self):
        _check_length("icl", self.length, 2)
        _check_at_least("icl", modulus=(self.modulus, 2))
        if not 0 < self.difficulty <= 1:
            raise ValueError(f"task 'icl' needs 0 < difficulty <= 1, got {self.difficulty}")

    @property
    def vocab_size(self) -> int:
        return self.modulus

    def sample(self, batch_size, gen=None, length=None, split="train"):
        T = self.length if length is None else length
        _check_length("icl", T, 2)
        B, p = batch_size, self.modulus
        hi = max(1, int(round(self.difficulty * p)))
        w = _rand_ints(0, hi, (B, 1), gen)
        b = _rand_ints(0, hi, (B, 1), gen)
        n = (T + 1) // 2
        a = _rand_ints(0, p, (B, n), gen)
        o = (w * a + b) % p
        x = torch.stack([a, o], -1).reshape(B, 2 * n)[:, :T]
        y = torch.stack([o, torch.full_like(o, -1)], -1).reshape(B, 2 * n)[:, :T]
        return x, y


@dataclass
class Parity:
    """Running parity of a bit string: y_t = (x_0 + .. + x_t) mod 2 (only at the end with last_only)."""
    length: int = 64
    last_only: bool = False

    def __post_init__(self):
        _check_length("parity", self.length, 1)

    @property
    def vocab_size(self) -> int:
        return 2

    def sample(self, batch_size, gen=None, length=None, split="train"):
        T = self.length if length is None else length
        _check_length("parity", T, 1)
        x = _rand_ints(0, 2, (batch_size, T), gen)
        y = x.cumsum(1) % 2
        if self.last_only:
            y[:, :-1] = -1
        return x, y
