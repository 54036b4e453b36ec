"""Output heads for real-valued targets: a predictive distribution over y_t in R^G, its loss and its samples.

A head maps features h (..., F) to the parameters of a distribution for each of G target values:

    gaussian   mean mu, scale sigma = softplus(.) + min_scale             loss: negative log-likelihood
    student-t  mu, sigma, degrees of freedom nu = 2 + softplus(.)         loss: negative log-likelihood
    quantile   the values at fixed levels (0 < a_1 < ... < a_L < 1), made non-crossing by adding softplus
               increments to the lowest                                     loss: pinball (quantile) loss

A NaN target is unsupervised (a missing value): it adds nothing to the loss or its gradient. Samples
are drawn with an explicit generator; the quantile head samples its piecewise-linear quantile
function at uniform levels (flat beyond its outermost levels).

`Output` is what a network's last layer predicts, as `dim` raw numbers per step: `Categorical(V)`
(logits over token ids, -1 unsupervised) or `RealOutput(kind, G)` (the parameters above). The teacher's
decoder and the cell's readout end in a Linear layer of that width; the methods read targets only
through it (`loss`, `supervised`, `point`, `sample`), so they need not know which kind it is.
`OutputHead` is a Linear layer and a `RealOutput` in one module.

Legend: F features, G target width, P parameters per target value, L quantile levels, N samples.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..metrics import pinball

OUTPUT_KINDS = ("gaussian", "student-t", "quantile")
OUTPUTS = ("categorical", *OUTPUT_KINDS)
DEFAULT_LEVELS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def masked_mean(loss: torch.Tensor, ok: torch.Tensor) -> torch.Tensor:
    """The mean of `loss` where `ok`; 0 (still a function of the parameters) where nothing is."""
    loss = torch.where(ok, loss, torch.zeros_like(loss))
    return loss.sum() / ok.sum().clamp_min(1)


def gaussian_nll(mu: torch.Tensor, sigma: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """-log N(y; mu, sigma^2), elementwise."""
    z = (y - mu) / sigma
    return 0.5 * z * z + torch.log(sigma) + 0.5 * math.log(2 * math.pi)


def student_t_nll(mu: torch.Tensor, sigma: torch.Tensor, nu: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """-log t_nu(y; mu, sigma), elementwise (location-scale Student-t)."""
    z = (y - mu) / sigma
    return (-torch.lgamma((nu + 1) / 2) + torch.lgamma(nu / 2) + 0.5 * torch.log(nu * math.pi) + torch.log(sigma)
            + (nu + 1) / 2 * torch.log1p(z * z / nu))


class Output(nn.Module):
    """What a network predicts per step, as `dim` raw numbers; targets are read only through this."""
    kind: str
    dim: int

    def loss(self, raw: torch.Tensor, y: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        """The mean loss over the supervised targets (weighted by `weight`, one per step, if given);
        0, still a function of `raw`, where nothing is supervised. raw (..., dim), y (...) or (..., G)."""
        raise NotImplementedError

    def supervised(self, y: torch.Tensor) -> torch.Tensor:
        """(...) True at the steps with a target."""
        raise NotImplementedError

    def unsupervised_like(self, y: torch.Tensor) -> torch.Tensor:
        """A target of y's shape and dtype with nothing supervised (-1 ids, NaN values)."""
        raise NotImplementedError


class Categorical(Output):
    """Logits over V token ids; target -1: unsupervised."""
    kind = "categorical"

    def __init__(self, vocab: int):
        super().__init__()
        self.dim = vocab

    def loss(self, raw, y, weight=None):
        return masked_ce(raw, y, weight)

    def supervised(self, y):
        return y >= 0

    def unsupervised_like(self, y):
        return torch.full_like(y, -1)


