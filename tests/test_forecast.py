"""Forecasts from a trained RNN (memtrain/forecast.py): ancestral sampling that never reads the future,
seasonal naive, and the scores, in float64 against written-out references."""
import pytest
import torch

from memtrain.forecast import sample_paths, scores, seasonal_naive
from memtrain.models.cells import CellConfig, build_cell
from tests.conftest import D, H, K

G, KNOWN, C, HOR = 1, 2, 6, 4


def _cell():
    torch.manual_seed(0)
    return build_cell(CellConfig(kind="mlp", vocab_size=None, features=2 * G + KNOWN, output="gaussian", targets=G,
                                 mem_tokens=K, d_mem=D, n_heads=H, depth=1, hidden_mult=2, readout_depth=1)).double()


def _windows(N=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, C + HOR, 2 * G + KNOWN, dtype=torch.float64, generator=g)
    x[..., G: 2 * G] = 0.0
    return x, 1 + torch.rand(N, G, dtype=torch.float64, generator=g)


def test_sample_paths_are_the_written_out_ancestral_loop():
    cell, (x, scale) = _cell(), _windows()
    S = 5
    got = sample_paths(cell, x, scale, C, HOR, samples=S, gen=torch.Generator().manual_seed(3))
    assert got.shape == (S, 3, HOR, G)
    gen = torch.Generator().manual_seed(3)
    want = torch.empty(S, 3, HOR, G, dtype=torch.float64)
    with torch.no_grad():
        m = cell.init_memory(3)
        for t in range(C + 1):
            m = cell.update(m, x[:, t])
        m = m.repeat(S, 1)
        for h in range(HOR):
            draw = cell.output.sample(cell.readout(m), gen)
            want[:, :, h] = draw.view(S, 3, G)
            if h + 1 < HOR:
                step = x[:, C + h + 1].repeat(S, 1)
                step[:, :G], step[:, G:2 * G] = draw, 0.0
                m = cell.update(m, step)
    torch.testing.assert_close(got, want * scale[None, :, None, :], rtol=0, atol=1e-12)


def test_sample_paths_never_read_the_future_targets():
    """Changing the lagged targets after the forecast origin (what the truth would feed) changes nothing;
    the known covariates of the future steps are read."""
    cell, (x, scale) = _cell(), _windows()
    a = sample_paths(cell, x, scale, C, HOR, samples=4, gen=torch.Generator().manual_seed(1))
    y = x.clone()
    y[:, C + 1:, :G] += 100.0
    torch.testing.assert_close(sample_paths(cell, y, scale, C, HOR, samples=4, gen=torch.Generator().manual_seed(1)), a, rtol=0, atol=0)
    z = x.clone()
    z[:, C + 1:, 2 * G:] += 1.0
    assert not torch.allclose(sample_paths(cell, z, scale, C, HOR, samples=4, gen=torch.Generator().manual_seed(1)), a)
    with pytest.raises(ValueError, match="context \\+ horizon"):
        sample_paths(cell, x, scale, C, HOR + 1)
    with pytest.raises(ValueError, match="samples must be >= 1"):
        sample_paths(cell, x, scale, C, HOR, samples=0)


def test_sample_paths_with_lags_feed_each_draw_back_lag_steps_later():
    """Lags [2, 5]: written out, y_{C+h+1-l} is the path's draw where it lies in the horizon and the
    observed value of x elsewhere; the future lagged targets of x are never read."""
    lags, L = [2, 5], 3
    torch.manual_seed(0)
    cell = build_cell(CellConfig(kind="mlp", vocab_size=None, features=2 * G * L + KNOWN, output="gaussian", targets=G,
                                 mem_tokens=K, d_mem=D, n_heads=H, depth=1, hidden_mult=2, readout_depth=1)).double()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, C + HOR, 2 * G * L + KNOWN, dtype=torch.float64, generator=g)
    x[..., G * L: 2 * G * L] = 0.0
    scale = 1 + torch.rand(3, G, dtype=torch.float64, generator=g)
    S = 4
    got = sample_paths(cell, x, scale, C, HOR, samples=S, gen=torch.Generator().manual_seed(3), lags=lags)
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        m = cell.init_memory(3)
        for t in range(C + 1):
            m = cell.update(m, x[:, t])
        m = m.repeat(S, 1)
        draws = []
        for h in range(HOR):
            draws.append(cell.output.sample(cell.readout(m), gen))
            if h + 1 < HOR:
                step = x[:, C + h + 1].repeat(S, 1)
                t = C + h + 1
                for j, lag in enumerate([1, *lags]):
                    if t - lag >= C:
                        step[:, j * G:(j + 1) * G], step[:, (L + j) * G:(L + j + 1) * G] = draws[t - lag - C], 0.0
                m = cell.update(m, step)
    want = torch.stack(draws, 1).view(S, 3, HOR, G) * scale[None, :, None, :]
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    context = x.clone()
    context[:, C + 1, G:2 * G] += 1.0  # lag 2 at the first fed step is y_{C-1}: observed, read from x
    assert not torch.allclose(sample_paths(cell, context, scale, C, HOR, samples=S, gen=torch.Generator().manual_seed(3),
                                           lags=lags), got), "lags reaching into the context are read from x"
    changed = x.clone()
    changed[:, C + 1:, :G] += 100.0  # lag 1 is always drawn
    changed[:, C + 3:, G:2 * G] += 100.0  # lag 2 from the horizon's third step on
    torch.testing.assert_close(sample_paths(cell, changed, scale, C, HOR, samples=S, gen=torch.Generator().manual_seed(3),
                                            lags=lags), got, rtol=0, atol=0)
    with pytest.raises(ValueError, match="cannot hold 1 targets at 3 lags"):
        sample_paths(cell, x[..., :5], scale, C, HOR, lags=lags)


def test_seasonal_naive_repeats_the_last_season():
    h = torch.arange(10.0)[None]
    assert seasonal_naive(h, 5, 3).tolist() == [[7.0, 8.0, 9.0, 7.0, 8.0]]
    assert seasonal_naive(h, 2, 1).tolist() == [[9.0, 9.0]]
    with pytest.raises(ValueError, match="at least one season"):
        seasonal_naive(h, 2, 11)


def test_scores_against_hand_computed_values():
    truth = torch.tensor([[1.0, 2.0, 4.0], [0.0, -1.0, float("nan")]], dtype=torch.float64)
    point = torch.tensor([[1.5, 2.0, 3.0], [1.0, -1.0, 0.0]], dtype=torch.float64)
    history = torch.tensor([[0.0, 1.0, 3.0], [2.0, 2.0, 0.0]], dtype=torch.float64)  # naive errors: 1.5 and 1.0
    rows = scores(point, truth, history, season=1, horizons=[2, 3])
    assert rows[0]["crps"] == pytest.approx((0.5 + 0 + 1 + 0) / 4), "a point forecast's CRPS is its absolute error"
    assert rows[1]["crps"] == pytest.approx((0.5 + 0 + 1 + 1 + 0) / 5), "missing truth is left out"
    assert rows[1]["mase"] == pytest.approx(((0.5 + 0 + 1) / 3 / 1.5 + (1 + 0) / 2 / 1.0) / 2)
    paths = torch.stack([point - 1, point, point + 1])  # the median is the point; 80% band = [point - 0.8, point + 0.8]
    full = scores(paths, truth, history, season=1, horizons=[3])[0]
    assert full["mase"] == pytest.approx(rows[1]["mase"]) and full["coverage80"] == pytest.approx(3 / 5)
    with pytest.raises(ValueError, match="longer than the forecast"):
        scores(point, truth, history, 1, [4])
