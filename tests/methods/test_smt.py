"""SMT: the vectorised loss equals a per-timestep loop in float64; flags route gradients as promised."""
import pytest
import torch
import torch.nn.functional as F

from memtrain.models.cells import CELLS, TEXTBOOK_KINDS
from memtrain.methods.smt import adopt_teacher
from memtrain.methods.smt import SMT, SMTConfig, sample_positions, smt_loss
from memtrain.models.teacher import encode_reference
from tests.conftest import K, V, tiny_cell, tiny_teacher


def loop_smt_loss(teacher, cell, x, y, cfg, dec_pos, dyn_pos, unif_idx):
    """Plain reference: each memory encoded from its own prefix, each decoder window and each
    transition computed one at a time."""
    B, T = x.shape
    Tf, D = cfg.future, teacher.cfg.d_model
    M = encode_reference(teacher, x)
    num, den = 0.0, 0.0
    for b in range(B):
        for s in dec_pos[b].tolist():
            x_fut = [x[b, s + i].item() if s + i < T else 0 for i in range(Tf - 1)]
            logits = teacher.decode(M[b, s][None], torch.tensor([x_fut], dtype=torch.long))[0]  # (Tf, V)
            for i in range(Tf):
                target = y[b, s + i - 1].item() if 0 <= s + i - 1 < T else -1
                if target >= 0:
                    w = cfg.gamma ** i
                    num = num + w * F.cross_entropy(logits[i], torch.tensor(target))
                    den += w
    loss_dec = num / den
    errs = []
    for b in range(B):
        for t in (range(T) if dyn_pos is None else dyn_pos[b].tolist()):
            pred = cell.update(M[b, t][None], x[b, t][None])[0]
            errs.append((pred - M[b, t + 1]).pow(2).mean())
    loss_dyn = torch.stack(errs).mean()
    # the uniformity sample indexes the memories the encoder computed: all of them, or with sampled
    # transitions [M[dec_pos], M[dyn_pos], M[dyn_pos + 1]] per sequence
    if dyn_pos is None:
        computed = M
    else:
        at = torch.cat([dec_pos, dyn_pos, dyn_pos + 1], dim=1)
        computed = torch.stack([M[b, at[b]] for b in range(B)])
    toks = computed.reshape(-1, D)[unif_idx]
    z = toks / toks.norm(dim=-1, keepdim=True)
    d2 = [(z[i] - z[j]).pow(2).sum() for i in range(len(z)) for j in range(i + 1, len(z))]
    loss_unif = torch.stack([torch.exp(-2 * d) for d in d2]).mean().log()
    total = cfg.coef_dec * loss_dec + cfg.coef_dyn * loss_dyn + cfg.coef_unif * loss_unif
    if cfg.coef_onpolicy:
        errs = []
        for b in range(B):
            m = M[b, 0].detach()
            steps = range(T) if dyn_pos is None else dyn_pos[b].tolist()
            for t in range(T):  # the cell on its own memories, one-step gradients
                pred = cell.update(m[None], x[b, t][None])[0]
                if t in steps:
                    errs.append((pred - M[b, t + 1].detach()).pow(2).mean())
                m = pred.detach()
        total = total + cfg.coef_onpolicy * torch.stack(errs).mean()
    return total


@pytest.mark.parametrize("dyn_sampled,onpolicy,future,sums", [(False, 0.0, 4, None), (True, 0.0, 4, None), (False, 0.5, 4, None),
                                                         (True, 0.5, 4, None), (True, 0.0, 1, None), (False, 0.0, 4, 3.0),
                                                         (True, 0.0, 1, 3.0)])
