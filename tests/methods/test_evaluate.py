"""Evaluation: every row once in chunks equals one pass, the targets' entropy, the blank-teacher test."""
from __future__ import annotations

import math

import pytest
import torch

from memtrain.methods.evaluate import (
    MIN_TEACHER_GAIN,
    evaluate,
    target_entropy,
    teacher_learned,
)
from memtrain.methods.rollout import rollout
from tests.conftest import V, tiny_cell, tiny_teacher


def _batch(n=13, T=9, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, V, (n, T), generator=g)
    y = torch.where(torch.rand(n, T, generator=g) < 0.4, torch.randint(0, V, (n, T), generator=g), -1)
    return x, y


def test_chunks_equal_one_pass_in_float64():
    teacher, cell = tiny_teacher().double().eval(), tiny_cell("mlp").double().eval()
    x, y = _batch()
    whole, parts = evaluate(cell, teacher, x, y), evaluate(cell, teacher, x, y, chunk=4)  # 4 + 4 + 4 + 1 rows
    assert whole["rows"] == parts["rows"] == 13
    for k in ("rnn_acc", "rnn_ce", "teacher_acc", "teacher_ce", "spread", "target_entropy", "teacher_gain"):
        assert parts[k] == pytest.approx(whole[k], rel=1e-9, abs=1e-12), k
    assert parts["drift"] == pytest.approx(whole["drift"], abs=2e-6)  # (rounded to 6 places)
    # against plain formulas
    mask = y >= 0
    M, M_hat = teacher.encode(x), rollout(cell, cell.init_memory(13), x)
    ce = torch.nn.functional.cross_entropy(teacher.readout(M[:, 1:][mask]), y[mask]).item()
    assert whole["teacher_ce"] == pytest.approx(ce, rel=1e-9)
    assert whole["spread"] == pytest.approx(M[:, -1].var(0).mean().item(), rel=1e-9)
    assert whole["drift"][-1] == pytest.approx((M_hat[:, -1] - M[:, -1]).pow(2).mean().item(), abs=1e-6)
    assert whole["teacher_gain"] == pytest.approx(1 - ce / whole["target_entropy"], rel=1e-9)


def test_target_entropy_and_blank_teacher():
    assert target_entropy(torch.tensor([5.0, 5.0, 5.0, 5.0])) == pytest.approx(math.log(4))
    assert target_entropy(torch.tensor([0.0, 7.0, 0.0])) == 0.0
    assert target_entropy(torch.tensor([3.0, 1.0])) == pytest.approx(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)))
    assert not teacher_learned({"teacher_gain": MIN_TEACHER_GAIN - 1e-3})
    assert teacher_learned({"teacher_gain": MIN_TEACHER_GAIN}) and teacher_learned({}), "no teacher: nothing against it"
    assert teacher_learned({"teacher_gain": 0.02}, min_gain=0.01)


def test_a_blank_teacher_scores_at_the_targets_entropy():
    """A teacher whose readout ignores the memory and predicts the targets' frequencies has gain ~0."""
    teacher, cell = tiny_teacher().eval(), tiny_cell("mlp").eval()
    x, y = _batch(n=64)
    counts = torch.bincount(y[y >= 0], minlength=V).float()
    with torch.no_grad():
        for p in teacher.decoder.parameters():
            p.zero_()
    frequencies = (counts / counts.sum()).clamp_min(1e-9).log()
    teacher.readout = lambda m: frequencies.expand(m.shape[0], V)
    ev = evaluate(cell, teacher, x, y)
    assert ev["teacher_ce"] == pytest.approx(ev["target_entropy"], rel=1e-5) and abs(ev["teacher_gain"]) < 1e-5
    assert not teacher_learned(ev)


# ---- ratios over a zero spread are undefined, not enormous (issue 25) --------------------------------

def test_one_target_token_has_entropy_plus_zero_and_no_teacher_gain():
    assert math.copysign(1.0, target_entropy(torch.tensor([0.0, 7.0, 0.0]))) == 1.0, "0.0, never -0.0"
    teacher, cell = tiny_teacher().eval(), tiny_cell("mlp").eval()
    x, _ = _batch(n=8)
    ev = evaluate(cell, teacher, x, torch.full_like(x, 3))  # every target is token 3
    assert ev["target_entropy"] == 0.0 and math.copysign(1.0, ev["target_entropy"]) == 1.0
    assert ev["teacher_gain"] is None and "every target is the same token" in ev["teacher_gain_why"]
    assert teacher_learned(ev), "an undefined gain says nothing against the teacher"
    ok = evaluate(cell, teacher, *_batch(n=8))
    assert isinstance(ok["teacher_gain"], float) and "teacher_gain_why" not in ok


