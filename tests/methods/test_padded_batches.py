"""Rows of different lengths through every method and the evaluation, in float64: a padded batch gives
the memories, losses and gradients of each sequence alone. The padding holds random tokens and random
*valid* targets, so anything that read past a row's end would show."""
import pytest
import torch

from memtrain.methods.bptt import BPTT, BPTTConfig
from memtrain.methods.dmt import DMTConfig, dmt_loss, rollout_starts
from memtrain.methods.evaluate import evaluate, kstep_errors
from memtrain.methods.rollout import rollout
from memtrain.methods.smt import SMT, SMTConfig, draw_inside, future_targets, sample_transitions
from tests.conftest import V, tiny_cell, tiny_teacher

LENGTHS = [9, 4, 6]
T = max(LENGTHS)


def _batch(seed=0):
    """Three sequences alone (x_b, y_b) of LENGTHS, and the padded batch (x, y, lengths)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, V, (len(LENGTHS), T), generator=g)
    y = torch.randint(0, V, (len(LENGTHS), T), generator=g)
    y[torch.rand(y.shape, generator=g) < 0.3] = -1  # some unsupervised steps inside the rows too
    y[:, 0] = 1  # (every row has a supervised step)
    alone = [(x[b:b + 1, :L].clone(), y[b:b + 1, :L].clone()) for b, L in enumerate(LENGTHS)]
    return x, y, torch.tensor(LENGTHS), alone


def _nets(kind="mlp"):
    torch.manual_seed(0)
    return tiny_teacher().double(), tiny_cell(kind).double()


def _grads(params, loss):
    return torch.autograd.grad(loss, params, allow_unused=True)


def _combine(values, weights):
    w = torch.tensor(weights, dtype=torch.float64)
    return sum(wi * v for wi, v in zip(w, values)) / w.sum()


@pytest.mark.parametrize("kind", ["mlp", "gru", "memtok", "torch-lstm"])
def test_rollout_of_a_padded_batch_is_each_row_alone_then_held(kind):
    _, cell = _nets(kind)
    x, _, L, alone = _batch()
    M = rollout(cell, cell.init_memory(3).double(), x, lengths=L)
    for b, (xb, _) in enumerate(alone):
        Mb = rollout(cell, cell.init_memory(1).double(), xb)
        assert torch.allclose(M[b, : LENGTHS[b] + 1], Mb[0], rtol=0, atol=1e-12)
        assert torch.equal(M[b, LENGTHS[b]:], M[b, LENGTHS[b]].expand(T + 1 - LENGTHS[b], -1)), "held after the end"


@pytest.mark.parametrize("solver", ["jacobi", "newton"])
def test_a_parallel_solve_of_a_padded_batch_holds_too(solver):
    """The solvers run over the padding too, but what they find there never reaches a real memory or
    its gradient: memories and gradients as stepping each row alone."""
    from memtrain.methods.rollout import Rollout, RolloutConfig
    _, cell = _nets("mlp")
    x, _, L, alone = _batch()
    how = Rollout(RolloutConfig(solver=solver, atol=1e-12, rtol=0.0))
    M = rollout(cell, cell.init_memory(3), x, how=how, lengths=L)
    params = list(cell.parameters())
    g = [torch.zeros_like(p) if gi is None else gi for p, gi in zip(params, _grads(params, M.pow(2).sum()))]
    want = [torch.zeros_like(p) for p in params]
    for b, (xb, _) in enumerate(alone):
        Mb = rollout(cell, cell.init_memory(1), xb)
        assert torch.allclose(M[b, : LENGTHS[b] + 1], Mb[0], rtol=0, atol=1e-10)
        held = Mb.pow(2).sum() + (T - LENGTHS[b]) * Mb[0, -1].pow(2).sum()  # the held copies count at the end
        want = [w if gi is None else w + gi for w, gi in zip(want, _grads(params, held))]
    assert all(torch.allclose(a, b_, rtol=1e-8, atol=1e-10) for a, b_ in zip(g, want)) and any(bool(w.abs().sum() > 0) for w in want)


def test_bptt_on_a_padded_batch_is_the_token_weighted_mean_of_each_alone():
    _, cell = _nets()
    m = BPTT(None, cell, BPTTConfig())
    x, y, L, alone = _batch()
    params = list(cell.parameters())
    loss, _ = m.loss(x, y, lengths=L)
    each = [m.loss(xb, yb)[0] for xb, yb in alone]
    n = [int((yb >= 0).sum()) for _, yb in alone]
    assert torch.allclose(loss, _combine(each, n), rtol=1e-12, atol=0)
    for g, *gs in zip(_grads(params, loss), *(_grads(params, e) for e in each)):
        assert torch.allclose(g, _combine(gs, n), rtol=1e-10, atol=1e-14)


def test_dmt_on_a_padded_batch_is_each_row_alone():
    teacher, cell = _nets()
    x, y, L, alone = _batch()
    params = list(cell.parameters())
    for coef_dyn, coef_readout, name in ((1.0, 0.0, "loss_dyn"), (0.0, 1.0, "loss_readout")):
        cfg = DMTConfig(coef_dyn=coef_dyn, coef_readout=coef_readout)
        s0 = torch.zeros(3, dtype=torch.long)
        loss, met = dmt_loss(teacher, cell, x, y, cfg, s0, lengths=L)
        each = [dmt_loss(teacher, cell, xb, yb, cfg, s0[:1]) for xb, yb in alone]
        n = LENGTHS if name == "loss_dyn" else [int((yb >= 0).sum()) for _, yb in alone]  # memories / targets
        assert torch.allclose(met[name], _combine([e[1][name] for e in each], n), rtol=1e-12, atol=0)
        for g, *gs in zip(_grads(params, loss), *(_grads(params, e[0]) for e in each)):
            assert torch.allclose(g, _combine(gs, n), rtol=1e-10, atol=1e-14)
    # the drift at the end is each row's drift at its own end
    _, met = dmt_loss(teacher, cell, x, y, DMTConfig(), torch.zeros(3, dtype=torch.long), lengths=L)
    ends = [dmt_loss(teacher, cell, xb, yb, DMTConfig(), torch.zeros(1, dtype=torch.long))[1]["drift_end"] for xb, yb in alone]
    assert torch.allclose(met["drift_end"], torch.stack(ends).mean(), rtol=1e-12, atol=0)


def test_dmt_rollouts_from_encoder_memories_start_and_stop_inside_their_rows():
    teacher, cell = _nets()
    x, y, L, alone = _batch()
    cfg = DMTConfig(start="encoder", rollout=5)
    for seed in range(20):
        s0 = rollout_starts(cfg, x, torch.Generator().manual_seed(seed), L)
        assert s0[0] <= 9 - 5 and s0[2] <= 6 - 5 and s0[1] == 0, "room for the rollout; a shorter row starts at 0"
    s0 = torch.tensor([3, 0, 1])
    loss, met = dmt_loss(teacher, cell, x, y, DMTConfig(start="encoder", rollout=5, coef_readout=0.0), s0, lengths=L)
    # each alone, padded with its own tokens to its length: row 1 (length 4) regresses 4 memories, the others 5
    each = []
    for b, (xb, yb) in enumerate(alone):
        R = min(5, LENGTHS[b] - int(s0[b]))
        each.append(dmt_loss(teacher, cell, xb, yb, DMTConfig(start="encoder", rollout=R, coef_readout=0.0), s0[b:b + 1])[1]["loss_dyn"])
    assert torch.allclose(met["loss_dyn"], _combine(each, [5, 4, 5]), rtol=1e-12, atol=0)


def _smt_weights(y_rows, Tf, gamma):
    """The decoder's weight sum of each row alone: gamma^k over every supervised target of every memory."""
    out = []
    for yb in y_rows:
        Tb = yb.shape[1]
        _, y_fut = future_targets(torch.zeros_like(yb), yb, torch.arange(Tb + 1)[None], Tf)
        w = gamma ** torch.arange(Tf, dtype=torch.float64)
        out.append(float(((y_fut >= 0).double() * w).sum()))
    return out


