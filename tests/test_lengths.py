"""Rows of different lengths (memtrain/lengths.py): masks, held memories, padding."""
import numpy as np
import pytest
import torch

from memtrain.lengths import check_lengths, hold_after_end, last_index, mask_targets, pad, step_mask


def test_step_mask_and_targets():
    L = torch.tensor([3, 1, 4])
    assert step_mask(L, 3, 4).tolist() == [[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 1, 1]]
    assert step_mask(None, 2, 3).all() and step_mask(None, 2, 3).shape == (2, 3)
    y = torch.arange(12).view(3, 4)
    assert mask_targets(y, L).tolist() == [[0, 1, 2, -1], [4, -1, -1, -1], [8, 9, 10, 11]]
    assert mask_targets(y, None) is y
    assert last_index(L, 3, 4).tolist() == [3, 1, 4] and last_index(None, 2, 5).tolist() == [5, 5]


def test_hold_after_end_keeps_real_memories_and_routes_held_gradients_to_the_end():
    M = torch.randn(2, 5, 3, dtype=torch.float64, requires_grad=True)
    L = torch.tensor([2, 4])
    H = hold_after_end(M, L)
    want = torch.stack([M[0, [0, 1, 2, 2, 2]], M[1, [0, 1, 2, 3, 4]]])
    assert torch.equal(H, want)
    g = torch.randn_like(H)
    (H * g).sum().backward()
    expect = torch.zeros_like(M)
    expect[0, :2] = g[0, :2]
    expect[0, 2] = g[0, 2:].sum(0)
    expect[1] = g[1]
    assert torch.allclose(M.grad, expect, rtol=0, atol=1e-12)
    assert hold_after_end(M, None) is M


def test_check_lengths_names_what_is_wrong():
    check_lengths(torch.tensor([1, 5]), 2, 5)
    check_lengths(None, 2, 5)
    with pytest.raises(ValueError, match=r"lengths must lie in 1\.\.5"):
        check_lengths(torch.tensor([0, 5]), 2, 5)
    with pytest.raises(ValueError, match=r"lengths must lie in 1\.\.5"):
        check_lengths(torch.tensor([6, 5]), 2, 5)
    with pytest.raises(ValueError, match="must be 2 integers"):
        check_lengths(torch.tensor([1.0, 2.0]), 2, 5)
    with pytest.raises(ValueError, match="must be 2 integers"):
        check_lengths(torch.tensor([1, 2, 3]), 2, 5)


def test_pad_right_pads_to_the_longest():
    x, L = pad([[1, 2, 3], [4], [5, 6]], pad_value=0)
    assert x.tolist() == [[1, 2, 3], [4, 0, 0], [5, 6, 0]] and L.tolist() == [3, 1, 2] and L.dtype == np.int64
    f, L2 = pad([np.ones((2, 3)), np.zeros((4, 3))], pad_value=np.nan)
    assert f.shape == (2, 4, 3) and np.isnan(f[0, 2:]).all() and L2.tolist() == [2, 4]
    with pytest.raises(ValueError, match="trailing shape"):
        pad([np.ones((2, 3)), np.ones((2, 4))])
    with pytest.raises(ValueError, match="sequence 1 is empty"):
        pad([[1], []])
    with pytest.raises(ValueError, match="no sequences"):
        pad([])
