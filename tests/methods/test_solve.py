"""solve_rollout: every solver reproduces the sequential rollout of every cell (float64), is exact
after T iterations even for a chaotic cell, and never returns an unconverged trajectory silently."""
import time

import pytest
import torch

from memtrain.methods.rollout import rollout
from memtrain.methods.solve import SOLVERS, block_index, jacobians, linearised_step, parallel_rollout, solve_rollout, step_all
from tests.conftest import V, tiny_cell

KINDS = ["mlp", "memtok", "elman", "gru", "lstm", "torch-lstm", "torch-gru", "para-gru", "para-lstm"]


def _case(kind, B=3, T=12, scale=1.0):
    cell = tiny_cell(kind).double()
    if scale != 1.0:
        with torch.no_grad():
            for p in cell.parameters():
                p.mul_(scale)
    x = torch.randint(0, V, (B, T))
    m0 = cell.init_memory(B).detach() + 0.1 * torch.randn(B, cell.Z, dtype=torch.float64)
    return cell, m0, x


@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("kind", KINDS)
def test_every_solver_reproduces_the_rollout(kind, solver):
    cell, m0, x = _case(kind)
    want = rollout(cell, m0, x).detach()
    got, report = solve_rollout(cell, m0, x, solver=solver, atol=1e-11, rtol=0.0, on_fail="raise")
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)
    assert report.converged.all() and not report.fell_back and report.residual.max() <= 1e-11
    assert 1 <= report.iterations <= x.shape[1]


@pytest.mark.parametrize("solver", SOLVERS)
def test_after_k_iterations_the_first_k_steps_are_exact(solver):
    """The property that makes the fallback free: iteration k fixes step k, whatever A_t is."""
    cell, m0, x = _case("mlp", scale=3.0)
    want = rollout(cell, m0, x).detach()[:, 1:]
    m = step_all(cell, m0[:, None].expand_as(want), x).detach()
    for k in range(1, x.shape[1] + 1):
        prev = torch.cat([m0[:, None], m[:, :-1]], dim=1)
        with torch.no_grad():
            m = linearised_step(solver, cell, m0, prev, x, step_all(cell, prev, x), damping=0.5 if solver == "picard" else 0.0)
        torch.testing.assert_close(m[:, : k + 1], want[:, : k + 1], rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("solver", SOLVERS)
def test_chaotic_cell_is_exact_after_T_iterations(solver):
    """Weights x 100: no solver converges early (every one needs about T iterations), yet T
    iterations give the sequential trajectory."""
    cell, m0, x = _case("elman", scale=100.0, T=10)
    want = rollout(cell, m0, x).detach()
    got, report = solve_rollout(cell, m0, x, solver=solver, atol=1e-9, rtol=0.0, on_fail="raise")
    torch.testing.assert_close(got, want, rtol=1e-8, atol=1e-8)
    assert x.shape[1] - 2 <= report.iterations <= x.shape[1] and report.converged.all()


def test_newton_converges_in_fewer_iterations_than_jacobi():
    cell, m0, x = _case("mlp", T=24)
    its = {s: solve_rollout(cell, m0, x, solver=s, atol=1e-10, rtol=0.0)[1].iterations for s in ("jacobi", "newton")}
    assert its["newton"] < its["jacobi"]


def test_unconverged_sequences_fall_back_and_say_so():
    cell, m0, x = _case("mlp", scale=3.0)
    want = rollout(cell, m0, x).detach()
    got, report = solve_rollout(cell, m0, x, solver="jacobi", max_iter=2, atol=1e-12, rtol=0.0)
    assert report.fell_back and not report.converged.any() and report.iterations == 2
    assert (report.residual > 1e-12).all()
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)  # the fallback is the sequential rollout
    with pytest.raises(RuntimeError, match=r"rollout.solver='jacobi' did not converge in 2 iterations on 3 of 3"):
        solve_rollout(cell, m0, x, solver="jacobi", max_iter=2, atol=1e-12, rtol=0.0, on_fail="raise")


def test_a_spent_deadline_stops_iterating_and_falls_back_exactly():
    cell, m0, x = _case("mlp", scale=3.0)
    want = rollout(cell, m0, x).detach()
    got, report = solve_rollout(cell, m0, x, solver="quasi", atol=1e-12, rtol=0.0, deadline=time.perf_counter() - 1.0)
    assert report.iterations == 0 and report.fell_back and not report.converged.any()
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_converged_sequences_are_frozen_while_others_iterate():
    cell, m0, x = _case("mlp")
    got, report = solve_rollout(cell, m0, x, solver="quasi", atol=1e-10, rtol=0.0)
    one, _ = solve_rollout(cell, m0[:1], x[:1], solver="quasi", atol=1e-10, rtol=0.0)
    torch.testing.assert_close(got[:1], one, rtol=1e-9, atol=1e-9)
    assert report.residual.shape == (3,) and report.converged.shape == (3,)


def test_lstm_blocks_are_its_units():
    idx = block_index(tiny_cell("torch-lstm"))
    assert idx.shape == (8, 2) and idx[3].tolist() == [3, 11]
    assert sorted(idx.reshape(-1).tolist()) == list(range(16))
    assert block_index(tiny_cell("mlp")).tolist() == torch.arange(16).view(2, 8).tolist()  # per memory token


