import numpy as np
import pytest
import torch
from scipy import stats

from memtrain.metrics import pinball
from memtrain.models.heads import OutputHead, gaussian_nll, masked_mean, quantile_function, student_t_nll

G64 = torch.Generator().manual_seed(0)


def test_gaussian_and_student_t_nll_match_scipy_in_float64():
    mu = torch.randn(50, dtype=torch.float64, generator=G64)
    sigma = torch.rand(50, dtype=torch.float64, generator=G64) + 0.1
    nu = 2.0 + 10 * torch.rand(50, dtype=torch.float64, generator=G64)
    y = torch.randn(50, dtype=torch.float64, generator=G64) * 3
    want_n = -stats.norm.logpdf(y.numpy(), mu.numpy(), sigma.numpy())
    want_t = -stats.t.logpdf(y.numpy(), nu.numpy(), mu.numpy(), sigma.numpy())
    np.testing.assert_allclose(gaussian_nll(mu, sigma, y).numpy(), want_n, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(student_t_nll(mu, sigma, nu, y).numpy(), want_t, rtol=1e-10, atol=1e-12)


def test_pinball_is_the_quantile_loss_written_out():
    levels = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    q = torch.randn(7, 3, dtype=torch.float64, generator=G64)
    y = torch.randn(7, dtype=torch.float64, generator=G64)
    want = [sum((a if yi >= qi else a - 1) * (yi - qi) for a, qi in zip(levels.tolist(), row)) for yi, row in zip(y.tolist(), q.tolist())]
    np.testing.assert_allclose(pinball(q, levels, y).numpy(), want, rtol=1e-12)
    # minimised by the empirical quantiles of the targets
    ys = torch.randn(2001, dtype=torch.float64, generator=G64)
    best = torch.quantile(ys, levels)
    for shift in (-0.05, 0.05):
        assert pinball(best.expand(2001, 3), levels, ys).mean() < pinball((best + shift).expand(2001, 3), levels, ys).mean()


@pytest.mark.parametrize("kind", ["gaussian", "student-t", "quantile"])
def test_parameters_are_valid_whatever_the_features(kind):
    head = OutputHead(kind, 6, 2).double()
    p = head.params(100 * torch.randn(40, 6, dtype=torch.float64, generator=G64))
    if kind == "quantile":
        assert p["q"].shape == (40, 2, 9) and (p["q"].diff(dim=-1) >= 0).all()  # non-crossing
    else:
        assert p["mu"].shape == (40, 2) and (p["sigma"] >= head.min_scale).all()
    if kind == "student-t":
        assert (p["nu"] >= 2).all()


@pytest.mark.parametrize("kind", ["gaussian", "student-t", "quantile"])
def test_missing_targets_add_nothing_to_the_loss_or_its_gradient(kind):
    torch.manual_seed(0)
    head = OutputHead(kind, 5, 3).double()
    h = torch.randn(8, 5, dtype=torch.float64, requires_grad=True)
    y = torch.randn(8, 3, dtype=torch.float64)
    miss = torch.rand(8, 3) < 0.4
    y_nan = y.masked_fill(miss, float("nan"))
    loss = head.loss(h, y_nan)
    (gh,) = torch.autograd.grad(loss, h)
    # the same as the mean over the observed entries, written out
    el = head.elementwise_loss(head.params(h), y)
    want = el[~miss].mean()
    torch.testing.assert_close(loss, want, rtol=1e-12, atol=1e-12)
    (gw,) = torch.autograd.grad(want, h)
    torch.testing.assert_close(gh, gw, rtol=1e-12, atol=1e-12)
    assert torch.isfinite(gh).all()
    # rows with every target missing get no gradient at all
    y_nan[2] = float("nan")
    (g2,) = torch.autograd.grad(head.loss(h, y_nan), h)
    assert torch.equal(g2[2], torch.zeros(5, dtype=torch.float64))
    # nothing observed: loss 0, gradient 0
    empty = head.loss(h, torch.full_like(y, float("nan")))
    assert empty.item() == 0.0 and torch.equal(torch.autograd.grad(empty, h)[0], torch.zeros_like(h))


def test_masked_mean_weighs_each_observed_entry_once():
    loss = torch.tensor([[1.0, 2.0], [3.0, 100.0]])
    ok = torch.tensor([[True, True], [True, False]])
    assert masked_mean(loss, ok).item() == pytest.approx(2.0)


def test_quantile_function_is_linear_between_levels_and_flat_beyond():
    levels = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    q = torch.tensor([[-1.0, 0.0, 2.0]], dtype=torch.float64).expand(6, 3)
    u = torch.tensor([0.05, 0.1, 0.3, 0.5, 0.7, 0.99], dtype=torch.float64)
    want = np.interp(u.numpy(), levels.numpy(), q[0].numpy())  # numpy's interp is flat beyond the ends too
    np.testing.assert_allclose(quantile_function(q, levels, u).numpy(), want, rtol=1e-12)


def _head_with(kind, bias):
    head = OutputHead(kind, 1, 1).double()
    with torch.no_grad():
        head.proj.weight.zero_()
        head.proj.bias.copy_(torch.tensor(bias, dtype=torch.float64))
    return head


def test_samples_follow_each_heads_distribution():
    n = 20000
    h = torch.zeros(n, 1, dtype=torch.float64)
    g = torch.Generator().manual_seed(3)
    gauss = _head_with("gaussian", [1.5, 0.0])  # sigma = softplus(0) + 1e-3
    s = gauss.sample(h, g)[:, 0]
    sigma = float(torch.nn.functional.softplus(torch.tensor(0.0))) + 1e-3
    assert stats.kstest(s.numpy(), stats.norm(1.5, sigma).cdf).statistic < 0.015
    t_head = _head_with("student-t", [-1.0, 0.5, 0.0])  # nu = 2 + softplus(0)
    p = {k: v.detach() for k, v in t_head.params(h[:1]).items()}
    s = t_head.sample(h, g)[:, 0]
    ref = stats.t(float(p["nu"]), float(p["mu"]), float(p["sigma"]))
    assert stats.kstest(s.numpy(), ref.cdf).statistic < 0.015
    quant = OutputHead("quantile", 1, 1, levels=(0.25, 0.5, 0.75)).double()
    with torch.no_grad():
        quant.proj.weight.zero_()
        quant.proj.bias.copy_(torch.tensor([0.0, 1.0, 1.0], dtype=torch.float64))
    qs = quant.params(h[:1])["q"][0, 0]
    s = quant.sample(h, g)[:, 0]
    np.testing.assert_allclose(np.quantile(s.numpy(), [0.25, 0.5, 0.75]), qs.detach().numpy(), atol=0.03)
    assert s.min() >= qs[0] and s.max() <= qs[-1]  # flat beyond the outermost levels


def test_sampling_is_reproducible_under_a_generator_and_varies_with_it():
    head = OutputHead("student-t", 4, 2)
    h = torch.randn(10, 4)
    a = head.sample(h, torch.Generator().manual_seed(1))
    b = head.sample(h, torch.Generator().manual_seed(1))
    c = head.sample(h, torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c) and a.shape == (10, 2)


def test_point_forecast_is_the_mean_or_the_median_level():
    gauss = _head_with("gaussian", [0.7, 0.0])
    assert gauss.mean(torch.zeros(3, 1, dtype=torch.float64)).tolist() == [[0.7]] * 3
    quant = OutputHead("quantile", 1, 1, levels=(0.1, 0.5, 0.9)).double()
    h = torch.randn(3, 1, dtype=torch.float64)
    torch.testing.assert_close(quant.mean(h), quant.params(h)["q"][..., 1])


def test_bad_settings_are_refused_with_the_reason():
    with pytest.raises(ValueError, match="output kind"):
        OutputHead("poisson", 4, 1)
    with pytest.raises(ValueError, match="increasing"):
        OutputHead("quantile", 4, 1, levels=(0.5, 0.1))
    with pytest.raises(ValueError, match="inside"):
        OutputHead("quantile", 4, 1, levels=(0.0, 0.5))
    with pytest.raises(ValueError, match="target width"):
        OutputHead("gaussian", 4, 0)
    with pytest.raises(ValueError, match="width 3, the head predicts 2"):
        OutputHead("gaussian", 4, 2).loss(torch.randn(5, 4), torch.randn(5, 3))
