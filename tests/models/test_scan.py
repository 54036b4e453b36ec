"""matrix_scan: the dense and block-diagonal linear recurrence in log2(T) rounds equals a loop."""
import pytest
import torch

from memtrain.models.scan import matrix_scan, matrix_scan_reference


@pytest.mark.parametrize("T", [1, 2, 5, 8, 13])
@pytest.mark.parametrize("blocks", [(), (3,)])  # one dense system; three independent 4 x 4 blocks
def test_matrix_scan_equals_a_loop(T, blocks):
    g = torch.Generator().manual_seed(T)
    A = torch.randn(2, T, *blocks, 4, 4, generator=g, dtype=torch.float64) / 2
    b = torch.randn(2, T, *blocks, 4, generator=g, dtype=torch.float64)
    c0 = torch.randn(2, *blocks, 4, generator=g, dtype=torch.float64)
    torch.testing.assert_close(matrix_scan(A, b, c0), matrix_scan_reference(A, b, c0), rtol=1e-12, atol=1e-12)


def test_matrix_scan_gradients_equal_the_loop():
    g = torch.Generator().manual_seed(0)
    A = (torch.randn(1, 6, 3, 3, generator=g, dtype=torch.float64) / 2).requires_grad_()
    b = torch.randn(1, 6, 3, generator=g, dtype=torch.float64, requires_grad=True)
    c0 = torch.randn(1, 3, generator=g, dtype=torch.float64)
    w = torch.randn(1, 6, 3, generator=g, dtype=torch.float64)
    fast = torch.autograd.grad((matrix_scan(A, b, c0) * w).sum(), (A, b))
    slow = torch.autograd.grad((matrix_scan_reference(A, b, c0) * w).sum(), (A, b))
    for f, s in zip(fast, slow):
        torch.testing.assert_close(f, s, rtol=1e-12, atol=1e-12)
