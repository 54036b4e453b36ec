"""Probabilistic forecasts from a trained RNN on a series task, and the scores the field reports.

`sample_paths` runs the RNN alone over each window's context, the observed lagged targets as inputs
(as it was trained), then draws y_C from its readout, feeds the draw back as the next step's lagged
target (and as the lag-l target l steps later, where the task reads further lags) together with that
step's known covariates, and so on for the horizon: ancestral sampling,
S paths per window in one batch, one memory per path and step. The paths come back in the data's
own units (times each window's scale, which was fitted on its context only).

`seasonal_naive` repeats the last season of the context. `scores` reads paths (or a point forecast)
against the truth: CRPS (from the paths; for a point forecast it is the absolute error), MASE
(the paths' median, scaled by the context's in-sample seasonal-naive error), sMAPE and the coverage
of the paths' 10% / 90% quantiles, each averaged over windows and over the first h steps, for each
h of `horizons`.

Legend: N windows, T = C + H steps (context, horizon), F features, G targets, S paths.
"""
from __future__ import annotations

from pathlib import Path

import torch

from .methods.rollout import rollout
from .metrics import crps_samples, mase, smape
from .models.cells import Cell
from .plot import fan_figure, save_png


@torch.no_grad()
def sample_paths(cell: Cell, x: torch.Tensor, scale: torch.Tensor, context: int, horizon: int, samples: int = 100,
                 gen: torch.Generator | None = None, lags: list[int] = ()) -> torch.Tensor:
    """Sample paths (S, N, H, G) in the data's units, for windows x (N, T, F) laid out as task=series
    builds them ([y_{t-1}, y_{t-l} for l in `lags` (G each), their missing flags, known covariates])
    with scales (N, G). A lagged target that falls inside the horizon is the path's own draw; one that
    falls in the context is the observed value, as x holds it."""
    N, T, F = x.shape
    G = scale.shape[-1]
    every = [1, *lags]
    L = len(every)
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    if context + horizon != T:
        raise ValueError(f"windows of {T} steps, but context + horizon = {context + horizon}")
    if F < 2 * G * L:
        raise ValueError(f"windows of {F} features cannot hold {G} targets at {L} lags and their missing flags")
    m = rollout(cell, cell.init_memory(N), x[:, : context + 1])[:, -1]  # after reading x_0..x_C
    m = m.repeat(samples, 1)  # (S*N, Z): path s of window n is row s*N + n
    xs = x.repeat(samples, 1, 1)
    out = []
    for h in range(horizon):
        draw = cell.output.sample(cell.readout(m), gen)  # (S*N, G): y_{C+h}, scaled
        out.append(draw)
        if h + 1 < horizon:
            step = xs[:, context + h + 1].clone()
            for j, lag in enumerate(every):  # y_{C+h+1-lag}: drawn when it lies in the horizon
                if h + 1 - lag >= 0:
                    step[:, j * G: (j + 1) * G] = out[h + 1 - lag]
                    step[:, (L + j) * G: (L + j + 1) * G] = 0.0  # (observed)
            m = cell.update(m, step)
    paths = torch.stack(out, dim=1).view(samples, N, horizon, G)
    return paths * scale[None, :, None, :]


def seasonal_naive(history: torch.Tensor, horizon: int, season: int) -> torch.Tensor:
    """The last season of the history repeated: history (..., C) -> (..., H), y_{C+h} = y_{C-season+(h mod season)}."""
    if history.shape[-1] < season:
        raise ValueError(f"seasonal naive needs a history of at least one season ({season}), got {history.shape[-1]} steps")
    last = history[..., -season:]
    idx = torch.arange(horizon, device=history.device) % season
    return last[..., idx]


