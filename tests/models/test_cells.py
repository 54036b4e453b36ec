"""Every cell keeps the (B, Z) contract; flags do what they promise."""
import pytest
import torch

from memtrain.methods.rollout import rollout
from memtrain.models.cells import (
    CELLS,
    FUSED_KINDS,
    TEXTBOOK_KINDS,
    CellConfig,
    build_cell,
    check_compatible,
)
from memtrain.models.teacher import TeacherConfig
from tests.conftest import D, K, V, tiny_cell

OURS = sorted(set(CELLS) - set(TEXTBOOK_KINDS))


@pytest.mark.parametrize("kind", OURS)
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


@pytest.mark.parametrize("kind", OURS)
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


@pytest.mark.parametrize("kind", FUSED_KINDS)
@pytest.mark.parametrize("horizon", [None, 3])
def test_fused_sequence_equals_stepping_the_same_cell(kind, horizon):
    """torch's fused cells: `rollout` takes their whole-sequence path; memories and gradients equal
    stepping `update` (float64), also with the gradient cut every `horizon` steps."""
    cell = tiny_cell(kind).double()
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, V, (3, 8), generator=g)
    m0 = (0.3 * torch.randn(3, K * D, generator=g, dtype=torch.float64)).requires_grad_()
    fast = rollout(cell, m0, x, grad_horizon=horizon)
    m, steps = m0, [m0]
    for s in range(8):
        if horizon and s and s % horizon == 0:
            m = m.detach()
        m = cell.update(m, x[:, s])
        steps.append(m)
    slow = torch.stack(steps, 1)
    assert fast.shape == (3, 9, K * D)
    torch.testing.assert_close(fast, slow, rtol=0, atol=1e-12)
    w = torch.randn_like(fast)
    params = [m0] + list(cell.parameters())
    gf = torch.autograd.grad((fast * w).sum(), params, allow_unused=True)
    gs = torch.autograd.grad((slow * w).sum(), params, allow_unused=True)
    for a, b in zip(gf, gs):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    # the readout reads h (all of a GRU's memory, the first half of an LSTM's) through one linear layer
    h = fast[:, -1, : (K * D) // 2] if kind == "torch-lstm" else fast[:, -1]
    torch.testing.assert_close(cell.readout(fast[:, -1]), cell.head(h))


@pytest.mark.parametrize("kind", FUSED_KINDS)
def test_fused_cells_update_supports_forward_mode_ad(kind):
    """`update` is written out (the fused kernel has no forward-mode AD on CPU): a Jacobian-vector
    product by torch.func.jvp equals the reverse-mode Jacobian applied to the same vector (float64)."""
    cell = tiny_cell(kind).double()
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, V, (2,), generator=g)
    m = 0.5 * torch.randn(2, K * D, generator=g, dtype=torch.float64)
    v = torch.randn(2, K * D, generator=g, dtype=torch.float64)
    out, jv = torch.func.jvp(lambda s: cell.update(s, x), (m,), (v,))
    jac = torch.autograd.functional.jacobian(lambda s: cell.update(s, x).sum(0), m)  # (Z, B, Z): rows independent
    want = torch.einsum("ibj,bj->bi", jac, v)
    torch.testing.assert_close(out, cell.update(m, x))
    torch.testing.assert_close(jv, want, rtol=1e-10, atol=1e-12)
    assert jv.abs().max() > 1e-3  # the memory does depend on the previous memory


@pytest.mark.parametrize("kind", TEXTBOOK_KINDS)
def test_fused_cells_are_textbook_and_bptt_only(kind):
    cell = tiny_cell(kind)
    assert cell.cfg.norm_memory is False and torch.equal(cell.init_memory(2), torch.zeros(2, K * D))
    with pytest.raises(ValueError, match="cell.norm_memory"):
        tiny_cell(kind, norm_memory=True)
    with pytest.raises(ValueError, match="textbook baseline for BPTT"):
        check_compatible(cell.cfg, TeacherConfig(vocab_size=V, mem_tokens=K, d_model=D, n_heads=2))
