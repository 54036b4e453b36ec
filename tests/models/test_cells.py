"""Every cell keeps the (B, Z) contract; flags do what they promise."""
import pytest
import torch

from memtrain.models.cells import CELLS, CellConfig, build_cell
from tests.conftest import D, K, V, tiny_cell


@pytest.mark.parametrize("kind", sorted(CELLS))
def test_contract_shapes_and_norm(kind):
    cell = tiny_cell(kind)
    m = cell.init_memory(3)
    assert m.shape == (3, K * D)
    m2 = cell.update(m, torch.randint(0, V, (3,)))
    assert m2.shape == (3, K * D)
    rms = m2.view(3, K, D).pow(2).mean(-1).sqrt()
    torch.testing.assert_close(rms, torch.ones_like(rms), rtol=0, atol=1e-3)  # norm_memory=True (eps)
    assert cell.readout(m2).shape == (3, V)
    # every parameter of the update gets a gradient from a loss on the new memory
    loss = cell.update(torch.randn(3, K * D), torch.randint(0, V, (3,))).pow(3).sum()
    loss.backward()
    named = dict(cell.named_parameters())
    upd = [n for n in named if not n.startswith("head.") and n != "m_init"]
    assert upd and all(named[n].grad is not None and named[n].grad.abs().sum() > 0 for n in upd)


@pytest.mark.parametrize("kind", sorted(CELLS))
def test_norm_memory_off_gives_raw_state(kind):
    cell = tiny_cell(kind, norm_memory=False)
    m2 = cell.update(torch.randn(4, K * D) * 0.1, torch.randint(0, V, (4,)))
    rms = m2.view(4, K, D).pow(2).mean(-1).sqrt()
    assert not torch.allclose(rms, torch.ones_like(rms), atol=1e-3)
    if kind in ("elman", "gru"):
        assert float(m2.detach().abs().max()) < 1  # tanh-bounded state, as in the textbook cell


@pytest.mark.parametrize("kind", ["mlp", "memtok"])
def test_residual_flag_gradient(kind):
    """residual=True: with the update's last layer zeroed, m' = m and dm'/dm = I (a clean identity
    path); residual=False: no path from m at all."""
    for residual in (True, False):
        cell = tiny_cell(kind, residual=residual).double()
        with torch.no_grad():
            if kind == "mlp":
                cell.out.weight.zero_(); cell.out.bias.zero_()
            else:
                for blk in cell.blocks:
                    blk.attn.proj.weight.zero_(); blk.mlp.out.weight.zero_(); blk.mlp.out.bias.zero_()
        m = torch.nn.functional.rms_norm(torch.randn(1, K, D, dtype=torch.float64), (D,)).view(1, K * D)
        x = torch.tensor([1])
        J = torch.autograd.functional.jacobian(lambda mm: cell.update(mm, x), m)[0, :, 0, :]
        if residual:
            torch.testing.assert_close(cell.update(m, x), m)
            assert torch.linalg.matrix_rank(J) >= K * D - K  # identity up to the per-token norm
        else:
            assert float(J.abs().max()) == 0.0


def test_lstm_needs_even_tokens():
    with pytest.raises(ValueError, match="cell.mem_tokens"):
        build_cell(CellConfig(kind="lstm", vocab_size=V, mem_tokens=3, d_mem=D, n_heads=2))


def test_unknown_cell_is_named():
    with pytest.raises(ValueError, match="cell.kind"):
        build_cell(CellConfig(kind="transformer", vocab_size=V))
