"""Sequence tasks. Every task is a dataclass with a `length` and difficulty fields, a `vocab_size`,
and `sample(batch_size, generator, length=None) -> (x, y)`: int64 tensors (B, T), y = -1 where a
position is unsupervised. y_t is predicted from the memory after reading x_0..x_t.

Example (retrieval, length 10, 4 symbols; 0 marks the needle and asks for it at the end):
    x = 3 1 0 4 2 2 1 3 4 0        y = -1 -1 -1 -1 -1 -1 -1 -1 -1 4
"""
from __future__ import annotations

import typing
import zipfile
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
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

    def sample(self, batch_size, gen=None, length=None):
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

    def sample(self, batch_size, gen=None, length=None):
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

    def sample(self, batch_size, gen=None, length=None):
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

    def sample(self, batch_size, gen=None, length=None):
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

    def sample(self, batch_size, gen=None, length=None):
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

    def sample(self, batch_size, gen=None, length=None):
        T = self.length if length is None else length
        _check_length("parity", T, 1)
        x = _rand_ints(0, 2, (batch_size, T), gen)
        y = x.cumsum(1) % 2
        if self.last_only:
            y[:, :-1] = -1
        return x, y


def _load_tokens(path: str) -> np.ndarray:
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"token file {path!r} does not exist")
    if p.suffix == ".npy":
        try:
            arr = np.load(p, allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:
            raise ValueError(f"token file {path!r} is not a readable .npy array ({str(e)[:120]})") from None
        if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"token file {path!r} must hold a 1-D integer array, got {arr.dtype} {arr.shape}")
        return arr.astype(np.int64)
    return np.frombuffer(p.read_bytes(), dtype=np.uint8).astype(np.int64)


@dataclass
class TokenFile:
    """Language modelling on a token stream: the bytes of any file (vocab 256), or a 1-D integer
    `.npy` array. Windows of length+1 at random offsets; y_t = x_{t+1} (next token)."""
    path: str = ""
    length: int = 128
    vocab: int = 256
    eval_path: str = ""  # held-out tokens for evaluation ("" = the last 10% of `path`)

    def __post_init__(self):
        if not self.path:
            raise ValueError("task 'tokens' needs path= (a text file or a .npy token array)")
        _check_length("tokens", self.length, 1)
        _check_at_least("tokens", vocab=(self.vocab, 1))
        tokens = _load_tokens(self.path)
        if self.eval_path:
            self._train, self._eval = tokens, _load_tokens(self.eval_path)
        else:
            cut = int(len(tokens) * 0.9)
            self._train, self._eval = tokens[:cut], tokens[cut:]
        for name, arr in (("path", self._train), ("eval_path", self._eval)):
            if len(arr) == 0:
                raise ValueError(f"task 'tokens': {name} holds no tokens")
            if arr.min() < 0 or arr.max() >= self.vocab:
                raise ValueError(f"task 'tokens': {name} has token ids in [{arr.min()}, {arr.max()}], outside vocab={self.vocab}")
            if len(arr) < self.length + 1:
                raise ValueError(f"task 'tokens': {name} holds {len(arr)} tokens, fewer than length+1={self.length + 1}")

    @property
    def vocab_size(self) -> int:
        return self.vocab

    def sample(self, batch_size, gen=None, length=None, split="train"):
        T = self.length if length is None else length
        data = self._train if split == "train" else self._eval
        if len(data) < T + 1:
            raise ValueError(f"task 'tokens': the {split} split has {len(data)} tokens, fewer than length+1={T + 1}")
        start = _rand_ints(0, len(data) - T, (batch_size,), gen).numpy()
        win = torch.from_numpy(np.stack([data[s: s + T + 1] for s in start]))
        return win[:, :-1].contiguous(), win[:, 1:].contiguous()