def test_rel_drift_is_null_over_identical_final_memories():
    teacher, cell = tiny_teacher().double().eval(), tiny_cell("mlp").double().eval()
    x, y = _batch(n=6)
    ev = evaluate(cell, teacher, x, y)
    assert ev["rel_drift"] == pytest.approx(ev["drift"][-1] / ev["spread"], rel=1e-12) and "rel_drift_why" not in ev
    same = evaluate(cell, teacher, x[:1].expand(6, -1), y[:1].expand(6, -1))  # one sequence six times: spread 0
    assert same["spread"] < 1e-12 and same["rel_drift"] is None  # (rounding leaves ~1e-17)
    assert same["rel_drift_why"].startswith("spread ") and "the same for every sequence" in same["rel_drift_why"]


def test_dyn_rel_is_null_where_the_teachers_memories_do_not_move():
    teacher, cell = tiny_teacher().double().eval(), tiny_cell("mlp").double().eval()
    x, y = _batch(n=4)
    with torch.no_grad():  # an encoder that ignores its input: registers only, never a token
        teacher.embed.weight.zero_()
        for blk in teacher.blocks:
            for p in blk.parameters():
                p.zero_()
    ev = evaluate(cell, teacher, x, y)
    assert ev["dyn_rel"] is None and ev["dyn_rel_why"] == "the teacher's memories do not change from one step to the next"
    M = teacher.encode(x)
    assert (M[:, 1:] - M[:, :-1]).abs().max().item() == 0.0


def test_nothing_supervised_is_refused():
    teacher, cell = tiny_teacher().eval(), tiny_cell("mlp").eval()
    x, _ = _batch(n=5, T=7)
    with pytest.raises(ValueError, match="the 5 sequences of length 7 have no supervised position"):
        evaluate(cell, teacher, x, torch.full_like(x, -1))


def test_kstep_errors_match_a_plain_loop_in_float64():
    from memtrain.methods.evaluate import kstep_errors, kstep_growth
    teacher, cell = tiny_teacher().double().eval(), tiny_cell("mlp").double().eval()
    x, _ = _batch(n=3, T=9)
    with torch.no_grad():
        M = teacher.encode(x)
        errs = kstep_errors(cell, M, x, n=3, starts=9)  # every start
        assert sorted(errs) == [1, 2, 4, 8, 9]
        for k, e in errs.items():
            sq = []
            for b in range(3):
                for s in range(0, 9 - k + 1):
                    m = M[b, s]
                    for t in range(s, s + k):
                        m = cell.update(m[None], x[b, t][None])[0]
                    sq.append((m - M[b, s + k]).pow(2).mean())
            assert e == pytest.approx(torch.stack(sq).mean().item(), rel=1e-9), k
    assert kstep_growth(errs) == pytest.approx((errs[8] / errs[1]) ** (1 / 7))
    assert kstep_growth({1: 0.0, 2: 1.0}) is None and kstep_growth({1: 1.0}) is None


def test_jacobian_norm_is_the_largest_singular_value():
    from memtrain.methods.evaluate import jacobian_norm
    # (a residual cell at its start has a near-identity Jacobian whose top singular values are nearly
    # equal, where power iteration converges slowly: the non-residual form separates them)
    teacher, cell = tiny_teacher().double().eval(), tiny_cell("mlp", residual=False).double().eval()
    x, _ = _batch(n=2, T=3)
    M = teacher.encode(x).detach()
    got = jacobian_norm(cell, M, x, n=6, iters=200, gen=torch.Generator().manual_seed(0))
    sig = []
    for b in range(2):
        for s in range(3):
            J = torch.autograd.functional.jacobian(lambda m: cell.update(m[None], x[b, s][None])[0], M[b, s])
            sig.append(torch.linalg.matrix_norm(J, ord=2))
    assert got == pytest.approx(torch.stack(sig).median().item(), rel=1e-6)


def test_evaluation_reports_contraction():
    teacher, cell = tiny_teacher().eval(), tiny_cell("mlp").eval()
    x, y = _batch(n=4, T=8)
    ev = evaluate(cell, teacher, x, y)
    assert [k for k in ev if k.startswith("kstep@")] == ["kstep@1", "kstep@2", "kstep@4", "kstep@8"]
    assert ev["kstep@1"] > 0 and ev["jac_norm"] > 0 and ev["kstep_growth"] > 0
