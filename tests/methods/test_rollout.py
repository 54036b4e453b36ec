"""rollout: equals an explicit loop, and grad_horizon cuts gradients exactly where it promises."""
import pytest
import torch

from memtrain.methods.rollout import AutoSolver, Rollout, RolloutConfig, rollout
from tests.conftest import V, tiny_cell


def test_rollout_matches_explicit_loop():
    cell = tiny_cell("gru").double()
    x = torch.randint(0, V, (3, 6))
    m = cell.init_memory(3)
    out = [m]
    for s in range(6):
        m = cell.update(m, x[:, s])
        out.append(m)
    torch.testing.assert_close(rollout(cell, cell.init_memory(3), x), torch.stack(out, 1), rtol=0, atol=0)


def _grad_to_start(cell, horizon, step):
    """|d m_step / d m0| (summed) for a rollout from a leaf m0."""
    x = torch.randint(0, V, (2, 5))
    m0 = cell.init_memory(2).detach().clone().requires_grad_()
    M = rollout(cell, m0, x, grad_horizon=horizon)
    (g,) = torch.autograd.grad(M[:, step].sum(), m0, allow_unused=True)
    return 0.0 if g is None else float(g.abs().sum())


@pytest.mark.parametrize("kind", ["mlp", "elman", "lstm"])
def test_grad_horizon(kind):
    cell = tiny_cell(kind).double()
    # full: every memory depends on m0
    assert all(_grad_to_start(cell, None, s) > 0 for s in range(1, 6))
    # one-step: only m_1 sees m0; the loss on m_s has zero gradient to memories 2+ steps back
    assert _grad_to_start(cell, 1, 1) > 0
    assert all(_grad_to_start(cell, 1, s) == 0 for s in range(2, 6))
    # truncation at 2: m_1, m_2 see m0; from m_3 on the graph is cut
    assert _grad_to_start(cell, 2, 2) > 0 and _grad_to_start(cell, 2, 3) == 0


def test_one_step_gradient_through_chain_of_memories():
    """With grad_horizon=1, a loss on m_s reaches m_{s-1} but not m_{s-2}."""
    cell = tiny_cell("mlp").double()
    x = torch.randint(0, V, (2, 4))
    ms = [cell.init_memory(2)]
    for s in range(4):  # the same cut rollout applies, with handles on the memories
        prev = ms[-1].detach().requires_grad_() if s > 0 else ms[-1]
        ms[-1] = prev
        ms.append(cell.update(prev, x[:, s]))
    g1, g2 = torch.autograd.grad(ms[4].sum(), [ms[3], ms[2]], allow_unused=True)
    assert g1 is not None and float(g1.abs().sum()) > 0
    assert g2 is None
    torch.testing.assert_close(rollout(cell, cell.init_memory(2), x, grad_horizon=1), torch.stack(ms, 1))


def test_bad_horizon():
    with pytest.raises(ValueError, match="grad_horizon"):
        rollout(tiny_cell(), torch.zeros(1, 16), torch.zeros(1, 2, dtype=torch.long), grad_horizon=0)


SOLVED = Rollout(RolloutConfig(solver="quasi", atol=1e-12, rtol=0.0, on_fail="raise"))


def _values_and_grads(cell, x, horizon, how):
    m0 = cell.init_memory(2).detach().clone().requires_grad_()
    M = rollout(cell, m0, x, grad_horizon=horizon, how=how)
    w = torch.randn_like(M, generator=torch.Generator().manual_seed(1))
    grads = torch.autograd.grad((M * w).sum(), [m0, *cell.parameters()], allow_unused=True)
    return M.detach(), grads


@pytest.mark.parametrize("horizon", [None, 1, 3])
@pytest.mark.parametrize("kind", ["mlp", "lstm", "torch-gru"])
def test_a_solved_rollout_equals_the_stepped_one_in_values_and_gradients(kind, horizon):
    cell = tiny_cell(kind).double()
    x = torch.randint(0, V, (2, 7))
    want, want_g = _values_and_grads(cell, x, horizon, None)
    got, got_g = _values_and_grads(cell, x, horizon, SOLVED)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)
    for a, b in zip(got_g, want_g):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-9)


def test_the_rollout_given_is_used_and_none_steps(monkeypatch):
    import memtrain.methods.rollout as r
    calls = []
    monkeypatch.setattr(r, "_solved", lambda *a: calls.append(a[-1]["solver"]) or (torch.zeros(1, 3, 16), False))
    cell = tiny_cell("mlp")
    x = torch.zeros(1, 2, dtype=torch.long)
    rollout(cell, cell.init_memory(1), x)
    assert calls == []  # no Rollout: stepped
    rollout(cell, cell.init_memory(1), x, how=Rollout(RolloutConfig(solver="newton")))
    rollout(cell, cell.init_memory(1), x, how=Rollout(RolloutConfig(solver="jacobi")))
    assert calls == ["newton", "jacobi"]
    rollout(cell, cell.init_memory(1), x, how=Rollout())  # the default settings: stepped
    assert calls == ["newton", "jacobi"]
    assert not hasattr(cell, "solver") and not hasattr(cell, "_auto_solver"), "the cell carries no run state"