@dataclass
class NpzTask:
    """Bring your own data: an .npz with integer arrays x and y of shape (N, T); y = -1 or -100 where
    unsupervised. Rows are drawn at random; `eval_path` (optional) is used for evaluation."""
    path: str = ""
    eval_path: str = ""
    vocab: int = 0  # 0: max token id + 1 of the training x
    length: int = 0  # 0: the arrays' T; smaller values take the first `length` steps

    def __post_init__(self):
        if not self.path:
            raise ValueError("task 'npz' needs path= (an .npz file with arrays x and y)")
        _check_at_least("npz", vocab=(self.vocab, 0), length=(self.length, 0))
        self._train = self._load(self.path, "path")
        self._eval = self._load(self.eval_path, "eval_path") if self.eval_path else self._train
        if self.vocab == 0:
            self.vocab = int(self._train[0].max()) + 1
        if self.length == 0:
            self.length = self._train[0].shape[1]
        for name, (x, y) in (("path", self._train), ("eval_path", self._eval)):
            if x.max() >= self.vocab:
                raise ValueError(f"task 'npz': {name} has token id {int(x.max())} outside vocab={self.vocab}")
            if y.max() >= self.vocab:
                raise ValueError(f"task 'npz': {name} has target {int(y.max())} outside vocab={self.vocab}")
            if x.shape[1] < self.length:
                raise ValueError(f"task 'npz': {name} sequences have T={x.shape[1]}, shorter than length={self.length}")

    @staticmethod
    def _load(path, name):
        p = Path(path)
        if not p.is_file():
            raise ValueError(f"task 'npz': {name}={path!r} does not exist")
        try:
            f = np.load(p, allow_pickle=False)
            if not isinstance(f, np.lib.npyio.NpzFile):
                raise ValueError(f"task 'npz': {name}={path!r} is a single array, not an .npz archive with 'x' and 'y'")
            with f:
                if "x" not in f or "y" not in f:
                    raise ValueError(f"task 'npz': {name}={path!r} must hold arrays 'x' and 'y', has {sorted(f.keys())}")
                x, y = f["x"], f["y"]
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
            if "task 'npz'" in str(e):
                raise
            raise ValueError(f"task 'npz': {name}={path!r} is not a readable .npz file ({e})") from None
        if x.ndim != 2 or x.shape != y.shape:
            raise ValueError(f"task 'npz': {name} needs x and y of the same shape (N, T), got {x.shape} and {y.shape}")
        if not (np.issubdtype(x.dtype, np.integer) and np.issubdtype(y.dtype, np.integer)):
            raise ValueError(f"task 'npz': {name} arrays must be integers, got {x.dtype} and {y.dtype}")
        if len(x) == 0 or x.shape[1] == 0:
            raise ValueError(f"task 'npz': {name} holds no sequences")
        if x.min() < 0:
            raise ValueError(f"task 'npz': {name} has negative token id {int(x.min())}")
        y = np.where(y < 0, -1, y)
        if y.min() < -1:
            raise ValueError(f"task 'npz': {name} has target {int(y.min())}")
        return torch.from_numpy(x.astype(np.int64)), torch.from_numpy(y.astype(np.int64))

    @property
    def vocab_size(self) -> int:
        return self.vocab

    def sample(self, batch_size, gen=None, length=None, split="train"):
        T = self.length if length is None else length
        x, y = self._train if split == "train" else self._eval
        if T > x.shape[1]:
            raise ValueError(f"task 'npz': asked for length {T} but sequences have T={x.shape[1]}")
        rows = _rand_ints(0, len(x), (batch_size,), gen)
        return x[rows, :T], y[rows, :T]