def test_vectorised_smt_loss_matches_per_timestep_loop(dyn_sampled, onpolicy, future, sums):
    """(future=1: the decoder reads no future input, only the memory; sums: teacher.running_sums)"""
    teacher, cell = tiny_teacher(running_sums=sums).double(), tiny_cell("mlp").double()
    cfg = SMTConfig(future=future, gamma=0.9, coef_unif=0.01, coef_onpolicy=onpolicy, coef_last_input=0)
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, V, (2, 7), generator=g)
    y = torch.where(torch.rand(2, 7, generator=g) < 0.4, x.roll(1, 1), -1)
    dec_pos = sample_positions(y, cfg.future, 3, g)
    dyn_pos = torch.rand(2, 7, generator=g).argsort(1)[:, :3] if dyn_sampled else None
    unif_idx = torch.randperm(2 * 8 * 2, generator=g)[:9]
    fast, _ = smt_loss(teacher, cell, x, y, cfg, dec_pos, dyn_pos, unif_idx)
    slow = loop_smt_loss(teacher, cell, x, y, cfg, dec_pos, dyn_pos, unif_idx)
    torch.testing.assert_close(fast, slow, rtol=1e-10, atol=1e-12)
    params = list(teacher.parameters()) + list(cell.parameters())
    g_fast = torch.autograd.grad(fast, params, allow_unused=True)
    g_slow = torch.autograd.grad(slow, params, allow_unused=True)
    for a, b in zip(g_fast, g_slow):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-12)


def test_sampled_positions_have_supervised_future():
    g = torch.Generator().manual_seed(0)
    y = torch.full((4, 30), -1)
    y[:, -1] = 1  # only the last output supervised: memories s >= 30 - Tf + 1 can reach it
    pos = sample_positions(y, 5, 3, g)
    assert pos.shape == (4, 3)
    assert bool((pos >= 26).all()) and bool((pos <= 30).all())
    assert all(len(set(r)) == 3 for r in pos.tolist())  # without replacement
    assert sample_positions(y, 5, None, g).shape == (4, 31)


def _grads(loss, module):
    gs = torch.autograd.grad(loss, list(module.parameters()), allow_unused=True, retain_graph=True)
    return sum(float(g.abs().sum()) for g in gs if g is not None)


@pytest.mark.parametrize("onpolicy", [False, True])
@pytest.mark.parametrize("trains_teacher", [True, False])
def test_dyn_trains_teacher_flag(trains_teacher, onpolicy):
    """Only the dynamics loss on: gradient reaches the encoder iff dyn_trains_teacher; the on-policy
    loss never trains the teacher."""
    teacher, cell = tiny_teacher().double(), tiny_cell("mlp").double()
    cfg = SMTConfig(future=3, coef_dec=0.0, coef_unif=0.0, dyn_trains_teacher=trains_teacher, coef_last_input=0,
                    coef_dyn=0.0 if onpolicy else 0.1, coef_onpolicy=1.0 if onpolicy else 0.0)
    x = torch.randint(0, V, (2, 6))
    y = torch.randint(0, V, (2, 6))
    loss, _ = SMT(teacher, cell, cfg).loss(x, y, torch.Generator().manual_seed(0))
    assert _grads(loss, cell) > 0
    assert (_grads(loss, teacher) > 0) == (trains_teacher and not onpolicy)


def test_decoder_and_uniformity_never_train_the_cell():
    teacher, cell = tiny_teacher().double(), tiny_cell("mlp").double()
    cfg = SMTConfig(future=3, coef_dyn=0.0, coef_last_input=0)
    x, y = torch.randint(0, V, (2, 6)), torch.randint(0, V, (2, 6))
    loss, _ = SMT(teacher, cell, cfg).loss(x, y, torch.Generator().manual_seed(0))
    assert _grads(loss, teacher) > 0 and _grads(loss, cell) == 0


def test_sync_gives_cell_the_teacher_readout_and_empty_memory():
    teacher, cell = tiny_teacher(), tiny_cell("gru")
    adopt_teacher(cell, teacher)
    m = teacher.encode(torch.randint(0, V, (3, 5)))[:, -1]
    torch.testing.assert_close(cell.readout(m), teacher.readout(m))
    torch.testing.assert_close(cell.init_memory(3), teacher.empty_memory(3))


def test_trainable_excludes_copied_readout():
    teacher, cell = tiny_teacher(), tiny_cell("mlp")
    ids = {id(p) for p in SMT(teacher, cell, SMTConfig()).trainable()}
    assert all(id(p) not in ids for p in cell.head.parameters())
    assert all(id(p) in ids for p in teacher.parameters())


@pytest.mark.parametrize("kind", sorted(set(CELLS) - set(TEXTBOOK_KINDS)))
def test_cell_teacher_mismatch_is_named(kind):
    with pytest.raises(ValueError, match="d_mem"):
        SMT(tiny_teacher(), tiny_cell(kind, d_mem=4, n_heads=1), SMTConfig())


