"""DMT and BPTT equal explicit loops in float64; their flags route gradients as promised."""
import pytest
import torch
import torch.nn.functional as F

from memtrain.methods.bptt import BPTT, BPTTConfig
from memtrain.methods.smt import adopt_teacher
from memtrain.methods.dmt import DMT, DMTConfig, dmt_loss
from tests.conftest import V, tiny_cell, tiny_teacher


def _data(B=3, T=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, V, (B, T), generator=g)
    y = torch.where(torch.rand(B, T, generator=g) < 0.5, torch.randint(0, V, (B, T), generator=g), -1)
    return x, y


def loop_dmt(teacher, cell, x, y, cfg, s0):
    """Reference: per sequence, encode each prefix, roll the cell one step at a time."""
    B, T = x.shape
    Td = cfg.rollout or T
    dyn, ce, n_ce = [], 0.0, 0
    for b in range(B):
        M = teacher.encode(x[b: b + 1])[0].detach()  # (S, Z)
        s = int(s0[b])
        m = cell.init_memory(1)[0] if cfg.start == "empty" else M[s]
        for i in range(1, Td + 1):
            m_in = m.detach() if (cfg.grad_horizon == 1 and i > 1) else m
            m = cell.update(m_in[None], x[b, s + i - 1][None])[0]
            if i % cfg.every == 0:
                dyn.append((m - M[s + i]).pow(2).mean())
            target = int(y[b, s + i - 1])
            if target >= 0:
                ce = ce + F.cross_entropy(cell.readout(m.detach()[None])[0], torch.tensor(target))
                n_ce += 1
    # the fast path averages drift per sequence first, then over sequences: same count per row
    return cfg.coef_dyn * torch.stack(dyn).mean() + cfg.coef_readout * ce / n_ce


@pytest.mark.parametrize("start,rollout_len,every", [("empty", None, 1), ("encoder", 4, 2)])
def test_dmt_matches_loop(start, rollout_len, every):
    teacher, cell = tiny_teacher().double(), tiny_cell("mlp").double()
    adopt_teacher(cell, teacher)
    cfg = DMTConfig(rollout=rollout_len, every=every, start=start)
    x, y = _data()
    y[:, 0] = 2  # at least one supervised target in every rollout
    s0 = torch.zeros(3, dtype=torch.long) if start == "empty" else torch.tensor([0, 2, 4])
    y[torch.arange(3), s0] = 3
    fast, _ = dmt_loss(teacher, cell, x, y, cfg, s0)
    slow = loop_dmt(teacher, cell, x, y, cfg, s0)
    torch.testing.assert_close(fast, slow, rtol=1e-10, atol=1e-12)
    ga = torch.autograd.grad(fast, list(cell.parameters()), allow_unused=True)
    gb = torch.autograd.grad(slow, list(cell.parameters()), allow_unused=True)
    for a, b in zip(ga, gb):
        if a is None or b is None:
            assert (a is None or float(a.abs().sum()) == 0) and (b is None or float(b.abs().sum()) == 0)
        else:
            torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-12)


def test_dmt_freezes_teacher_and_uses_one_encoder_pass(monkeypatch):
    teacher, cell = tiny_teacher(), tiny_cell("mlp")
    dmt = DMT(teacher, cell, DMTConfig())
    calls = []
    orig = teacher.encode
    monkeypatch.setattr(teacher, "encode", lambda x, at=None: calls.append(at) or orig(x, at))
    x, y = _data()
    loss, _ = dmt.loss(x, y)
    loss.backward()
    assert len(calls) == 1 and calls[0] is None, "the whole rollout from m_empty reads every memory"
    assert all(p.grad is None for p in teacher.parameters())
    assert set(map(id, dmt.trainable())) == set(map(id, cell.parameters()))


@pytest.mark.parametrize("detached", [True, False])
def test_dmt_readout_on_detached_flag(detached):
    """Readout loss alone: it trains the head, and reaches the update only without detaching."""
    teacher, cell = tiny_teacher().double(), tiny_cell("mlp").double()
    cfg = DMTConfig(coef_dyn=0.0, readout_on_detached=detached)
    x, y = _data()
    loss, _ = DMT(teacher, cell, cfg).loss(x, y)
    loss.backward()
    assert float(cell.head.head.weight.grad.abs().sum()) > 0
    upd = cell.fc.weight.grad
    assert (upd is not None and float(upd.abs().sum()) > 0) == (not detached)


