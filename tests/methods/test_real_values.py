"""Real-valued steps through the methods and the evaluation (float64): feature inputs x (B, T, F), real
targets y (B, T, G) with NaN where unsupervised, read through the networks' `output`."""
import math

import pytest
import torch

from memtrain.methods.bptt import BPTT, BPTTConfig
from memtrain.methods.dmt import DMTConfig, dmt_loss, rollout_starts
from memtrain.methods.evaluate import evaluate
from memtrain.methods.rollout import rollout
from memtrain.methods.smt import SMT, SMTConfig
from memtrain.models.cells import CellConfig, build_cell
from tests.conftest import D, H, K, tiny_teacher

FEAT, G = 3, 2


def _nets(output="gaussian", kind="mlp"):
    torch.manual_seed(0)
    teacher = tiny_teacher(vocab_size=None, features=FEAT, output=output, targets=G).double()
    cell = build_cell(CellConfig(kind=kind, vocab_size=None, features=FEAT, output=output, targets=G, mem_tokens=K, d_mem=D,
                                 n_heads=H, depth=1, hidden_mult=2, readout_depth=1)).double()
    return teacher, cell


def _data(B=3, T=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, FEAT, dtype=torch.float64, generator=g)
    y = torch.randn(B, T, G, dtype=torch.float64, generator=g)
    y[torch.rand(B, T, generator=g) < 0.3] = float("nan")  # unsupervised steps
    y[0, 4, 1] = float("nan")  # one missing value of a supervised step
    return x, y


@pytest.mark.parametrize("output", ["gaussian", "student-t", "quantile"])
def test_every_method_trains_on_real_values(output):
    teacher, cell = _nets(output)
    x, y = _data()
    for name, m in (("smt", SMT(teacher, cell, SMTConfig(future=4, transitions=4, own_steps=2, far_samples=2)).double()),
                    ("bptt", BPTT(None, cell, BPTTConfig()))):
        loss, met = m.loss(x, y, torch.Generator().manual_seed(0))
        assert torch.isfinite(loss), name
        grads = torch.autograd.grad(loss, [p for p in m.parameters() if p.requires_grad], allow_unused=True)
        assert any(g is not None and g.abs().sum() > 0 for g in grads), name
    _, met = SMT(teacher, cell, SMTConfig(future=4, transitions=4, own_steps=2, far_samples=2)).double().loss(x, y, torch.Generator())
    assert all(math.isfinite(float(met[k])) for k in ("loss_dec", "loss_dyn", "loss_last_input", "loss_far", "loss_own"))
    loss, met = dmt_loss(teacher, cell, x, y, DMTConfig(start="encoder", rollout=4), rollout_starts(DMTConfig(start="encoder", rollout=4), x,
                                                                                                   torch.Generator(), None))
    assert torch.isfinite(loss) and torch.isfinite(met["loss_readout"])


def test_bptt_readout_loss_is_the_outputs_nll_over_the_supervised_values():
    teacher, cell = _nets("gaussian")
    x, y = _data()
    loss, _ = BPTT(None, cell, BPTTConfig()).loss(x, y)
    M = rollout(cell, cell.init_memory(3), x)
    p = cell.output.params(cell.readout(M[:, 1:].reshape(-1, cell.Z)))
    t = y.reshape(-1, G)
    nll = 0.5 * ((t - p["mu"]) / p["sigma"]) ** 2 + torch.log(p["sigma"]) + 0.5 * math.log(2 * math.pi)
    ok = ~torch.isnan(t)
    torch.testing.assert_close(loss, nll[ok].mean(), rtol=1e-12, atol=0)


def test_the_last_input_probe_regresses_the_features_and_ignores_missing_ones():
    from memtrain.methods.smt import last_input_loss
    head = torch.nn.Linear(8, FEAT).double()
    m = torch.randn(2, 3, 8, dtype=torch.float64)
    x_in = torch.randn(2, 3, FEAT, dtype=torch.float64)
    x_in[0, 1, 2] = float("nan")
    got = last_input_loss(head, m, x_in, SMTConfig(), D)
    err = (head(m.reshape(-1, 8)) - x_in.reshape(-1, FEAT)) ** 2
    torch.testing.assert_close(got, err[~torch.isnan(err)].mean(), rtol=1e-12, atol=0)


def test_evaluation_of_real_targets_reports_the_loss_and_the_point_error():
    teacher, cell = _nets("gaussian")
    x, y = _data()
    ev = evaluate(cell, teacher, x, y)
    assert ev["rnn_acc"] is None and ev["target_entropy"] is None and ev["teacher_gain"] is None
    with torch.no_grad():
        M = rollout(cell, cell.init_memory(3), x)
        p = cell.output.params(cell.readout(M[:, 1:].reshape(-1, cell.Z)))
    t = y.reshape(-1, G)
    ok = ~torch.isnan(t)
    nll = 0.5 * ((t - p["mu"]) / p["sigma"]) ** 2 + torch.log(p["sigma"]) + 0.5 * math.log(2 * math.pi)
    assert ev["rnn_ce"] == pytest.approx(float(nll[ok].mean()), rel=1e-12)
    assert ev["rnn_mse"] == pytest.approx(float(((p["mu"] - t) ** 2)[ok].mean()), rel=1e-12)
    assert "kstep@8" in ev and ev["dyn_rel"] is not None and ev["drift"][-1] >= 0
    with pytest.raises(ValueError, match="no supervised position"):
        evaluate(cell, teacher, x, torch.full_like(y, float("nan")))