@pytest.mark.parametrize("kind", ["mlp", "memtok", "lstm", "para-gru", "para-lstm"])
def test_jacobians_equal_autograd(kind):
    """torch.func's, and the ParaRNN cells' closed forms (their diagonal / 2 x 2 blocks)."""
    cell, _, x = _case(kind, B=2, T=3)
    prev = torch.randn(2, 3, cell.Z, dtype=torch.float64)
    J = jacobians(cell, prev, x, "dense", chunk=4)
    d = jacobians(cell, prev, x, "diag", chunk=4)
    blocks = jacobians(cell, prev, x, "block", chunk=4)
    idx = block_index(cell)
    for b in range(2):
        for t in range(3):
            xt = x[b, t][None]
            ref = torch.autograd.functional.jacobian(lambda m, xt=xt: cell.update(m[None], xt)[0], prev[b, t])
            torch.testing.assert_close(J[b, t], ref, rtol=1e-10, atol=1e-10)
            torch.testing.assert_close(d[b, t], ref.diagonal(), rtol=1e-10, atol=1e-10)
            torch.testing.assert_close(blocks[b, t], ref[idx[:, :, None], idx[:, None, :]], rtol=1e-10, atol=1e-10)
            if kind.startswith("para-"):  # and the blocks are the whole Jacobian
                kept = torch.zeros_like(ref, dtype=torch.bool)
                kept[idx[:, :, None], idx[:, None, :]] = True
                assert ref[~kept].abs().max() == 0


@pytest.mark.parametrize("kind, structure", [("para-gru", "diag"), ("para-lstm", "block")])
def test_the_parallel_rnn_cells_exact_structure_converges_as_newton_does(kind, structure):
    """quasi on ParaGRU and block on ParaLSTM use the whole Jacobian: they are Newton's method."""
    cell, m0, x = _case(kind, T=32)
    solver = "quasi" if structure == "diag" else "block"
    its = {s: solve_rollout(cell, m0, x, solver=s, atol=1e-10, rtol=0.0)[1].iterations for s in (solver, "newton", "jacobi")}
    assert its[solver] == its["newton"] < its["jacobi"]


def test_empty_sequence_and_bad_settings():
    cell, m0, _ = _case("mlp")
    got, report = solve_rollout(cell, m0, torch.zeros(3, 0, dtype=torch.long))
    assert got.shape == (3, 1, cell.Z) and report.iterations == 0
    x = torch.zeros(3, 4, dtype=torch.long)
    with pytest.raises(ValueError, match="rollout.solver must be one of"):
        solve_rollout(cell, m0, x, solver="deer")
    with pytest.raises(ValueError, match="rollout.on_fail"):
        solve_rollout(cell, m0, x, on_fail="ignore")
    with pytest.raises(ValueError, match="rollout.damping"):
        solve_rollout(cell, m0, x, damping=1.0)


def _bptt_grads(cell, m0, x, w, run):
    m0 = m0.clone().requires_grad_()
    params = list(cell.parameters())
    loss = (run(cell, m0, x) * w).sum()
    return torch.autograd.grad(loss, [m0, *params], allow_unused=True)


@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("kind", KINDS)
def test_implicit_adjoint_gradients_equal_bptt(kind, solver):
    cell, m0, x = _case(kind, T=10)
    w = torch.randn(3, 11, cell.Z, dtype=torch.float64)  # a loss on every memory, m0 included
    want = _bptt_grads(cell, m0, x, w, rollout)
    reports = []

    def solved(c, m, xs):
        out, report = parallel_rollout(c, m, xs, solver=solver, atol=1e-12, rtol=0.0, on_fail="raise")
        reports.append(report)
        return out

    got = _bptt_grads(cell, m0, x, w, solved)
    for a, b in zip(got, want):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-9)
    adj = reports[0].adjoint
    assert adj is not None and adj.converged.all() and not adj.fell_back
    if solver == "newton":  # the adjoint is linear: exact Jacobians solve it in one iteration
        assert adj.iterations == 1


def test_unconverged_adjoint_falls_back_to_the_sequential_backward():
    cell, m0, x = _case("mlp", scale=3.0)
    w = torch.randn(3, x.shape[1] + 1, cell.Z, dtype=torch.float64)
    want = _bptt_grads(cell, m0, x, w, rollout)
    reports = []

    def solved(c, m, xs):
        out, report = parallel_rollout(c, m, xs, solver="jacobi", max_iter=2, atol=1e-12, rtol=0.0)
        reports.append(report)
        return out

    got = _bptt_grads(cell, m0, x, w, solved)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)
    assert reports[0].fell_back and reports[0].adjoint.fell_back and reports[0].adjoint.iterations == 2


def test_no_graph_without_grad_mode():
    cell, m0, x = _case("mlp")
    with torch.no_grad():
        out, report = parallel_rollout(cell, m0.requires_grad_(), x, atol=1e-10, rtol=0.0)
    assert not out.requires_grad and report.adjoint is None
