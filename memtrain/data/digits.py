"""A small digit classifier that judges generated images: trained once on the real training images of
the prepared data (the same size S and grey `levels` as the tokens a model generates), then asked how
many generated images it recognises confidently and which digits they are.

Letters in shape comments: N images, S x S pixels (H x W when not square), L = `levels`, C = 10 classes.
Checkpoints are safetensors plus a JSON file, written atomically; nothing that runs code is loaded.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..io import atomic_write, json_bytes, load_module, read_json

FORMAT = "memtrain-digits"
VERSION = 1
WEIGHTS, META = "digits.safetensors", "digits.json"


class DigitClassifier(nn.Module):
    """Two 3x3 convolutions (the second with stride 2), a hidden layer, 10 logits. Input: token ids
    (N, H, W) with values 0..levels-1, read as grey intensity token / (levels - 1) in [0, 1], so the same
    network shape works for grey (levels=256) and binarised (levels=2) pixels."""

    def __init__(self, levels: int, size: tuple[int, int], channels: tuple[int, int] = (16, 32),
                 hidden: int = 64, n_classes: int = 10):
        super().__init__()
        if not 2 <= levels <= 256:
            raise ValueError(f"levels must be in 2..256, got {levels}")
        self.levels, self.size, self.channels = int(levels), (int(size[0]), int(size[1])), tuple(int(c) for c in channels)
        self.hidden, self.n_classes = int(hidden), int(n_classes)
        c1, c2 = self.channels
        self.conv1 = nn.Conv2d(1, c1, 3, padding=1)
        self.conv2 = nn.Conv2d(c1, c2, 3, stride=2, padding=1)
        flat = c2 * math.ceil(self.size[0] / 2) * math.ceil(self.size[1] / 2)
        self.fc1 = nn.Linear(flat, self.hidden)
        self.fc2 = nn.Linear(self.hidden, self.n_classes)

    def config(self) -> dict:
        return {"levels": self.levels, "size": list(self.size), "channels": list(self.channels),
                "hidden": self.hidden, "n_classes": self.n_classes}

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = tokens.float().unsqueeze(1) / (self.levels - 1)  # (N, 1, H, W) in [0, 1]
        x = F.relu(self.conv1(x))  # (N, c1, H, W)
        x = F.relu(self.conv2(x))  # (N, c2, H/2, W/2)
        return self.fc2(F.relu(self.fc1(x.flatten(1))))  # (N, C)


NOT_A_DIGIT = 10  # the extra class of classifiers trained with `reject`


def _check_tokens(tokens, levels: int, size: tuple[int, int] | None = None) -> np.ndarray:
    tokens = np.asarray(tokens)
    if tokens.ndim != 3 or tokens.size == 0:
        raise ValueError(f"tokens must be a non-empty (N, H, W) array, got shape {tokens.shape}")
    if size is not None and tuple(tokens.shape[1:]) != tuple(size):
        raise ValueError(f"this classifier reads {size[0]}x{size[1]} images, got {tokens.shape[1]}x{tokens.shape[2]}")
    if not np.issubdtype(tokens.dtype, np.integer) or tokens.min() < 0 or tokens.max() >= levels:
        raise ValueError(f"tokens must be integers in 0..{levels - 1} (levels={levels}), "
                         f"got {tokens.dtype} in [{tokens.min()}, {tokens.max()}]")
    return tokens.astype(np.uint8)


def _check_labels(labels, n: int, n_classes: int = 10) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be {n} integers (one per image), got {labels.dtype} {labels.shape}")
    if labels.min() < 0 or labels.max() >= n_classes:
        raise ValueError(f"labels must be in 0..{n_classes - 1}, got [{labels.min()}, {labels.max()}]")
    return labels.astype(np.int64)


def scramble(tokens: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Each image's pixels in a random order (N, H, W): a digit's ink density, none of its shape."""
    N, H, W = tokens.shape
    order = torch.rand(N, H * W, generator=gen).argsort(1)  # (N, H*W)
    return torch.gather(tokens.reshape(N, -1), 1, order).view(N, H, W)