def test_rows_of_different_lengths_with_real_values_are_each_row_alone():
    """Padding past a row's end (NaN targets, junk features) changes nothing, as for token rows."""
    teacher, cell = _nets("gaussian")
    x, y = _data(T=9)
    y[:, 0] = 0.5  # every row has a supervised step
    L = torch.tensor([9, 4, 6])
    x[1, 4:] = 1e6  # junk in the padding
    m = BPTT(None, cell, BPTTConfig())
    loss, _ = m.loss(x, y, lengths=L)
    alone = [(x[b:b + 1, :n], y[b:b + 1, :n]) for b, n in enumerate(L.tolist())]
    counts = [int((~torch.isnan(yb)).sum()) for _, yb in alone]
    each = [m.loss(xb, yb)[0] for xb, yb in alone]
    torch.testing.assert_close(loss, sum(c * e for c, e in zip(counts, each)) / sum(counts), rtol=1e-12, atol=0)
    ev = evaluate(cell, teacher, x, y, lengths=L)
    assert math.isfinite(ev["rnn_ce"]) and math.isfinite(ev["drift"][-1])


def test_smt_with_a_one_step_future_on_real_values_is_the_readouts_loss():
    """smt.future=1 (0.13 crashed here: no future input to gather): the decoder loss is the first output's,
    the readout's, at the decoded memories, and the teacher's running sums get a gradient."""
    torch.manual_seed(0)
    teacher = tiny_teacher(vocab_size=None, features=FEAT, output="gaussian", targets=G, running_sums=4.0).double()
    cell = _nets()[1]
    x, y = _data()
    loss, met = SMT(teacher, cell, SMTConfig(future=1, dec_samples=None, transitions=4)).double().loss(x, y, torch.Generator().manual_seed(0))
    assert torch.isfinite(loss) and float(met["loss_dec"]) == pytest.approx(float(met["loss_dec0"]), rel=1e-12)
    loss.backward()
    assert float(teacher.sum_embed.weight.grad.abs().sum()) > 0


def _hide_reference(x_fut, lagged):
    """hide_unknown written out: the input k steps after the memory's holds y_{s+k-lag}, read only where the
    memory (written after x_{s-1}, so up to y_{s-2}) had read it."""
    out = x_fut.clone()
    for k in range(x_fut.shape[-2]):
        for v, f, lag in lagged:
            if not k - lag <= -2:  # y_{s+k-lag} was read by the memory only if s+k-lag <= s-2
                out[..., k, v], out[..., k, f] = 0.0, 1.0
    return out


def test_hide_unknown_matches_the_plain_loop_and_leaves_the_rest():
    from memtrain.methods.smt import hide_unknown
    x_fut = torch.randn(2, 3, 7, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    lagged = [[0, 2, 1], [1, 3, 4]]
    got = hide_unknown(x_fut, lagged)
    torch.testing.assert_close(got, _hide_reference(x_fut, lagged), rtol=0, atol=0)
    assert (got[..., 0] == 0).all() and (got[..., 2] == 1).all(), "y_{t-1} is never known ahead"
    assert torch.equal(got[..., :3, 1], x_fut[..., :3, 1]) and (got[..., 3:, 1] == 0).all(), "lag 4: 3 steps known"
    assert torch.equal(got[..., 4], x_fut[..., 4]), "a covariate known in advance is read as it is"


def test_decoder_reads_known_hides_the_lagged_target_from_the_decoder_loss():
    """smt.decoder_reads="known": the decoder loss gets no gradient through the future inputs' y_{t-1} (or its
    flag), only through the covariate, and equals "all" on inputs whose y_{t-1} is missing throughout; "all"
    reads y_{t-1}."""
    from memtrain.methods.smt import decoder_loss
    teacher = _nets()[0]
    x, y = _data(T=12)
    pos = torch.tensor([[1, 4], [0, 6], [2, 3]])
    m_dec = torch.randn(3, 2, K * D, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    grads = {}
    for reads, lagged in (("all", None), ("known", [[0, 1, 1]])):
        xg = x.clone().requires_grad_()
        loss, _ = decoder_loss(teacher, xg, y, pos, m_dec, SMTConfig(future=5, decoder_reads=reads, lagged_inputs=lagged))
        grads[reads] = (loss, torch.autograd.grad(loss, xg)[0])
    loss, g = grads["known"]
    assert (g[..., :2] == 0).all() and g[..., 2].abs().sum() > 0
    assert grads["all"][1][..., 0].abs().sum() > 0
    missing = x.clone()
    missing[..., 0], missing[..., 1] = 0.0, 1.0
    want, _ = decoder_loss(teacher, missing, y, pos, m_dec, SMTConfig(future=5))
    torch.testing.assert_close(loss, want, rtol=1e-12, atol=0)
