import math

import numpy as np
import pytest
import torch

from memtrain.metrics import coverage, crps_gaussian, crps_samples, mase, seasonal_scale, smape, weighted_quantile_loss

G = torch.Generator().manual_seed(0)


def crps_by_integral(F, y: float, lo: float, hi: float, n: int = 200001) -> float:
    """The definition: the integral of (F(z) - 1{z >= y})^2 dz, by the trapezoid rule."""
    below, above = np.linspace(lo, y, n), np.linspace(y, hi, n)  # split at the jump of the step function
    return float(np.trapezoid(F(below) ** 2, below) + np.trapezoid((1 - F(above)) ** 2, above))


def test_crps_from_samples_is_the_integral_of_the_squared_cdf_difference():
    x = torch.randn(37, dtype=torch.float64, generator=G)
    for y in (-0.3, 0.0, 2.5):
        ecdf = lambda z: (x.numpy()[None, :] <= z[:, None]).mean(1)  # noqa: E731
        want = crps_by_integral(ecdf, y, -8, 8)
        assert crps_samples(x[:, None], torch.tensor([y], dtype=torch.float64)).item() == pytest.approx(want, abs=1e-4)


def test_crps_from_samples_matches_the_pairwise_formula_and_scoringrules():
    x = torch.randn(50, 4, 3, dtype=torch.float64, generator=G)
    y = torch.randn(4, 3, dtype=torch.float64, generator=G)
    pair = (x[:, None] - x[None, :]).abs().mean((0, 1))
    want = (x - y).abs().mean(0) - 0.5 * pair
    torch.testing.assert_close(crps_samples(x, y), want, rtol=1e-12, atol=1e-12)
    sr = pytest.importorskip("scoringrules")
    ref = sr.crps_ensemble(y.numpy(), np.moveaxis(x.numpy(), 0, -1), estimator="nrg")
    np.testing.assert_allclose(crps_samples(x, y).numpy(), ref, rtol=1e-10)


def test_crps_of_a_gaussian_matches_its_integral_and_many_samples():
    from scipy import stats

    for mu, sigma, y in ((0.0, 1.0, 0.5), (2.0, 0.3, 1.0), (-1.0, 4.0, 7.0)):
        t = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
        got = crps_gaussian(t(mu), t(sigma), t(y)).item()
        assert got == pytest.approx(crps_by_integral(stats.norm(mu, sigma).cdf, y, mu - 12 * sigma, mu + 12 * sigma), abs=1e-6)
    s = 1.5 + 0.5 * torch.randn(40000, 1, dtype=torch.float64, generator=G)
    approx = crps_samples(s, torch.tensor([1.0], dtype=torch.float64)).item()
    assert approx == pytest.approx(crps_gaussian(torch.tensor(1.5), torch.tensor(0.5), torch.tensor(1.0)).item(), abs=3e-3)


def test_a_point_forecast_scores_its_absolute_error():
    x = torch.full((1, 5), 2.0, dtype=torch.float64)
    assert crps_samples(x, torch.tensor([[3.5]] * 1, dtype=torch.float64).squeeze(0)).tolist() == [1.5] * 5


def test_mase_written_out():
    history = torch.tensor([1.0, 3.0, 2.0, 5.0, 4.0, 6.0])
    target, forecast = torch.tensor([7.0, 5.0]), torch.tensor([6.0, 6.0])
    scale2 = (abs(2 - 1) + abs(5 - 3) + abs(4 - 2) + abs(6 - 5)) / 4
    assert seasonal_scale(history, 2).item() == pytest.approx(scale2)
    assert mase(forecast, target, history, 2).item() == pytest.approx(1.0 / scale2)
    assert mase(target, target, history, 2).item() == 0.0  # a perfect forecast
    # a forecast as good as the seasonal naive one in-sample scores 1
    assert mase(forecast, forecast + scale2, history, 2).item() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="longer than its season"):
        seasonal_scale(history[:2], 2)


def test_smape_written_out_and_its_edge_cases():
    f, a = torch.tensor([[1.0, 0.0, 2.0]]), torch.tensor([[2.0, 0.0, -2.0]])
    want = 200 / 3 * (1 / 3 + 0 + 4 / 4)
    assert smape(f, a).item() == pytest.approx(want)
    a_missing = torch.tensor([[2.0, float("nan"), -2.0]])
    assert smape(f, a_missing).item() == pytest.approx(200 / 2 * (1 / 3 + 1))


def test_weighted_quantile_loss_and_coverage():
    levels = torch.tensor([0.1, 0.5, 0.9])
    y = torch.tensor([1.0, 2.0, float("nan"), 4.0])
    q = torch.stack([y.nan_to_num() - 1, y.nan_to_num(), y.nan_to_num() + 1], -1)  # (4, 3)
    # pinball per observed step: level 0.1 at q = y - 1 -> 0.1, level 0.5 at y -> 0, level 0.9 at y + 1 -> 0.1
    assert weighted_quantile_loss(q, levels, y).item() == pytest.approx(((2 * 0.3 / 7) + 0 + (2 * 0.3 / 7)) / 3)
    assert coverage(q, y).tolist() == [0.0, 1.0, 1.0]
    calibrated = torch.randn(20000, generator=G)
    qs = torch.tensor([-1.2816, 0.0, 1.2816]).expand(20000, 3)
    np.testing.assert_allclose(coverage(qs, calibrated).numpy(), [0.1, 0.5, 0.9], atol=0.01)


def test_missing_targets_are_left_out_of_mase():
    history = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    f = torch.tensor([[5.0, 5.0]])
    assert mase(f, torch.tensor([[6.0, float("nan")]]), history).item() == pytest.approx(1.0)
    assert not math.isnan(mase(f, torch.tensor([[6.0, 5.0]]), history).item())