def scores(forecast: torch.Tensor, truth: torch.Tensor, history: torch.Tensor, season: int, horizons: list[int]) -> list[dict]:
    """Scores of a forecast against the truth (N, H), for each h of `horizons` over steps 1..h.
    `forecast`: sample paths (S, N, H) or a point forecast (N, H). history (N, C): the context, for MASE."""
    paths = forecast if forecast.dim() == 3 else forecast[None]
    point = paths.median(0).values if forecast.dim() == 3 else forecast
    rows = []
    for h in horizons:
        if h > truth.shape[-1]:
            raise ValueError(f"horizon {h} is longer than the forecast ({truth.shape[-1]} steps)")
        t, p = truth[:, :h], point[:, :h]
        ok = ~torch.isnan(t)
        crps = crps_samples(paths[:, :, :h], torch.nan_to_num(t))
        row = {"horizon": h, "crps": float(crps[ok].mean()), "mase": float(torch.nanmean(mase(p, t, history, season))),
               "smape": float(torch.nanmean(smape(p, t)))}
        if forecast.dim() == 3:
            lo, hi = paths[:, :, :h].quantile(0.1, dim=0), paths[:, :, :h].quantile(0.9, dim=0)
            row["coverage80"] = float(((t >= lo) & (t <= hi))[ok].float().mean())
        rows.append(row)
    return rows


def forecast_windows(run_dir: str, split: str = "test", samples: int = 100, seed: int = 0, every: int = 1) -> dict:
    """Sample paths from a series run's RNN for every window of its `split` (test: forecast origins every
    horizon steps; validation: every step, or every `every`-th with `every`) -> {"task", "paths" (S, N, H),
    "truth" (N, H), "history" (N, C)}, target 0, data units."""
    from .runs import load_run

    cfg, task, _, cell = load_run(run_dir)
    if not hasattr(task, "split_windows"):
        raise ValueError(f"{run_dir!r} was not trained on a series task (task={cfg.task!r})")
    if split not in ("val", "test"):
        raise ValueError(f"split must be 'val' or 'test', got {split!r}")
    x, y, scale = task.split_windows(split, every)
    C, H = task.context, task.horizon
    paths = sample_paths(cell, x.to(next(cell.parameters()).dtype), scale, C, H, samples, torch.Generator().manual_seed(seed),
                         task.lags)
    return {"task": task, "paths": paths[..., 0], "truth": (y * scale[:, None, :])[:, C:, 0],
            "history": (y * scale[:, None, :])[:, :C, 0]}


def evaluate_forecasts(run_dir: str, split: str = "test", samples: int = 100, seed: int = 0,
                       horizons: list[int] | None = None, season: int | None = None, every: int = 1) -> dict:
    """Forecast every window of a series run's `split` (`forecast_windows`) with its RNN, and with
    seasonal naive, and score both -> {"rnn": [rows], "seasonal_naive": [rows], ...}.
    `season`: seasonal naive's and MASE's period (None: the series set's longest shorter than the context;
    1 where none is: naive)."""
    f = forecast_windows(run_dir, split, samples, seed, every)
    task, truth, history = f["task"], f["truth"], f["history"]
    C, H = task.context, task.horizon
    season = season or max([p for p in task.seasonality(0) if p < C] or [1])
    horizons = horizons or sorted({1, min(H, season), H})
    return {"windows": len(truth), "samples": samples, "season": season, "split": split,
            "rnn": scores(f["paths"], truth, history, season, horizons),
            "seasonal_naive": scores(seasonal_naive(history, H, season), truth, history, season, horizons)}


def draw_fan(run: str, out: str | None = None, window: int = 0, samples: int = 100, seed: int = 0) -> tuple[Path, dict]:
    """Draw one test window's forecast fan of a series run (`forecast_windows`; `memtrain plot RUN --fan`) into a
    PNG (default: RUN/fan.png); -> (its path, the numbers drawn)."""
    f = forecast_windows(run, "test", samples, seed)
    n = len(f["truth"])
    if not 0 <= window < n:
        raise ValueError(f"--window must be in 0..{n - 1} ({n} test windows), got {window}")
    target = Path(out) if out else Path(run) / "fan.png"
    if target.suffix.lower() != ".png":
        raise ValueError(f"--out {str(target)!r} must be a .png file")
    history, truth, paths = f["history"][window], f["truth"][window], f["paths"][:, window]
    show = min(len(history), 2 * len(truth))
    data = {"window": window, "history": history[-show:].tolist(), "truth": truth.tolist(),
            "median": paths.median(0).values.tolist()}
    save_png(fan_figure(history, truth, paths, window, show, Path(run).name), target)
    return target, data