class RealOutput(Output):
    """A distribution over a target in R^G per step (the module docstring's kinds); NaN: unsupervised."""

    def __init__(self, kind: str, target_dim: int, levels: tuple[float, ...] = DEFAULT_LEVELS, min_scale: float = 1e-3):
        super().__init__()
        if kind not in OUTPUT_KINDS:
            raise ValueError(f"output kind must be one of {OUTPUT_KINDS}, got {kind!r}")
        if target_dim < 1:
            raise ValueError(f"the target width must be >= 1, got {target_dim}")
        if kind == "quantile":
            if len(levels) < 1 or list(levels) != sorted(set(levels)) or not all(0 < a < 1 for a in levels):
                raise ValueError(f"quantile levels must be increasing and inside (0, 1), got {list(levels)}")
        self.kind, self.G, self.min_scale = kind, target_dim, min_scale
        self.register_buffer("levels", torch.tensor(levels, dtype=torch.float32), persistent=False)
        self.P = {"gaussian": 2, "student-t": 3, "quantile": len(levels)}[kind]
        self.dim = target_dim * self.P

    def params(self, raw: torch.Tensor) -> dict[str, torch.Tensor]:
        """The distribution's parameters from raw (..., G*P), each (..., G) (quantile: "q" (..., G, L), non-crossing)."""
        raw = raw.unflatten(-1, (self.G, self.P))
        if self.kind == "quantile":
            return {"q": torch.cat([raw[..., :1], F.softplus(raw[..., 1:])], dim=-1).cumsum(-1)}
        out = {"mu": raw[..., 0], "sigma": F.softplus(raw[..., 1]) + self.min_scale}
        if self.kind == "student-t":
            out["nu"] = 2.0 + F.softplus(raw[..., 2])
        return out

    def elementwise_loss(self, p: dict[str, torch.Tensor], y: torch.Tensor) -> torch.Tensor:
        """(..., G) losses; where y is NaN the value is meaningless (and has no gradient path from y)."""
        y = torch.nan_to_num(y)
        if self.kind == "gaussian":
            return gaussian_nll(p["mu"], p["sigma"], y)
        if self.kind == "student-t":
            return student_t_nll(p["mu"], p["sigma"], p["nu"], y)
        return pinball(p["q"], self.levels.to(p["q"].dtype), y)

    def loss(self, raw: torch.Tensor, y: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        """Mean loss over the supervised (non-NaN) entries of y (..., G), each step weighted by `weight` (...)."""
        if y.shape[-1] != self.G:
            raise ValueError(f"targets have width {y.shape[-1]}, the output predicts {self.G}")
        ok = ~torch.isnan(y)
        el = self.elementwise_loss(self.params(raw), y)
        if weight is None:
            return masked_mean(el, ok)
        w = ok.to(el.dtype) * weight[..., None].to(el.dtype)
        return (torch.where(ok, el, torch.zeros_like(el)) * w).sum() / w.sum().clamp_min(1e-12)

    def supervised(self, y: torch.Tensor) -> torch.Tensor:
        return ~torch.isnan(y).all(-1)

    def unsupervised_like(self, y: torch.Tensor) -> torch.Tensor:
        return torch.full_like(y, float("nan"))

    def mean(self, raw: torch.Tensor) -> torch.Tensor:
        """The point forecast (..., G): the mean (the median level, or the middle one, for quantiles)."""
        p = self.params(raw)
        if self.kind == "quantile":
            return p["q"][..., int(torch.argmin((self.levels - 0.5).abs()))]
        return p["mu"]

    @torch.no_grad()
    def sample(self, raw: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
        """One draw per position (..., G), with `gen`'s randomness (drawn on the CPU, reproducible)."""
        p = self.params(raw)
        shape = p["q"].shape[:-1] if self.kind == "quantile" else p["mu"].shape
        dev, dt = raw.device, raw.dtype
        if self.kind == "gaussian":
            return p["mu"] + p["sigma"] * torch.randn(shape, generator=gen).to(dev, dt)
        if self.kind == "student-t":
            # t = z / sqrt(chi2_nu / nu) with chi2_nu = 2 Gamma(nu / 2, 1); torch's Gamma sampler takes no
            # generator, so the Gamma draw is Marsaglia and Tsang's, from the generator's own numbers
            z = torch.randn(shape, generator=gen).to(dev, dt)
            g = _gamma(p["nu"].detach() / 2, gen)
            return p["mu"] + p["sigma"] * z / torch.sqrt(2 * g / p["nu"])
        u = torch.rand(shape, generator=gen).to(dev, dt)
        return quantile_function(p["q"], self.levels.to(dt), u)


class OutputHead(nn.Module):
    """A Linear layer (..., d_in) -> (..., G*P) and a `RealOutput` over it, in one module: features in, a
    distribution over a target in R^G out; `loss(h, y)` for y (..., G)."""

    def __init__(self, kind: str, d_in: int, target_dim: int, levels: tuple[float, ...] = DEFAULT_LEVELS,
                 min_scale: float = 1e-3):
        super().__init__()
        self.dist = RealOutput(kind, target_dim, levels, min_scale)
        self.kind, self.G, self.P, self.min_scale = kind, target_dim, self.dist.P, min_scale
        self.proj = nn.Linear(d_in, self.dist.dim)

    @property
    def levels(self) -> torch.Tensor:
        return self.dist.levels

    def params(self, h):
        return self.dist.params(self.proj(h))

    def elementwise_loss(self, p, y):
        return self.dist.elementwise_loss(p, y)

    def loss(self, h, y, weight=None):
        if y.shape[-1] != self.G:
            raise ValueError(f"targets have width {y.shape[-1]}, the head predicts {self.G}")
        return self.dist.loss(self.proj(h), y, weight)

    def mean(self, h):
        return self.dist.mean(self.proj(h))

    def sample(self, h, gen=None):
        return self.dist.sample(self.proj(h), gen)


def masked_ce(logits: torch.Tensor, y: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Mean cross-entropy over positions with y >= 0. logits (..., V), y (...), optional weight (...).
    Returns 0 (with a gradient path) when nothing is supervised."""
    mask = (y >= 0).to(logits.dtype)
    if weight is not None:
        mask = mask * weight
    ce = F.cross_entropy(_up(logits.reshape(-1, logits.shape[-1])), y.clamp(min=0).reshape(-1), reduction="none")
    return (ce * mask.reshape(-1)).sum() / mask.sum().clamp(min=1e-12)


def make_output(kind: str, vocab: int | None = None, targets: int | None = None) -> Output:
    """The Output a config names: categorical over `vocab` ids, or a real-valued kind over `targets` values."""
    if kind == "categorical":
        if vocab is None or vocab < 1:
            raise ValueError(f"a categorical output needs the vocabulary size, got {vocab}")
        return Categorical(vocab)
    if kind not in OUTPUT_KINDS:
        raise ValueError(f"output must be one of {OUTPUTS}, got {kind!r}")
    if targets is None:
        raise ValueError(f"output {kind!r} needs the target width (the task's, or targets=G)")
    return RealOutput(kind, targets)


def _up(t: torch.Tensor) -> torch.Tensor:
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def quantile_function(q: torch.Tensor, levels: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """The piecewise-linear quantile function through (levels, q (..., L)) at u (...): linear between
    levels, flat beyond the outermost ones."""
    L = levels.shape[0]
    if L == 1:
        return q[..., 0]
    k = torch.searchsorted(levels.contiguous(), u.contiguous().reshape(-1)).reshape(u.shape).clamp(1, L - 1)  # right neighbour
    a0, a1 = levels[k - 1], levels[k]
    q0 = torch.gather(q, -1, (k - 1).unsqueeze(-1)).squeeze(-1)
    q1 = torch.gather(q, -1, k.unsqueeze(-1)).squeeze(-1)
    w = ((u - a0) / (a1 - a0)).clamp(0, 1)
    return q0 + w * (q1 - q0)


def _gamma(alpha: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
    """Gamma(alpha, 1) draws (alpha >= 1, any shape) by Marsaglia and Tsang's method, from `gen` alone."""
    d = alpha.detach().double().cpu().reshape(-1) - 1.0 / 3.0
    c = 1.0 / torch.sqrt(9.0 * d)
    out = torch.empty_like(d)
    todo = torch.arange(d.numel())
    while todo.numel():
        x = torch.randn(todo.numel(), generator=gen, dtype=torch.float64)
        u = torch.rand(todo.numel(), generator=gen, dtype=torch.float64)
        dt, v = d[todo], (1 + c[todo] * x) ** 3
        ok = (v > 0) & (torch.log(u) < 0.5 * x * x + dt - dt * v + dt * torch.log(v.clamp_min(1e-300)))
        out[todo[ok]] = (dt * v)[ok]
        todo = todo[~ok]
    return out.reshape(alpha.shape).to(alpha.device, alpha.dtype)