def test_input_noise_changes_only_the_dynamics_input():
    teacher, cell = tiny_teacher().double(), tiny_cell("mlp").double()
    x, y = torch.randint(0, V, (2, 6)), torch.randint(0, V, (2, 6))
    pos = sample_positions(y, 3, 2, None)
    idx = torch.arange(8)
    clean = smt_loss(teacher, cell, x, y, SMTConfig(future=3, coef_last_input=0), pos, None, idx)[1]
    torch.manual_seed(0)
    noisy = smt_loss(teacher, cell, x, y, SMTConfig(future=3, input_noise=0.5, coef_last_input=0), pos, None, idx)[1]
    assert noisy["loss_dec"] == clean["loss_dec"] and noisy["loss_unif"] == clean["loss_unif"]
    assert noisy["loss_dyn"] > clean["loss_dyn"]


def test_dyn_rel_is_the_one_step_error_relative_to_the_teachers_step():
    teacher, cell = tiny_teacher().double(), tiny_cell("mlp").double()
    x, y = torch.randint(0, V, (3, 7)), torch.randint(0, V, (3, 7))
    _, m = smt_loss(teacher, cell, x, y, SMTConfig(future=3, coef_last_input=0), sample_positions(y, 3, 2, None), None, torch.arange(8))
    with torch.no_grad():
        M = teacher.encode(x)  # (B, S, Z)
        err = (cell.update(M[:, :-1].reshape(-1, M.shape[-1]), x.reshape(-1)) - M[:, 1:].reshape(-1, M.shape[-1])).pow(2).mean()
        step = (M[:, 1:] - M[:, :-1]).pow(2).mean()
    torch.testing.assert_close(m["loss_dyn"], err)
    torch.testing.assert_close(m["dyn_rel"], err / step)


def test_last_input_probe_trains_teacher_and_probe_not_cell():
    teacher, cell = tiny_teacher().double(), tiny_cell("mlp").double()
    smt = SMT(teacher, cell, SMTConfig(future=3, coef_last_input=0.5, coef_dec=0, coef_dyn=0, coef_unif=0)).double()
    x, y = torch.randint(0, V, (3, 6)), torch.randint(0, V, (3, 6))
    loss, m = smt.loss(x, y, torch.Generator().manual_seed(0))
    with torch.no_grad():
        M = teacher.encode(x)
        want = torch.nn.functional.cross_entropy(smt.last_input_head(M[:, 1:].reshape(-1, M.shape[-1])), x.reshape(-1))
    torch.testing.assert_close(m["loss_last_input"], want)
    torch.testing.assert_close(loss, 0.5 * want)
    loss.backward()
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in cell.parameters())
    assert smt.last_input_head.weight.grad.abs().sum() > 0
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in teacher.parameters())
    assert any(p is smt.last_input_head.weight for p in smt.trainable())
    assert SMT(tiny_teacher(), tiny_cell("mlp"), SMTConfig(coef_last_input=0)).last_input_head is None


@pytest.mark.parametrize("onpolicy,last_input", [(0.0, 0.0), (0.5, 0.3)])
def test_sampling_every_transition_gives_the_dense_loss(onpolicy, last_input):
    """smt.transitions computes only the memories the loss reads; with every transition sampled (in
    any order) the loss and its gradients equal the dense loss, which encodes every memory."""
    teacher, cell = tiny_teacher(window=3).double(), tiny_cell("mlp").double()
    cfg = SMTConfig(future=4, gamma=0.9, coef_unif=0.01, coef_onpolicy=onpolicy, coef_last_input=last_input)
    head = torch.nn.Linear(teacher.cfg.mem_size, V).double()
    g = torch.Generator().manual_seed(2)
    B, T, K = 2, 7, teacher.cfg.mem_tokens
    x = torch.randint(0, V, (B, T), generator=g)
    y = torch.where(torch.rand(B, T, generator=g) < 0.5, x.roll(1, 1), -1)
    dec_pos = sample_positions(y, cfg.future, 3, g)
    dyn_pos = torch.rand(B, T, generator=g).argsort(1)  # every transition, shuffled
    P, Q, S = dec_pos.shape[1], dec_pos.shape[1] + 2 * T, T + 1
    # uniformity tokens: the same memory tokens, indexed in the sparse and in the dense layout
    b, r, k = torch.tensor([0, 0, 1, 1, 1]), torch.tensor([0, 3, 1, 6, 2]), torch.tensor([1, 0, 1, 0, 0])
    sparse_idx = b * Q * K + (P + r) * K + k
    dense_idx = b * S * K + dyn_pos[b, r] * K + k
    dense, _ = smt_loss(teacher, cell, x, y, cfg, dec_pos, None, dense_idx, head)
    sparse, _ = smt_loss(teacher, cell, x, y, cfg, dec_pos, dyn_pos, sparse_idx, head)
    torch.testing.assert_close(sparse, dense, rtol=1e-12, atol=1e-12)
    params = list(teacher.parameters()) + list(cell.parameters()) + list(head.parameters())
    for a, c in zip(torch.autograd.grad(dense, params, allow_unused=True), torch.autograd.grad(sparse, params, allow_unused=True)):
        assert (a is None) == (c is None)
        if a is not None:
            torch.testing.assert_close(a, c, rtol=1e-10, atol=1e-12)