@pytest.mark.parametrize("term", ["dec", "dyn", "last_input"])
def test_smt_on_a_padded_batch_is_each_row_alone(term):
    """Every transition and every memory (no sampling), so batch and alone see the same positions; each
    term checked on its own (the uniformity term is a batch-wide statistic: it has no "alone")."""
    teacher, cell = _nets()
    coefs = {"coef_dec": 0.0, "coef_dyn": 0.0, "coef_last_input": 0.0, f"coef_{term}": 1.0}
    cfg = SMTConfig(future=4, transitions=None, dec_samples=None, coef_unif=0.0, **coefs)
    m = SMT(teacher, cell, cfg).double()
    x, y, L, alone = _batch()
    params = [p for p in m.parameters() if p.requires_grad]
    g = torch.Generator().manual_seed(0)
    loss, met = m.loss(x, y, g, lengths=L)
    each = [m.loss(xb, yb, torch.Generator().manual_seed(0)) for xb, yb in alone]
    n = {"dec": _smt_weights([yb for _, yb in alone], cfg.future, cfg.gamma), "dyn": LENGTHS, "last_input": LENGTHS}[term]
    assert torch.allclose(met[f"loss_{term}"], _combine([e[1][f"loss_{term}"] for e in each], n), rtol=1e-10, atol=0)
    for gb, *gs in zip(_grads(params, loss), *(_grads(params, e[0]) for e in each)):
        if gb is None:
            assert all(x is None for x in gs)
        else:
            assert torch.allclose(gb, _combine([torch.zeros_like(gb) if x is None else x for x in gs], n), rtol=1e-9, atol=1e-13)


