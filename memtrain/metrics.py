"""Forecast scores the field reports, on tensors: CRPS (from samples, or for a Gaussian in closed
form), MASE, sMAPE, the weighted quantile loss and quantile coverage.

Every function scores elementwise or per series and leaves the averaging to the caller, except
where a score is defined as a ratio over a whole series (MASE, sMAPE, the weighted quantile loss).
NaN targets are missing: they are left out of every average. CRPS from samples is the energy form
of the empirical distribution's CRPS, E|X - y| - E|X - X'| / 2 (the estimator scoringrules calls
"nrg"; tests/test_metrics.py checks it against scoringrules and against the integral of the squared
CDF difference).

Legend: N samples, H horizon (forecast steps), L quantile levels.
"""
from __future__ import annotations

import math

import torch


def crps_samples(samples: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """CRPS of the empirical distribution of samples (N, ...) at y (...) -> (...), in O(N log N)."""
    N = samples.shape[0]
    x, _ = samples.sort(dim=0)
    i = torch.arange(1, N + 1, dtype=x.dtype, device=x.device).view(-1, *([1] * (x.dim() - 1)))
    spread = ((2 * i - N - 1) * x).sum(0) / (N * N)  # E|X - X'| / 2 over all ordered pairs
    return (x - y.unsqueeze(0)).abs().mean(0) - spread


def crps_gaussian(mu: torch.Tensor, sigma: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """CRPS of N(mu, sigma^2) at y, closed form: sigma (z (2 Phi(z) - 1) + 2 phi(z) - 1 / sqrt(pi))."""
    z = (y - mu) / sigma
    phi = torch.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
    Phi = 0.5 * (1 + torch.erf(z / math.sqrt(2)))
    return sigma * (z * (2 * Phi - 1) + 2 * phi - 1 / math.sqrt(math.pi))


def seasonal_scale(history: torch.Tensor, season: int) -> torch.Tensor:
    """MASE's denominator per series: the mean |y_t - y_{t-season}| over the history (..., T) -> (...)."""
    if season < 1:
        raise ValueError(f"season must be >= 1, got {season}")
    if history.shape[-1] <= season:
        raise ValueError(f"MASE needs a history longer than its season ({season}), got {history.shape[-1]} steps")
    d = (history[..., season:] - history[..., :-season]).abs()
    return _nanmean(d, -1)


def mase(forecast: torch.Tensor, target: torch.Tensor, history: torch.Tensor, season: int = 1) -> torch.Tensor:
    """Mean absolute scaled error per series: forecast, target (..., H), history (..., T) -> (...)."""
    return _nanmean((forecast - target).abs(), -1) / seasonal_scale(history, season)


def smape(forecast: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Symmetric MAPE per series, in percent (the M4 definition): 200 mean(|F - A| / (|F| + |A|)), a
    step where both are 0 counting 0 -> (...)."""
    denom = forecast.abs() + target.abs()
    term = torch.where(denom > 0, (forecast - target).abs() / denom.clamp_min(1e-30), torch.zeros_like(denom))
    return 200 * _nanmean(torch.where(torch.isnan(target), target, term), -1)


def pinball_per_level(q: torch.Tensor, levels: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Quantile loss of predicted quantiles q (..., L) at `levels` (L,) for y (...), per level (..., L):
    max(a_l (y - q_l), (a_l - 1)(y - q_l))."""
    e = y.unsqueeze(-1) - q
    return torch.maximum(levels * e, (levels - 1) * e)


def pinball(q: torch.Tensor, levels: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The quantile loss summed over the levels, elementwise over y (...)."""
    return pinball_per_level(q, levels, y).sum(-1)


def weighted_quantile_loss(q: torch.Tensor, levels: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The mean over levels of 2 sum_t pinball_a(y_t, q_t) / sum_t |y_t| (GluonTS's mean_wQuantileLoss),
    over everything given: q (..., L), target (...) -> scalar."""
    ok = ~torch.isnan(target)
    loss = pinball_per_level(q[ok], levels, target[ok]).sum(0)  # (L,)
    return (2 * loss / target[ok].abs().sum()).mean()


def coverage(q: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The fraction of observed targets at or below each predicted quantile: q (..., L), target (...)
    -> (L,). A calibrated forecast's coverage equals its levels."""
    ok = ~torch.isnan(target)
    return (target.unsqueeze(-1) <= q)[ok].float().mean(0)


def _nanmean(t: torch.Tensor, dim: int) -> torch.Tensor:
    ok = ~torch.isnan(t)
    return torch.where(ok, t, torch.zeros_like(t)).sum(dim) / ok.sum(dim)