@dataclass
class PreparedTask:
    """A folder written by `memtrain prepare` (memtrain/prepare.py); evaluation uses its val.npy.

    Text: windows of `length` bytes at random offsets, y_t = x_{t+1}, as in 'tokens' (vocab 256).
    Pixels, layout "whole" (the default): one image is one sequence, x = [BOS, p_0, .., p_{T-2}] and
    y = [p_0, .., p_{T-1}] with BOS = levels, so the vocabulary is levels + 1 and every pixel,
    the first included, is predicted; `length` defaults to S*S (a shorter one takes the first pixels).
    Pixels, layout "stream": the images concatenated into one stream, as the paper's authors feed
    them, and windowed like text (vocab = levels, no BOS)."""
    path: str = ""
    length: int = 0  # 0: 128 for text, S*S for pixels
    layout: str = ""  # pixels: "whole" (default) or "stream"; text is always a stream

    def __post_init__(self):
        if not self.path:
            raise ValueError("task 'prepared' needs path= (a folder written by `memtrain prepare`)")
        from .prepare import load_prepared

        self.meta, arrays = load_prepared(self.path)
        pixels = self.meta["kind"] == "pixels"
        layout = self.layout or ("whole" if pixels else "stream")
        if layout not in ("whole", "stream") or (layout == "whole" and not pixels):
            allowed = "'whole' or 'stream'" if pixels else "'stream' (text is a byte stream)"
            raise ValueError(f"task 'prepared': layout must be {allowed}, got {self.layout!r}")
        self.layout = layout
        self._seq = int(self.meta["seq_len"]) if pixels else 0
        if self.length == 0:
            self.length = self._seq or 128
        _check_length("prepared", self.length, 1)
        self.vocab = int(self.meta["vocab_size"]) + (layout == "whole")
        if layout == "whole":
            self._train, self._eval = arrays["train"], arrays["val"]
        else:  # a flat view of the (N, S*S) images, or the byte stream itself
            self._train, self._eval = arrays["train"].reshape(-1), arrays["val"].reshape(-1)
        for split in ("train", "eval"):
            self._check_fits(split, self.length)

    def _check_fits(self, split: str, T: int) -> None:
        data = self._train if split == "train" else self._eval
        name = "train.npy" if split == "train" else "val.npy"
        if self.layout == "whole" and T > self._seq:
            raise ValueError(f"task 'prepared': layout 'whole' sequences are one image of S*S={self._seq} pixels; "
                             f"length={T} does not fit (use layout='stream' for longer windows)")
        if self.layout == "stream" and len(data) < T + 1:
            raise ValueError(f"task 'prepared': {name} in {self.path!r} holds {len(data)} tokens, fewer than "
                             f"length+1={T + 1}")

    @property
    def vocab_size(self) -> int:
        return self.vocab

    def sample(self, batch_size, gen=None, length=None, split="train"):
        T = self.length if length is None else length
        _check_length("prepared", T, 1)
        self._check_fits(split, T)
        data = self._train if split == "train" else self._eval
        if self.layout == "whole":
            rows = _rand_ints(0, len(data), (batch_size,), gen).numpy()
            y = torch.from_numpy(data[rows, :T].astype(np.int64))
            bos = torch.full((batch_size, 1), self.vocab - 1, dtype=torch.long)
            return torch.cat([bos, y[:, :-1]], dim=1), y
        start = _rand_ints(0, len(data) - T, (batch_size,), gen).numpy()
        win = torch.from_numpy(np.stack([data[s: s + T + 1] for s in start]).astype(np.int64))
        return win[:, :-1].contiguous(), win[:, 1:].contiguous()


TASKS: dict[str, type] = {
    "retrieval": Retrieval,
    "copy": Copy,
    "stack": Stack,
    "kv": KeyValue,
    "icl": ModularICL,
    "parity": Parity,
    "tokens": TokenFile,
    "npz": NpzTask,
    "prepared": PreparedTask,
}


def build_task(name: str, **params):
    if name not in TASKS:
        raise ValueError(f"task must be one of {sorted(TASKS)}, got {name!r}")
    from ..fields import coerce

    cls = TASKS[name]
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(params) - set(hints))
    if unknown:
        raise ValueError(f"task '{name}' has no parameter(s) {unknown}; it takes {sorted(f.name for f in fields(cls))}")
    return cls(**{k: coerce(v, hints[k], f"task_args.{k}") for k, v in params.items()})


def sample_eval(task, batch_size, gen, length=None):
    """Held-out batch: data-file tasks use their evaluation split, generators just draw fresh data."""
    if isinstance(task, (TokenFile, NpzTask, PreparedTask)):
        return task.sample(batch_size, gen, length=length, split="eval")
    return task.sample(batch_size, gen, length=length)