@pytest.mark.parametrize("bad, match", [({"solver": "deer"}, "rollout.solver must be one of sequential, jacobi"),
                                        ({"on_fail": "warn"}, "rollout.on_fail"), ({"damping": -0.1}, "rollout.damping"),
                                        ({"max_iter": 0}, "rollout.max_iter"), ({"atol": -1.0}, "rollout.atol"),
                                        ({"solver": "auto", "on_fail": "raise"}, "auto falls back to stepping by design")])
def test_bad_rollout_settings(bad, match):
    with pytest.raises(ValueError, match=match):
        RolloutConfig(**bad).validate()


def test_auto_tries_each_candidate_then_keeps_the_fastest_and_drops_a_solver_that_falls_back():
    auto = AutoSolver(tiny_cell("para-gru"), trials=2, slack=2.0)
    assert auto.candidates == ["sequential", "jacobi", "quasi", "block"]  # para-gru has closed-form diag and blocks
    key, other = (2, 8, None, True, "cpu", "torch.float32"), (4, 8, 1, True, "cpu", "torch.float32")
    cost = {"sequential": 1.0, "jacobi": 1.5, "quasi": 0.4, "block": 0.6}
    order, budgets = [], []
    for _ in range(8):
        name, budget = auto.next(key)
        order.append(name)
        budgets.append(budget)
        auto.record(key, name, cost[name], fell_back=False)
    assert order == ["sequential", "jacobi", "quasi", "block"] * 2  # turns, stepping first
    assert budgets[:4] == [None, 2.0, 2.0, 0.8]  # slack x the fastest so far
    assert auto.next(other) == ("sequential", None)  # another kind of call has trials of its own
    assert auto.next(key) == ("quasi", 2.0)  # chosen; its budget is slack x stepping's time
    assert auto.choices()[0] == {"batch": 2, "length": 8, "grad_horizon": None, "grad": True, "device": "cpu",
                                 "dtype": "torch.float32", "seconds": cost, "failed": [], "chosen": "quasi"}
    auto.record(key, "quasi", 5.0, fell_back=True)
    assert auto.next(key) == ("sequential", None) and auto.choices()[0]["failed"] == ["quasi"]


def test_auto_never_chooses_a_solver_that_fell_back_in_its_trial():
    auto = AutoSolver(tiny_cell("mlp"), trials=1)
    assert auto.candidates == ["sequential", "jacobi"]  # the mlp cell has no closed-form Jacobian parts
    key = (1, 4, None, False, "cpu", "torch.float32")
    auto.record(key, *auto.next(key)[:1], 1.0, fell_back=False)
    name, _ = auto.next(key)
    auto.record(key, name, 0.1, fell_back=True)  # faster, but it did not converge
    assert auto.next(key) == ("sequential", None)


@pytest.mark.parametrize("horizon", [None, 1])
def test_auto_rollouts_equal_stepping_in_values_and_gradients_through_trials_and_after(horizon):
    cell = tiny_cell("para-gru").double()
    how = Rollout(RolloutConfig(solver="auto", atol=1e-12, rtol=0.0))
    assert how.choices() == [], "nothing measured yet"
    x = torch.randint(0, V, (2, 9))
    want, want_g = _values_and_grads(cell, x, horizon, None)
    for _ in range(2 * 4 + 2):  # two trials of each of the four candidates, then the choice
        got, got_g = _values_and_grads(cell, x, horizon, how)
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)
        for a, b in zip(got_g, want_g):
            torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-9)
    (choice,) = how.choices()
    assert choice["chosen"] in ("sequential", "jacobi", "quasi", "block") and choice["grad_horizon"] == horizon
    assert set(choice["seconds"]) | set(choice["failed"]) == {"sequential", "jacobi", "quasi", "block"}


def test_auto_on_a_chaotic_cell_is_exact_and_keeps_stepping():
    cell = tiny_cell("mlp").double()
    with torch.no_grad():
        for p in cell.parameters():
            p.mul_(30.0)  # expanding: jacobi needs about T iterations
    how = Rollout(RolloutConfig(solver="auto", max_iter=3, atol=1e-12, rtol=0.0))
    x = torch.randint(0, V, (2, 12))
    want = rollout(cell, cell.init_memory(2), x).detach()
    with torch.no_grad():
        for _ in range(5):
            torch.testing.assert_close(rollout(cell, cell.init_memory(2), x, how=how), want, rtol=1e-12, atol=1e-12)
    (choice,) = how.choices()
    assert choice["failed"] == ["jacobi"] and choice["chosen"] == "sequential"
