"""What one step reads: a token id, or a vector of real features.

Token inputs x (B, T) hold ids 0..V-1 and are embedded by a lookup table (`nn.Embedding`, as every
network here always did: checkpoints keep their names). Real inputs x (B, T, F) hold F features per
step (lagged targets, covariates, calendar features) and are embedded by a linear map; a NaN feature
(a missing value) reads as 0, so give the network a flag feature where missingness matters.

The helpers index either kind along time the same way, so the methods need not know which it is.

Legend: B batch, T steps, F features, n picked steps.
"""
from __future__ import annotations

import torch
import torch.nn as nn


class FeatureEmbedding(nn.Linear):
    """Real inputs (..., F) -> (..., width); NaN reads as 0."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(torch.nan_to_num(x, nan=0.0))


def input_embedding(vocab: int | None, features: int | None, width: int) -> nn.Module:
    """An embedding of token ids (features None: a table of `vocab` rows) or of F real features."""
    if features is None:
        return nn.Embedding(vocab, width)
    return FeatureEmbedding(features, width)


def is_real(x: torch.Tensor) -> bool:
    """Real feature inputs (floating point, (B, T, F) or one step (B, F)) rather than token ids."""
    return x.is_floating_point()


def take(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """x at steps idx along dim 1: x (B, T) or (B, T, F), idx (B, n) -> (B, n) or (B, n, F)."""
    if x.dim() == 2:
        return torch.gather(x, 1, idx)
    return torch.gather(x, 1, idx[..., None].expand(*idx.shape, x.shape[-1]))


def flat(x: torch.Tensor) -> torch.Tensor:
    """Steps of a batch as one batch of steps: (B, n) -> (B*n,), (B, n, F) -> (B*n, F)."""
    return x.reshape(-1) if not is_real(x) else x.reshape(-1, x.shape[-1])


def init_input(embed: nn.Module, std: float) -> None:
    """Initial weights of an input embedding: a table normal(0, std); a linear map normal(0, std / sqrt(F))
    (each feature of unit size then gives embeddings of size std), zero bias."""
    if isinstance(embed, FeatureEmbedding):
        nn.init.normal_(embed.weight, 0.0, std / embed.in_features ** 0.5)
        nn.init.zeros_(embed.bias)
    else:
        nn.init.normal_(embed.weight, 0.0, std)