def test_smt_transitions_sets_how_many_memories_are_encoded():
    teacher, cell = tiny_teacher(), tiny_cell("mlp")
    x = torch.randint(0, V, (3, 20))
    y = x.roll(1, 1)
    seen = []
    encode = teacher.encode
    teacher.encode = lambda x, at=None: (seen.append(None if at is None else tuple(at.shape)), encode(x, at))[1]
    for n, expect in ((None, None), (5, (3, 4 + 10)), (20, None)):
        SMT(teacher, cell, SMTConfig(future=4, dec_samples=4, transitions=n, unif_samples=8, coef_last_input=0)).loss(x, y, torch.Generator().manual_seed(0))
        assert seen[-1] == expect
    with pytest.raises(ValueError, match="smt.transitions"):
        SMTConfig(transitions=0).validate()


@pytest.mark.parametrize("transitions", [None, 2])
def test_last_input_probe_trains_the_teacher_even_when_the_dynamics_do_not(transitions):
    """smt.dyn_trains_teacher=false detaches the memories of the dynamics loss only: the probe's loss
    still reaches the encoder, with every transition or with sampled ones."""
    teacher, cell = tiny_teacher().double(), tiny_cell("mlp").double()
    cfg = SMTConfig(future=3, coef_last_input=0.5, coef_dec=0, coef_unif=0, dyn_trains_teacher=False, transitions=transitions)
    smt = SMT(teacher, cell, cfg).double()
    x, y = torch.randint(0, V, (3, 6)), torch.randint(0, V, (3, 6))
    smt.loss(x, y, torch.Generator().manual_seed(0))[0].backward()
    assert float(teacher.blocks[0].attn.qkv.weight.grad.abs().sum()) > 0