@pytest.mark.parametrize("horizon", [1, None])
def test_dmt_grad_horizon_reaches_update_through_rollout(horizon):
    """Only the drift at the last step: one-step gradients never reach the start memory 2+ steps
    back; gradient through the rollout does."""
    teacher, cell = tiny_teacher().double(), tiny_cell("mlp").double()
    cfg = DMTConfig(every=8, coef_readout=0.0, grad_horizon=horizon)  # T=8: only m^_8 is regressed
    x, y = _data()
    loss, _ = DMT(teacher, cell, cfg).loss(x, y)
    loss.backward()
    assert (cell.m_init.grad is not None and float(cell.m_init.grad.abs().sum()) > 0) == (horizon is None)


def loop_bptt(cell, x, y, truncate=None):
    B, T = x.shape
    total, n = 0.0, 0
    for b in range(B):
        m = cell.init_memory(1)
        for t in range(T):
            if truncate and t > 0 and t % truncate == 0:
                m = m.detach()
            m = cell.update(m, x[b, t][None])
            if y[b, t] >= 0:
                total = total + F.cross_entropy(cell.readout(m), y[b, t][None])
                n += 1
    return total / n


@pytest.mark.parametrize("kind,truncate", [("gru", None), ("lstm", None), ("mlp", 3)])
def test_bptt_matches_loop(kind, truncate):
    cell = tiny_cell(kind).double()
    x, y = _data()
    fast, _ = BPTT(None, cell, BPTTConfig(grad_horizon=truncate)).loss(x, y)
    slow = loop_bptt(cell, x, y, truncate)
    torch.testing.assert_close(fast, slow, rtol=1e-10, atol=1e-12)
    for a, b in zip(torch.autograd.grad(fast, list(cell.parameters())), torch.autograd.grad(slow, list(cell.parameters()))):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-12)


def test_bptt_truncation_cuts_gradient_to_start():
    cell = tiny_cell("mlp").double()
    x = torch.randint(0, V, (2, 8))
    y = torch.full((2, 8), -1)
    y[:, -1] = 1  # only the last step supervised
    for truncate, reaches in ((None, True), (4, False)):
        cell.zero_grad()
        BPTT(None, cell, BPTTConfig(grad_horizon=truncate)).loss(x, y)[0].backward()
        assert (cell.m_init.grad is not None and float(cell.m_init.grad.abs().sum()) > 0) == reaches


@pytest.mark.parametrize("every,rollout,start,detached", [(3, 5, "encoder", True), (2, None, "empty", True),
                                                          (1, 4, "encoder", True), (2, None, "empty", False)])
def test_dmt_encodes_and_steps_only_what_it_regresses_onto(every, rollout, start, detached):
    """The targets come from encode(x, at) at the start and every k-th rollout step, and the one-step
    updates with a graph run only there (everywhere when the readout trains the memory path): loss
    and gradients equal DMT written out step by step with every memory encoded (float64)."""
    teacher, cell = tiny_teacher(window=3).double(), tiny_cell("mlp").double()
    cfg = DMTConfig(every=every, rollout=rollout, start=start, coef_readout=0.5, readout_on_detached=detached)
    x, y = _data()
    B, T = x.shape
    s0 = torch.tensor([0, 2, 1][:B]) if start == "encoder" else torch.zeros(B, dtype=torch.long)
    loss, _ = dmt_loss(teacher, cell, x, y, cfg, s0)
    M = teacher.encode(x)  # reference: every memory, then the rollout written out step by step
    Td = rollout or T
    m = cell.init_memory(B) if start == "empty" else M[torch.arange(B), s0]
    errs, ces = [], []
    for i in range(1, Td + 1):
        s = s0 + i
        m = cell.update(m if i == 1 else m.detach(), x[torch.arange(B), s - 1])  # one-step gradients
        if i % every == 0:
            errs.append((m - M[torch.arange(B), s]).pow(2).mean(-1))
        tgt = y[torch.arange(B), s - 1]
        for b in range(B):
            if tgt[b] >= 0:
                read = m[b:b + 1].detach() if detached else m[b:b + 1]
                ces.append(F.cross_entropy(cell.readout(read), tgt[b:b + 1]))
    ref = torch.stack(errs, 1).mean() + 0.5 * torch.stack(ces).mean()
    torch.testing.assert_close(loss, ref, rtol=1e-10, atol=1e-12)
    params = list(cell.parameters())
    for p, a, b in zip(params, torch.autograd.grad(loss, params, allow_unused=True), torch.autograd.grad(ref, params, allow_unused=True)):
        zero = torch.zeros_like(p)  # (a parameter outside one graph reads as None there, zeros in the other)
        torch.testing.assert_close(zero if a is None else a, zero if b is None else b, rtol=1e-9, atol=1e-12)