def train_classifier(tokens: np.ndarray, labels: np.ndarray, levels: int, steps: int = 1500, seed: int = 0,
                     batch_size: int = 128, lr: float = 3e-3, progress: bool = False,
                     reject: bool = True) -> DigitClassifier:
    """Train on (N, H, W) token images and labels 0..9 with Adam and a cosine-decayed learning rate.
    With `reject` (default) an 11th class, NOT_A_DIGIT, is trained on scrambled training images (a
    quarter of every batch): without it the classifier calls pixel noise a confident 2, 3 or 5, and
    a generator of noise would score well.
    Deterministic for a seed (explicit generator for batches, forked RNG for the initial weights), and
    CPU-fast: 1,500 steps of batch 128 on 14x14 images take well under a minute on one core.
    Returns the classifier in eval mode."""
    tokens = _check_tokens(tokens, levels)
    labels = _check_labels(labels, len(tokens))
    if steps < 1 or batch_size < 1:
        raise ValueError(f"need steps >= 1 and batch_size >= 1, got {steps}, {batch_size}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        clf = DigitClassifier(levels, tokens.shape[1:], n_classes=11 if reject else 10)
    x, y = torch.from_numpy(tokens), torch.from_numpy(labels)  # (N, H, W) uint8, (N,)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(clf.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
    it = range(steps)
    if progress:
        from tqdm import tqdm
        it = tqdm(it, desc="digit classifier")
    clf.train()
    for _ in it:
        idx = torch.randint(0, len(x), (batch_size,), generator=gen)
        xb, yb = x[idx], y[idx]
        if reject:
            q = batch_size // 4
            xb = torch.cat([xb[q:], scramble(xb[:q], gen)])
            yb = torch.cat([yb[q:], torch.full((q,), NOT_A_DIGIT)])
        loss = F.cross_entropy(clf(xb), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return clf.eval()


@torch.no_grad()
def predict_proba(clf: DigitClassifier, tokens: np.ndarray, batch_size: int = 1024) -> np.ndarray:
    """(N, H, W) tokens -> class probabilities (N, C) float64 (softmax of the logits)."""
    tokens = torch.from_numpy(_check_tokens(tokens, clf.levels, clf.size))
    was_training = clf.training
    clf.eval()
    out = [F.softmax(clf(tokens[i: i + batch_size]).double(), dim=-1) for i in range(0, len(tokens), batch_size)]
    clf.train(was_training)
    return torch.cat(out).numpy()


def accuracy(clf: DigitClassifier, tokens: np.ndarray, labels: np.ndarray) -> float:
    """Share of images whose most probable class is the label."""
    probs = predict_proba(clf, tokens)
    labels = _check_labels(labels, len(probs), clf.n_classes)
    return float((probs.argmax(1) == labels).mean())


def quality(clf: DigitClassifier, tokens: np.ndarray, threshold: float = 0.9) -> dict:
    """How recognisable generated images are. Returns
        n           number of images
        threshold   the threshold used
        confident   share of images classified as a DIGIT (0..9) with probability > threshold (strictly)
        histogram   10 counts: the predicted digit of the confident images only (the others are not
                    counted), so it shows which digits the generator draws recognisably; a generator
                    that draws only ones has all its mass in histogram[1]
        not_a_digit share of images whose most probable class is NOT_A_DIGIT (classifiers with it)
        mean_max_prob  the mean over all images of the largest class probability
    """
    probs = predict_proba(clf, tokens)  # (N, C)
    top, cls = probs.max(1), probs.argmax(1)
    sure = (top > threshold) & (cls < 10)
    hist = np.bincount(cls[sure], minlength=10)[:10]
    return {"n": len(probs), "threshold": float(threshold), "confident": float(sure.mean()),
            "histogram": [int(c) for c in hist], "not_a_digit": float((cls == NOT_A_DIGIT).mean()),
            "mean_max_prob": float(top.mean())}


def save_classifier(clf: DigitClassifier, out_dir: str | Path, extra: dict | None = None) -> Path:
    """Write `digits.safetensors` (the weights) and `digits.json` (format, version, the network's
    configuration and `extra`, e.g. its held-out accuracy) into out_dir, each atomically."""
    from safetensors.torch import save

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {f"classifier.{k}": v.detach().cpu().contiguous() for k, v in clf.state_dict().items()}
    blob = save(tensors)
    atomic_write(out / WEIGHTS, blob)
    meta = {"format": FORMAT, "version": VERSION, "config": clf.config(), **(extra or {})}
    atomic_write(out / META, json_bytes(meta))
    return out


def load_classifier(path: str | Path) -> DigitClassifier:
    """Read a classifier written by save_classifier, refusing anything else with the reason."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    d = Path(path)
    if not d.is_dir():
        raise ValueError(f"digit classifier {str(d)!r} is not a directory")
    if not (d / META).is_file() or not (d / WEIGHTS).is_file():
        raise ValueError(f"digit classifier {str(d)!r} needs {META} and {WEIGHTS} (memtrain never loads pickles)")
    meta = read_json(d / META, f"digit classifier {str(d)!r}", "memtrain digit classifier", FORMAT, (VERSION,))
    cfg = meta.get("config")
    try:
        clf = DigitClassifier(cfg["levels"], tuple(cfg["size"]), tuple(cfg["channels"]), cfg["hidden"], cfg["n_classes"])
    except (TypeError, KeyError, ValueError) as e:
        raise ValueError(f"digit classifier {str(d)!r}: {META} has a bad 'config' ({e!r})") from None
    try:
        tensors = load_file(str(d / WEIGHTS))
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(f"digit classifier {str(d)!r}: {WEIGHTS} is corrupt ({e})") from None
    load_module(clf, tensors, "classifier", str(d))
    return clf.eval()
