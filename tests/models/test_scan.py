"""models/scan.py: every scheme for the linear recurrence c_t = a_t c_{t-1} + b_t (Hillis-Steele,
odd-even reduction, elementwise and with dense or block matrices) equals the loop in float64, in
values and gradients, at lengths that are and are not powers of two."""
import pytest
import torch

from memtrain.models.scan import (
    linear_recurrence,
    linear_scan,
    linear_scan_pairs,
    linear_scan_reference,
    matrix_recurrence,
    matrix_scan,
    matrix_scan_pairs,
    matrix_scan_reference,
)

LENGTHS = [1, 2, 3, 5, 8, 13, 37]


def _grads(out, inputs, w):
    return torch.autograd.grad((out * w).sum(), inputs)


@pytest.mark.parametrize("T", LENGTHS)
@pytest.mark.parametrize("scan", [linear_scan, linear_scan_pairs, linear_recurrence])
def test_linear_scans_equal_the_loop(scan, T):
    g = torch.Generator().manual_seed(T)
    a = torch.rand(3, T, 4, 2, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, T, 4, 2, generator=g, dtype=torch.float64, requires_grad=True)
    c0 = torch.randn(3, 4, 2, generator=g, dtype=torch.float64, requires_grad=True)
    fast, slow = scan(a, b, c0), linear_scan_reference(a, b, c0)
    torch.testing.assert_close(fast, slow, rtol=0, atol=1e-12)
    w = torch.randn(fast.shape, generator=g, dtype=torch.float64)
    for x, y in zip(_grads(fast, (a, b, c0), w), _grads(slow, (a, b, c0), w)):
        torch.testing.assert_close(x, y, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("T", LENGTHS)
@pytest.mark.parametrize("blocks", [(), (3,)])  # one dense system; three independent 4 x 4 blocks
@pytest.mark.parametrize("scan", [matrix_scan, matrix_scan_pairs, matrix_recurrence])
def test_matrix_scans_equal_the_loop(scan, T, blocks):
    g = torch.Generator().manual_seed(T)
    A = (torch.randn(2, T, *blocks, 4, 4, generator=g, dtype=torch.float64) / 2).requires_grad_()
    b = torch.randn(2, T, *blocks, 4, generator=g, dtype=torch.float64, requires_grad=True)
    c0 = torch.randn(2, *blocks, 4, generator=g, dtype=torch.float64, requires_grad=True)
    fast, slow = scan(A, b, c0), matrix_scan_reference(A, b, c0)
    torch.testing.assert_close(fast, slow, rtol=1e-12, atol=1e-12)
    w = torch.randn(fast.shape, generator=g, dtype=torch.float64)
    for x, y in zip(_grads(fast, (A, b, c0), w), _grads(slow, (A, b, c0), w)):
        torch.testing.assert_close(x, y, rtol=1e-10, atol=1e-12)


def test_the_recurrence_steps_on_a_cpu_and_reduces_odd_even_elsewhere(monkeypatch):
    import memtrain.models.scan as scan
    used = []
    for name in ("linear_scan_reference", "linear_scan_pairs"):
        monkeypatch.setattr(scan, name, lambda *a, _n=name: used.append(_n))
    a = torch.rand(1, 4, 2)
    scan.linear_recurrence(a, a, a[:, 0])
    scan.linear_recurrence(a.to("meta"), a.to("meta"), a[:, 0].to("meta"))  # any device but the CPU
    assert used == ["linear_scan_reference", "linear_scan_pairs"]