def test_a_future_beyond_the_sequence_is_the_future_to_its_end():
    """Issue 25: sequences shorter than smt.future are not refused. Memory s is asked for the outputs
    up to the end of the sequence and the decoder is causal, so any future >= T + 1 gives the same
    loss as T + 1 (only wasted work), e.g. the retrieval-smt preset (future 32) on T = 4."""
    teacher, cell = tiny_teacher().double(), tiny_cell("mlp").double()
    B, T = 3, 4
    x, y = torch.randint(0, V, (B, T)), torch.randint(0, V, (B, T))
    pos, idx = torch.arange(T + 1).expand(B, T + 1), torch.arange(16)
    end = smt_loss(teacher, cell, x, y, SMTConfig(future=T + 1, coef_last_input=0), pos, None, idx)
    for future in (T + 2, 32):
        loss, m = smt_loss(teacher, cell, x, y, SMTConfig(future=future, coef_last_input=0), pos, None, idx)
        torch.testing.assert_close(loss, end[0], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(m["loss_dec"], end[1]["loss_dec"], rtol=1e-12, atol=1e-12)


def loop_own_state_loss(teacher, cell, x, own_pos, now_pos, gain):
    """Plain reference for error-correcting SMT: for each transition (b, s) run the cell alone from the
    teacher's M[b, own] for s - own steps, scale its error off M[b, s] by gain (renormalised), step
    once more and compare with M[b, s+1]."""
    M = encode_reference(teacher, x).detach()
    errs = []
    for b in range(x.shape[0]):
        for r in range(own_pos.shape[1]):
            o, s = int(own_pos[b, r]), int(now_pos[b, r])
            m = M[b, o]
            with torch.no_grad():
                for t in range(o, s):
                    m = cell.update(m[None], x[b, t][None])[0]
            m_in = M[b, s] + gain * (m - M[b, s])
            if gain != 1.0:
                tok = m_in.view(cell.K, cell.D)
                m_in = (tok / tok.pow(2).mean(-1, keepdim=True).add(torch.finfo(tok.dtype).eps).sqrt()).reshape(-1)
            pred = cell.update(m_in[None], x[b, s][None])[0]
            errs.append((pred - M[b, s + 1]).pow(2).mean())
    return torch.stack(errs).mean()


@pytest.mark.parametrize("dyn_sampled,gain", [(False, 1.0), (True, 1.0), (True, 2.5)])
def test_own_state_loss_matches_a_per_transition_loop_in_float64(dyn_sampled, gain):
    """smt.own_steps: the loss with the error-correcting term minus the loss without it equals
    coef_dyn times the plain per-transition reference, and so do its gradients."""
    teacher, cell = tiny_teacher().double(), tiny_cell("mlp").double()
    g = torch.Generator().manual_seed(3)
    B, T = 2, 9
    x = torch.randint(0, V, (B, T), generator=g)
    y = torch.where(torch.rand(B, T, generator=g) < 0.4, x.roll(1, 1), -1)
    dec_pos = sample_positions(y, 4, 3, g)
    dyn_pos = torch.rand(B, T, generator=g).argsort(1)[:, :4] if dyn_sampled else None
    now = torch.arange(T).expand(B, T) if dyn_pos is None else dyn_pos
    own_pos = (now - torch.randint(1, 4, now.shape, generator=g)).clamp_min(0)
    assert bool((own_pos < now).any()) and bool((own_pos <= now).all())
    unif_idx = torch.randperm(B * 4 * K, generator=g)[:6]
    on = SMTConfig(future=4, coef_last_input=0, coef_dyn=0.3, own_steps=3, own_gain=gain)
    off = SMTConfig(future=4, coef_last_input=0, coef_dyn=0.3)
    # the encoder computes M[own_pos] too, so the uniformity sample differs: leave it out here
    on.coef_unif = off.coef_unif = 0.0
    with_own, metrics = smt_loss(teacher, cell, x, y, on, dec_pos, dyn_pos, unif_idx, own_pos=own_pos)
    without, _ = smt_loss(teacher, cell, x, y, off, dec_pos, dyn_pos, unif_idx)
    ref = loop_own_state_loss(teacher, cell, x, own_pos, now, gain)
    torch.testing.assert_close(with_own - without, 0.3 * ref, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(metrics["loss_own"], ref.detach(), rtol=1e-9, atol=1e-12)
    params = list(cell.parameters())
    g_fast = torch.autograd.grad(with_own - without, params, allow_unused=True)
    g_ref = torch.autograd.grad(0.3 * ref, params, allow_unused=True)
    for a, b in zip(g_fast, g_ref):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-12)


def test_own_steps_trains_the_cell_only():
    """The error-correcting term moves the cell, never the teacher (input and target detached), and
    with smt.own_steps=0 there is no such term."""
    teacher, cell = tiny_teacher().double(), tiny_cell("mlp").double()
    x, y = torch.randint(0, V, (2, 8)), torch.randint(0, V, (2, 8))
    for transitions in (None, 3):
        cfg = SMTConfig(future=3, coef_dec=0.0, coef_unif=0.0, coef_last_input=0, dyn_trains_teacher=False,
                        own_steps=4, transitions=transitions)
        smt = SMT(teacher, cell, cfg)
        loss, metrics = smt.loss(x, y, torch.Generator().manual_seed(0))
        assert _grads(loss, cell) > 0 and _grads(loss, teacher) == 0
        assert metrics["own_err"] > 0 and metrics["loss_own"] > 0
        cfg.own_steps = 0
        _, metrics = SMT(teacher, cell, cfg).loss(x, y, torch.Generator().manual_seed(0))
        assert "loss_own" not in metrics


def test_own_state_settings_are_checked():
    with pytest.raises(ValueError, match="smt.own_steps"):
        SMTConfig(own_steps=-1).validate()
    with pytest.raises(ValueError, match="smt.own_gain"):
        SMTConfig(own_gain=0.0).validate()


def test_slow_tokens_loss_is_the_step_of_the_first_tokens_and_hides_them_from_the_probe():
    """smt.slow_tokens=1: loss_slow = mean (M[s+1] - M[s])^2 over the first token's D values of every
    transition (float64, written out); the term trains the teacher only; the last-input probe gets
    no gradient from the slow token's values."""
    teacher, cell = tiny_teacher().double(), tiny_cell("mlp").double()
    g = torch.Generator().manual_seed(5)
    x = torch.randint(0, V, (2, 6), generator=g)
    y = torch.randint(0, V, (2, 6), generator=g)
    cfg = SMTConfig(future=3, coef_dec=0.0, coef_dyn=0.0, coef_unif=0.0, coef_last_input=0.0, slow_tokens=1, coef_slow=2.0)
    dec_pos = sample_positions(y, 3, 2, g)
    loss, metrics = smt_loss(teacher, cell, x, y, cfg, dec_pos, None, torch.arange(4))
    M = encode_reference(teacher, x)
    D = teacher.cfg.d_model
    ref = torch.stack([(M[b, s + 1, :D] - M[b, s, :D]).pow(2).mean() for b in range(2) for s in range(6)]).mean()
    torch.testing.assert_close(metrics["loss_slow"], ref.detach(), rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(loss, 2.0 * ref, rtol=1e-9, atol=1e-12)
    assert _grads(loss, teacher) > 0 and _grads(loss, cell) == 0
    # the probe: its weights on the slow token get no gradient, those on the fast ones do
    cfg = SMTConfig(future=3, coef_dec=0.0, coef_dyn=0.0, coef_unif=0.0, coef_last_input=1.0, slow_tokens=1, coef_slow=0.0)
    head = torch.nn.Linear(teacher.cfg.mem_size, V).double()
    loss, _ = smt_loss(teacher, cell, x, y, cfg, dec_pos, None, torch.arange(4), head)
    (gw,) = torch.autograd.grad(loss, [head.weight])
    assert float(gw[:, :D].abs().max()) == 0.0 and float(gw[:, D:].abs().max()) > 0


def test_slow_tokens_must_leave_a_fast_one():
    from memtrain.training.config import RunConfig, resolve
    cfg = RunConfig()
    cfg.smt.slow_tokens = cfg.teacher.mem_tokens
    with pytest.raises(ValueError, match="smt.slow_tokens"):
        resolve(cfg)
    with pytest.raises(ValueError, match="smt.coef_slow"):
        SMTConfig(coef_slow=-1.0).validate()


def test_far_positions_ask_only_for_supervised_outputs_beyond_the_window():
    from memtrain.methods.smt import far_positions
    g = torch.Generator().manual_seed(0)
    y = torch.full((3, 20), -1)
    y[0, -1] = 2  # one far output
    y[1, [3, 12, 19]] = 1  # 3 is inside every window of Tf=5 (u < Tf - 1 = 4 would not be; 3 < 4)
    s, u, ok = far_positions(y, 5, 50, g)
    assert ok[:2].all() and not ok[2].any()  # the last row has no supervised output
    assert bool((u[0] == 19).all()) and set(u[1].tolist()) == {12, 19}
    assert bool((u[:2] >= s[:2] + 5 - 1).all()) and bool((s >= 0).all())
    assert set(s[0].tolist()) == set(range(0, 19 - 5 + 2))  # every memory that sees y_19 only from afar


def test_far_head_loss_matches_a_plain_loop_and_trains_teacher_and_head_only():
    """smt.far_samples: the loss is coef_far * the mean CE of FarHead(M[s], u - s + 1) against y[u]
    (float64, memories from the plain encoder); its gradient reaches the encoder and the head, never the cell."""
    from memtrain.methods.smt import FarHead, far_positions
    teacher, cell = tiny_teacher().double(), tiny_cell("mlp").double()
    g = torch.Generator().manual_seed(2)
    B, T = 2, 12
    x = torch.randint(0, V, (B, T), generator=g)
    y = torch.full((B, T), -1)
    y[:, -1] = x[:, 1]
    cfg = SMTConfig(future=3, coef_dec=0.0, coef_dyn=0.0, coef_unif=0.0, coef_last_input=0.0, far_samples=4, coef_far=0.7)
    head = FarHead(teacher.cfg.mem_size, V, width=16).double()
    far = far_positions(y, 3, 4, g)
    dec_pos = sample_positions(y, 3, 2, g)
    for dyn_pos in (None, torch.tensor([[0, 5], [3, 9]])):
        loss, metrics = smt_loss(teacher, cell, x, y, cfg, dec_pos, dyn_pos, torch.arange(4), far=far, far_head=head)
        M = encode_reference(teacher, x)
        s, u, _ = far
        ce = [F.cross_entropy(head(M[b, s[b, i]][None], (u[b, i] - s[b, i] + 1)[None])[0], y[b, u[b, i]])
              for b in range(B) for i in range(4)]
        ref = torch.stack(ce).mean()
        torch.testing.assert_close(loss, 0.7 * ref, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(metrics["loss_far"], ref.detach(), rtol=1e-9, atol=1e-12)
        assert _grads(loss, teacher) > 0 and _grads(loss, head) > 0 and _grads(loss, cell) == 0
    # SMT builds the head, trains it, and without far_samples has none
    smt = SMT(teacher, cell, SMTConfig(future=3, far_samples=2))
    assert {id(p) for p in smt.far_head.parameters()} <= {id(p) for p in smt.trainable()}
    assert SMT(teacher, cell, SMTConfig(future=3)).far_head is None
    with pytest.raises(ValueError, match="smt.far_samples"):
        SMTConfig(far_samples=-1).validate()


@pytest.mark.parametrize("teacher_weight", [0.0, 0.1, 0.7])
def test_coef_dyn_teacher_weighs_the_teacher_side_only(teacher_weight):
    """smt.coef_dyn_teacher (float64, dynamics loss only): the cell's gradient and the loss's value are
    those of coef_dyn; the teacher's gradient is coef_dyn_teacher / coef_dyn times coef_dyn's."""
    torch.manual_seed(0)
    teacher, cell = tiny_teacher().double(), tiny_cell("mlp").double()
    x, y = torch.randint(0, V, (2, 6)), torch.randint(0, V, (2, 6))
    base = dict(future=3, coef_dec=0.0, coef_unif=0.0, coef_last_input=0, coef_dyn=0.2)
    out = {}
    for name, cfg in (("plain", SMTConfig(**base)), ("weighed", SMTConfig(**base, coef_dyn_teacher=teacher_weight))):
        loss, _ = SMT(teacher, cell, cfg).loss(x, y, torch.Generator().manual_seed(3))
        params = list(teacher.parameters()) + list(cell.parameters())
        gs = torch.autograd.grad(loss, params, allow_unused=True)
        n_t = len(list(teacher.parameters()))
        flat = lambda g_list, ps: torch.cat([(g if g is not None else torch.zeros_like(p)).flatten() for g, p in zip(g_list, ps)])
        out[name] = (loss.detach(), flat(gs[:n_t], params[:n_t]), flat(gs[n_t:], params[n_t:]))
    (l0, t0, c0), (l1, t1, c1) = out["plain"], out["weighed"]
    torch.testing.assert_close(l1, l0)
    torch.testing.assert_close(c1, c0)
    assert t0.abs().sum() > 0
    torch.testing.assert_close(t1, t0 * (teacher_weight / 0.2))


def test_coef_dyn_teacher_needs_a_dynamics_loss_that_trains_the_teacher():
    with pytest.raises(ValueError, match="smt.coef_dyn_teacher must be >= 0"):
        SMTConfig(coef_dyn_teacher=-1.0).validate()
    with pytest.raises(ValueError, match="needs smt.coef_dyn > 0 and smt.dyn_trains_teacher=true"):
        SMTConfig(coef_dyn_teacher=1.0, coef_dyn=0.0).validate()
    with pytest.raises(ValueError, match="dyn_trains_teacher=False"):
        SMTConfig(coef_dyn_teacher=1.0, dyn_trains_teacher=False).validate()