def test_smt_draws_every_position_inside_its_row():
    L = torch.tensor([9, 2, 6])
    for seed in range(10):
        pos, w = sample_transitions(L, 9, 4, torch.Generator().manual_seed(seed))
        assert pos.shape == (3, 4) and w.tolist()[1] == [1.0, 1.0, 0.0, 0.0], "row 1 has 2 real transitions"
        assert all(len(set(pos[b][w[b] > 0].tolist())) == int(w[b].sum()) for b in range(3)), "without replacement"
        assert bool(((pos < L[:, None]) | (w == 0)).all()) and bool((pos[w == 0] == 0).all())
    pos, w = sample_transitions(L, 9, None, torch.Generator().manual_seed(0))
    assert sorted(pos[2][w[2] > 0].tolist()) == list(range(6)) and int(w.sum()) == 17, "all real transitions"
    real_dec = torch.tensor([[True, False], [True, True]])
    idx = draw_inside(real_dec, 2, 3, 100, torch.Generator().manual_seed(0))  # B=2, P=2, Q=3, K=2 -> 12 tokens
    assert sorted(idx.tolist()) == [0, 1, 4, 5, 6, 7, 8, 9, 10, 11], "the tokens of memory (0, 1) are left out"
    # own-state starts and far questions, with every setting on: the loss runs and stays finite
    teacher, cell = _nets()
    m = SMT(teacher, cell, SMTConfig(future=3, transitions=3, own_steps=2, far_samples=2, dec_samples=3)).double()
    x, y, L3, _ = _batch()
    loss, met = m.loss(x, y, torch.Generator().manual_seed(1), lengths=L3)
    assert torch.isfinite(loss) and torch.isfinite(met["loss_own"]) and torch.isfinite(met["loss_far"])


def test_evaluation_of_a_padded_batch_scores_each_row_alone():
    teacher, cell = _nets()
    x, y, L, alone = _batch()
    ev = evaluate(cell, teacher, x, y, lengths=L)
    each = [evaluate(cell, teacher, xb, yb) for xb, yb in alone]
    n = [int((yb >= 0).sum()) for _, yb in alone]
    for key in ("rnn_ce", "teacher_ce", "rnn_acc", "teacher_acc"):
        assert ev[key] == pytest.approx(float(_combine([torch.tensor(e[key], dtype=torch.float64) for e in each], n)), rel=1e-12)
    # (drift is logged to 6 decimals)
    assert ev["drift"][-1] == pytest.approx(sum(e["drift"][-1] for e in each) / 3, abs=2e-6), "each row's drift at its end"
    assert ev["drift"][2] == pytest.approx(sum(e["drift"][2] for e in each) / 3, abs=2e-6)
    assert ev["drift"][6] == pytest.approx((each[0]["drift"][6] + each[1]["drift"][4] + each[2]["drift"][6]) / 3, abs=2e-6)
    # the k-step errors: every start s with s + k inside its row (alone: the same starts, one per step)
    from memtrain.lengths import hold_after_end
    with torch.no_grad():
        ks = kstep_errors(cell, hold_after_end(teacher.encode(x), L), x, lengths=L)
        alone_ks = [kstep_errors(cell, teacher.encode(xb), xb) for xb, _ in alone]
    assert ks[4] == pytest.approx(float(_combine([torch.tensor(e[4], dtype=torch.float64) for e in alone_ks],
                                                 [L_ - 3 for L_ in LENGTHS])), rel=1e-10)
    assert 16 not in ks and ks[8] == pytest.approx(alone_ks[0][8], rel=1e-10), "only row 0 reaches 8 steps"
