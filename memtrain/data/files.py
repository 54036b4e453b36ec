"""Tasks read from files: a token stream (`tokens`: any file's bytes or a .npy array), your own
sequences (`npz`), and folders written by `memtrain prepare` (`prepared`). Each answers
`sample(batch_size, generator, length=None, split="train" | "val")`; "val" is the held-out data;
`rows(split, length, path)` gives every held-out row once and `n_sequences(split)` how many
distinct sequences a split offers (a batch larger than that repeats some).
"""
from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..lengths import supervised
from .synthetic import _check_at_least, _check_length, _rand_ints

SPLITS = ("train", "val")


def _split(task, split: str):
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return task._train if split == "train" else task._val


def _windows(data, T: int, batch_size: int, gen) -> tuple[torch.Tensor, torch.Tensor]:
    """Windows of T+1 tokens at random offsets of a 1-D stream: x = the first T, y = the next T."""
    start = _rand_ints(0, len(data) - T, (batch_size,), gen).numpy()
    win = torch.from_numpy(np.stack([data[s: s + T + 1] for s in start]).astype(np.int64))
    return win[:, :-1].contiguous(), win[:, 1:].contiguous()


def _stream_rows(data, T: int, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Every token of a stream once: consecutive windows of T+1 tokens overlapping by one (stride T),
    x = the first T of each, y = the next T; a last partial window is dropped."""
    n = (len(data) - 1) // T
    if n < 1:
        raise ValueError(f"{what} holds {len(data)} tokens, fewer than length+1={T + 1}")
    arr = np.asarray(data[: n * T + 1]).astype(np.int64)
    return torch.from_numpy(arr[:-1].reshape(n, T).copy()), torch.from_numpy(arr[1:].reshape(n, T).copy())


def _cut(x, y, lengths, T: int):
    """The first T steps of rows -> (x, y), or (x, y, lengths) for rows of different lengths."""
    if lengths is None:
        return x[:, :T], y[:, :T]
    return x[:, :T], y[:, :T], lengths.clamp(max=T)


def _check_supervised(what: str, y: torch.Tensor, T: int, purpose: str) -> None:
    """Refuse sequences without a single supervised target (y >= 0; real targets: not NaN) in their first T steps."""
    if not bool(supervised(y[:, :T]).any()):
        unsup = "NaN" if y.is_floating_point() else "-1 (or -100)"
        raise ValueError(f"{what} has no supervised position: y is {unsup} at every one of the first {T} steps "
                         f"of its {len(y)} sequences, so there is nothing to {purpose}")


def _check_ids(arr, vocab: int, what: str) -> None:
    if len(arr) and (arr.min() < 0 or arr.max() >= vocab):
        raise ValueError(f"{what} has token ids in [{int(arr.min())}, {int(arr.max())}], outside vocab={vocab}")


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
    path: str | None = None  # a text file (its bytes) or a 1-D integer .npy array
    length: int = 128  # T: tokens per window
    vocab: int = 256  # token ids must lie in 0..vocab-1
    val_path: str | None = None  # held-out tokens for evaluation (None: the last 10% of `path`)

    def __post_init__(self):
        if not self.path:
            raise ValueError("task 'tokens' needs path= (a text file or a .npy token array)")
        _check_length("tokens", self.length, 1)
        _check_at_least("tokens", vocab=(self.vocab, 1))
        tokens = _load_tokens(self.path)
        if self.val_path:
            self._train, self._val = tokens, _load_tokens(self.val_path)
        else:
            cut = int(len(tokens) * 0.9)
            self._train, self._val = tokens[:cut], tokens[cut:]
        for name, arr in (("path", self._train), ("val_path", self._val)):
            if len(arr) == 0:
                raise ValueError(f"task 'tokens': {name} holds no tokens")
            _check_ids(arr, self.vocab, f"task 'tokens': {name}")
            if len(arr) < self.length + 1:
                raise ValueError(f"task 'tokens': {name} holds {len(arr)} tokens, fewer than length+1={self.length + 1}")

    @property
    def vocab_size(self) -> int:
        return self.vocab

    def sample(self, batch_size, gen=None, length=None, split="train"):
        T = self.length if length is None else length
        data = _split(self, split)
        if len(data) < T + 1:
            raise ValueError(f"task 'tokens': the {split} split has {len(data)} tokens, fewer than length+1={T + 1}")
        return _windows(data, T, batch_size, gen)

    def rows(self, split="val", length=None, path=None):
        """Every held-out token once, in windows of `length` (default T); `path`: another token file
        of this kind instead of the split."""
        T = self.length if length is None else length
        if path is None:  # (its ids were checked when the task was built)
            return _stream_rows(_split(self, split), T, f"task 'tokens': the {split} split")
        data, what = _load_tokens(path), f"token file {path!r}"
        _check_ids(data, self.vocab, what)
        return _stream_rows(data, T, what)

    def n_sequences(self, split="train", length=None) -> int:
        """Distinct windows of `length` (default T) in a split: its window offsets."""
        T = self.length if length is None else length
        return max(len(_split(self, split)) - T, 0)


@dataclass
class NpzTask:
    """Bring your own data: an .npz with integer arrays x and y of shape (N, T); y = -1 or -100 where
    unsupervised. Sequences of different lengths: right-padded to T, with an integer array `lengths`
    (N,) saying where each ends (anything after it is ignored; `memtrain.lengths.pad` makes such
    arrays); batches are then (x, y, lengths). Real-valued inputs: x a float array (N, T, F) of F
    features per step (NaN: missing, read as 0), and y token targets (behaviour cloning's
    (observation, previous action) -> discrete action) or, with real inputs, real targets: a float
    y (N, T) or (N, T, G), NaN where unsupervised, predicted with `output`'s distribution (continuous
    actions; memtrain/data/control.py writes both kinds). Rows are drawn at random; `val_path`
    (optional) is used for evaluation."""
    path: str | None = None  # an .npz with integer arrays x and y of shape (N, T) (and lengths (N,) for sequences of different lengths)
    val_path: str | None = None  # another such file for evaluation (None: the training rows)
    vocab: int | None = None  # None: max token id + 1 of the training x (float x: of the targets); real targets have none
    length: int | None = None  # None: the arrays' T; smaller values take the first `length` steps
    output: str | None = None  # real targets' distribution: gaussian | student-t | quantile (None: gaussian); token targets: categorical

    def __post_init__(self):
        _check_at_least("npz", vocab=(self.vocab or 1, 1), length=(self.length or 1, 1))
        self._train, self._val, checked_val = self._read()
        if (self._train[2] is None) != (self._val[2] is None):
            raise ValueError("task 'npz': path and val_path must both have `lengths` or both not (sequences of "
                             "different lengths, or all of one length)")
        x0, y0 = self._train[0], self._train[1]
        self.features = int(x0.shape[2]) if x0.is_floating_point() else None  # real inputs: F features per step
        if (self._val[0].is_floating_point() != x0.is_floating_point()) or (self.features and self._val[0].shape[2] != self.features):
            raise ValueError("task 'npz': path and val_path must hold the same kind of x (token ids, or as many features)")
        real = y0.is_floating_point()
        self.targets = int(y0.shape[2]) if real else None  # real targets: G values per step
        if real != self._val[1].is_floating_point() or (real and self._val[1].shape[2] != self.targets):
            raise ValueError("task 'npz': path and val_path must hold the same kind of y (token ids, or as many values)")
        from ..models.heads import OUTPUT_KINDS
        if real:
            self.output = self.output or "gaussian"
            if self.output not in OUTPUT_KINDS:
                raise ValueError(f"task 'npz': output must be one of {OUTPUT_KINDS} for real targets, got {self.output!r}")
            if self.vocab is not None:
                raise ValueError(f"task 'npz': vocab={self.vocab} is for token targets; y holds real values")
        elif (self.output or "categorical") != "categorical":
            raise ValueError(f"task 'npz': output={self.output!r} needs real targets (a float y); y holds token ids")
        else:
            self.output = "categorical"
        if self.vocab is None and not real:
            self.vocab = int((y0 if self.features else x0).max()) + 1
        if self.length is None:
            self.length = self._train[0].shape[1]
        for name, (x, y, lengths), purpose in (("path", self._train, "train on"), ("val_path", self._val, "evaluate on")):
            self._check_fits(f"task 'npz': {name}", x, y, self.length)
            if name == "path" or checked_val:
                _check_supervised(f"task 'npz': {name}={getattr(self, name)!r}", y, self.length, purpose)

    def _read(self):
        """(training rows, held-out rows, whether the held-out rows are rows of their own)."""
        if not self.path:
            raise ValueError("task 'npz' needs path= (an .npz file with arrays x and y)")
        train = self._load(self.path, "path")
        return train, (self._load(self.val_path, "val_path") if self.val_path else train), bool(self.val_path)

    def _check_fits(self, what: str, x, y, T: int) -> None:
        if not x.is_floating_point() and x.max() >= self.vocab:
            raise ValueError(f"{what} has token id {int(x.max())} outside vocab={self.vocab}")
        if not y.is_floating_point() and y.max() >= self.vocab:
            raise ValueError(f"{what} has target {int(y.max())} outside vocab={self.vocab}")
        if x.shape[1] < T:
            raise ValueError(f"{what} sequences have T={x.shape[1]}, shorter than length={T}")

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
                lengths = f["lengths"] if "lengths" in f else None
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
            if "task 'npz'" in str(e):
                raise
            if "Object arrays" in str(e):
                raise ValueError(f"task 'npz': {name}={path!r} holds object arrays (ragged sequences?), which would need "
                                 "pickle to load: store x and y right-padded to (N, T) with an integer array 'lengths' (N,) "
                                 "(memtrain.lengths.pad)") from None
            raise ValueError(f"task 'npz': {name}={path!r} is not a readable .npz file ({e})") from None
        return NpzTask._arrays(name, x, y, lengths)

    @staticmethod
    def _arrays(name, x: np.ndarray, y: np.ndarray, lengths: np.ndarray | None):
        """Checked rows (x, y, lengths) as tensors: padding zeroed and unsupervised, targets < 0 -> -1
        (real targets: y (N, T, G), NaN where unsupervised)."""
        real = np.issubdtype(x.dtype, np.floating)  # F real features per step
        real_y = np.issubdtype(y.dtype, np.floating)  # G real targets per step
        if real_y and y.ndim == 2:
            y = y[..., None]
        if (x.ndim != 3 if real else x.ndim != 2) or x.shape[:2] != y.shape[:2] or y.ndim != (3 if real_y else 2):
            raise ValueError(f"task 'npz': {name} needs x (N, T) of token ids or (N, T, F) of real features, and y (N, T) "
                             f"(real targets: (N, T) or (N, T, G)); got {x.shape} and {y.shape}")
        if not ((real or np.issubdtype(x.dtype, np.integer)) and (np.issubdtype(y.dtype, np.integer) or (real_y and real))):
            raise ValueError(f"task 'npz': {name} needs integer token ids (x may be real features, and with them y real "
                             f"targets), got {x.dtype} and {y.dtype}")
        if real and np.isinf(x).any():
            raise ValueError(f"task 'npz': {name} has infinite input features (a missing one is NaN)")
        if real_y and np.isinf(y).any():
            raise ValueError(f"task 'npz': {name} has infinite targets (an unsupervised one is NaN)")
        if len(x) == 0 or x.shape[1] == 0:
            raise ValueError(f"task 'npz': {name} holds no sequences")
        L = None
        if lengths is not None:
            if lengths.shape != (len(x),) or not np.issubdtype(lengths.dtype, np.integer):
                raise ValueError(f"task 'npz': {name} needs 'lengths' of {len(x)} integers (one per sequence), got "
                                 f"{lengths.dtype} {lengths.shape}")
            if lengths.min() < 1 or lengths.max() > x.shape[1]:
                raise ValueError(f"task 'npz': {name} has lengths in [{int(lengths.min())}, {int(lengths.max())}]; each must "
                                 f"lie in 1..{x.shape[1]} (the padded length)")
            L = torch.from_numpy(lengths.astype(np.int64))
            inside = np.arange(x.shape[1])[None, :] < lengths[:, None]
            x = np.where(inside[..., None] if real else inside, x, 0)  # the padding: token 0 (features 0), unsupervised
            y = np.where(inside[..., None], y, np.nan) if real_y else np.where(inside, y, -1)
        if not real and x.min() < 0:
            raise ValueError(f"task 'npz': {name} has negative token id {int(x.min())}")
        x = torch.from_numpy(x.astype(np.float32)) if real else torch.from_numpy(x.astype(np.int64))
        if real_y:
            return x, torch.from_numpy(y.astype(np.float32)), L
        y = np.where(y < 0, -1, y)
        if y.min() < -1:
            raise ValueError(f"task 'npz': {name} has target {int(y.min())}")
        return x, torch.from_numpy(y.astype(np.int64)), L

    @property
    def vocab_size(self) -> int:
        return self.vocab

    def sample(self, batch_size, gen=None, length=None, split="train"):
        T = self.length if length is None else length
        x, y, lengths = _split(self, split)
        if T > x.shape[1]:
            raise ValueError(f"task 'npz': asked for length {T} but sequences have T={x.shape[1]}")
        rows = _rand_ints(0, len(x), (batch_size,), gen)
        return _cut(x[rows], y[rows], None if lengths is None else lengths[rows], T)

    def rows(self, split="val", length=None, path=None):
        """Every held-out sequence once (its first `length` steps); `path`: another .npz instead, at
        its own length unless `length` cuts it (the RNN and the teacher run at any length)."""
        x, y, lengths = _split(self, split) if path is None else self._load(path, "data")
        T = length if length is not None else (self.length if path is None else x.shape[1])
        self._check_fits(f"task 'npz': {'the ' + split + ' rows' if path is None else repr(path)}", x, y, T)
        return _cut(x, y, lengths, T)

    def n_sequences(self, split="train", length=None) -> int:
        """The rows of a split (each is one sequence, whatever the length)."""
        return len(_split(self, split)[0])


@dataclass
class PreparedTask:
    """A folder written by `memtrain prepare` (memtrain/data/prepare.py); evaluation uses its val.npy.

    Text: windows of `length` bytes at random offsets, y_t = x_{t+1}, as in 'tokens' (vocab 256).
    Pixels, layout "whole" (the default): one image is one sequence, x = [BOS, p_0, .., p_{T-2}] and
    y = [p_0, .., p_{T-1}] with BOS = levels, so the vocabulary is levels + 1 and every pixel,
    the first included, is predicted; `length` defaults to S*S (a shorter one takes the first pixels).
    Pixels, layout "stream": the images concatenated into one stream, as the paper's authors feed
    them, and windowed like text (vocab = levels, no BOS)."""
    path: str | None = None  # a folder written by `memtrain prepare`
    length: int | None = None  # None: 128 for text, S*S for pixels
    layout: str | None = None  # pixels: "whole" (default) or "stream"; text is always a stream

    def __post_init__(self):
        if not self.path:
            raise ValueError("task 'prepared' needs path= (a folder written by `memtrain prepare`)")
        from .prepare import load_prepared

        self.meta, arrays = load_prepared(self.path)
        if self.meta["kind"] == "series":
            raise ValueError(f"task 'prepared': {self.path!r} holds real-valued series ({', '.join(self.meta['targets'])}), "
                             "not tokens: train on it with task=series")
        pixels = self.meta["kind"] == "pixels"
        layout = self.layout or ("whole" if pixels else "stream")
        if layout not in ("whole", "stream") or (layout == "whole" and not pixels):
            allowed = "'whole' or 'stream'" if pixels else "'stream' (text is a byte stream)"
            raise ValueError(f"task 'prepared': layout must be {allowed}, got {self.layout!r}")
        self.layout = layout
        self._seq = int(self.meta["seq_len"]) if pixels else 0
        if self.length is None:
            self.length = self._seq or 128
        _check_length("prepared", self.length, 1)
        self.vocab = int(self.meta["vocab_size"]) + (layout == "whole")
        if layout == "whole":
            self._train, self._val = arrays["train"], arrays["val"]
        else:  # a flat view of the (N, S*S) images, or the byte stream itself
            self._train, self._val = arrays["train"].reshape(-1), arrays["val"].reshape(-1)
        for split in ("train", "val"):
            self._check_fits(split, self.length)

    def _check_fits(self, split: str, T: int) -> None:
        data = _split(self, split)
        name = f"{split}.npy"
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
        data = _split(self, split)
        if self.layout == "whole":
            rows = _rand_ints(0, len(data), (batch_size,), gen).numpy()
            return self._with_bos(data[rows, :T])
        return _windows(data, T, batch_size, gen)

    def _with_bos(self, images) -> tuple[torch.Tensor, torch.Tensor]:
        """Layout 'whole': y = the pixels, x = [BOS, the pixels but the last]."""
        y = torch.from_numpy(np.asarray(images).astype(np.int64))
        bos = torch.full((len(y), 1), self.vocab - 1, dtype=torch.long)
        return torch.cat([bos, y[:, :-1]], dim=1), y

    def rows(self, split="val", length=None, path=None):
        """Every held-out image (layout 'whole') or token (layout 'stream') once. `path`: another
        folder written by `memtrain prepare` of the same kind (its val split), or one of its split
        files (e.g. data/kjv/val.npy), instead of this one's; its images are read whole unless
        `length` cuts them (streams: windows of `length`, default T)."""
        data, what = (_split(self, split), f"task 'prepared': {split}.npy") if path is None else self._load_other(path)
        own = path is not None and self.layout == "whole"  # another file's images: all their pixels by default
        T = length if length is not None else (data.shape[1] if own else self.length)
        if self.layout == "whole":
            if T > data.shape[1]:
                raise ValueError(f"{what}: images of {data.shape[1]} pixels, shorter than length={T}")
            return self._with_bos(data[:, :T])
        return _stream_rows(np.asarray(data).reshape(-1), T, what)

    def n_sequences(self, split="train", length=None) -> int:
        """Layout 'whole': the images of a split; 'stream': its window offsets for `length` (default T)."""
        data = _split(self, split)
        if self.layout == "whole":
            return len(data)
        return max(len(data) - (self.length if length is None else length), 0)

    def _load_other(self, path: str):
        """A prepared folder or split file of this run's kind -> (array as the split would hold it, its name)."""
        from .prepare import load_prepared

        p, what = Path(path), f"data {path!r}"
        kind, levels = self.meta["kind"], int(self.meta["vocab_size"])
        if p.is_dir():
            meta, arrays = load_prepared(p)
            if meta["kind"] != kind or int(meta["vocab_size"]) != levels:
                raise ValueError(f"{what} is a prepared {meta['kind']} set with {meta['vocab_size']} symbols; this run "
                                 f"was trained on {kind} with {levels}")
            data = arrays["val"]
        elif p.suffix == ".npy" and p.is_file():
            try:
                data = np.load(p, mmap_mode="r", allow_pickle=False)
            except (OSError, ValueError, EOFError) as e:
                raise ValueError(f"{what} is not a readable .npy array ({str(e)[:120]})") from None
            want = 1 if kind == "text" else 2
            if data.ndim != want or not np.issubdtype(data.dtype, np.integer):
                raise ValueError(f"{what} is {data.dtype} {data.shape}; a {kind} split is a {want}-D integer array")
        else:
            raise ValueError(f"{what} is neither a folder written by `memtrain prepare` nor a .npy split file")
        if kind == "pixels" and data.shape[1] != self._seq:
            raise ValueError(f"{what} holds images of {data.shape[1]} pixels; this run's have {self._seq}")
        _check_ids(np.asarray(data).reshape(-1), levels, what)
        return data, what
