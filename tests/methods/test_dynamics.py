"""largest_lyapunov: the renormalised product equals the log-growth of the explicit Jacobian
product, and its sign tells which trajectories a parallel solver can take in few iterations."""
import pytest
import torch

from memtrain.methods.dynamics import largest_lyapunov
from memtrain.methods.solve import solve_rollout
from tests.conftest import V, tiny_cell


def _scaled(kind, scale):
    cell = tiny_cell(kind).double()
    with torch.no_grad():
        for name, p in cell.named_parameters():
            if not name.startswith(("head", "embed")):
                p.mul_(scale)
    return cell


@pytest.mark.parametrize("kind", ["mlp", "para-lstm", "torch-gru"])
def test_the_estimate_is_the_growth_of_the_jacobian_product(kind):
    cell = _scaled(kind, 2.0)
    x = torch.randint(0, V, (2, 9))
    m = cell.init_memory(2).detach().clone() + 0.1
    v0 = torch.randn(2, cell.Z, dtype=torch.float64)
    got = largest_lyapunov(cell, m, x, v0=v0)
    for b in range(2):
        state, P = m[b], torch.eye(cell.Z, dtype=torch.float64)
        for t in range(9):
            xt = x[b, t][None]
            J = torch.autograd.functional.jacobian(lambda s, xt=xt: cell.update(s[None], xt)[0], state)
            P, state = J @ P, cell.update(state[None], xt)[0].detach()
        want = (P @ v0[b]).norm().log() - v0[b].norm().log()
        assert got[b].item() * 9 == pytest.approx(want.item(), rel=1e-10, abs=1e-10)


def test_the_sign_predicts_how_newton_converges():
    """A contracting cell (exponent < 0) is solved in a handful of Newton iterations; a chaotic one
    (exponent > 0: Elman with its weights x 3) needs nearly all T (59-64 of 64 on the CPUs tried: the
    last iterations depend on the kernels' rounding, so the bound is three quarters of T)."""
    x = torch.randint(0, V, (4, 64))
    for kind, scale, negative in (("para-gru", 0.1, True), ("elman", 3.0, False)):
        cell = _scaled(kind, scale)
        m0 = cell.init_memory(4).detach()
        lle = largest_lyapunov(cell, m0, x, burn_in=16, gen=torch.Generator().manual_seed(0))
        its = solve_rollout(cell, m0, x, solver="newton", atol=1e-8, rtol=0.0)[1].iterations
        if negative:
            assert (lle < -0.3).all() and its <= 4
        else:
            assert lle.mean() > 0.05 and its >= 48


def test_bad_burn_in():
    cell = tiny_cell("mlp")
    with pytest.raises(ValueError, match="burn_in must be in"):
        largest_lyapunov(cell, cell.init_memory(1), torch.zeros(1, 4, dtype=torch.long), burn_in=4)
