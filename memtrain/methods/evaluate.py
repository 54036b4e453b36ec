"""Evaluation of the RNN running alone from its initial memory, of the teacher, and of drift.

Legend: B batch, T time, S = T+1 memories, Z memory size.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..lengths import hold_after_end, mask_targets, supervised
from ..models.cells import Cell
from ..models.inputs import flat
from ..models.teacher import Teacher
from .losses import upcast
from .rollout import Rollout, rollout

# a teacher counts as having learned something once its held-out loss is this fraction below the
# entropy of the targets' marginal (the loss of a model that ignores the past)
MIN_TEACHER_GAIN = 0.05
# a ratio whose denominator is at most this (relative to the memories' mean square; for the targets'
# entropy, in nats) is undefined: it is reported as null with a reason (`<name>_why`), never as an
# enormous number
TINY = 1e-9


def _sums(cell: Cell, teacher: Teacher | None, x: torch.Tensor, y: torch.Tensor, how: Rollout | None,
          lengths: torch.Tensor | None = None) -> dict:
    """Additive statistics of one batch: supervised tokens, correct predictions and summed
    cross-entropy of the RNN alone and the teacher, target counts, summed drift per position, and the
    teacher's final memories' first two moments. With `lengths` both memories are held after each
    row's end (lengths.py): drift at s past a row's end is its drift at the end, and the final
    memory is the memory at the end."""
    B = x.shape[0]
    y = mask_targets(y, lengths)
    mask = supervised(y)
    M_hat = rollout(cell, cell.init_memory(B), x, how=how, lengths=lengths)  # (B, S, Z)
    real = cell.output.kind != "categorical"
    if real:  # real-valued targets: summed loss (NLL; pinball for quantiles) and squared error per value
        ok = ~torch.isnan(y[mask])
        out = {"rows": B, "n": ok.sum().item()}
    else:
        out = {"rows": B, "n": mask.sum().item(), "counts": torch.bincount(y[mask].cpu(), minlength=1).double()}

    def add(prefix, raw):
        if real:
            target = y[mask]
            p = cell.output.params(upcast(raw))
            el = cell.output.elementwise_loss(p, target)
            out[f"{prefix}_ce"] = torch.where(ok, el, torch.zeros_like(el)).sum().item()
            err = cell.output.mean(upcast(raw)) - torch.nan_to_num(target)
            out[f"{prefix}_se"] = torch.where(ok, err * err, torch.zeros_like(err)).sum().item()
            return
        out[f"{prefix}_correct"] = (raw.argmax(-1) == y[mask]).sum().item()
        out[f"{prefix}_ce"] = F.cross_entropy(upcast(raw), y[mask], reduction="sum").item()

    add("rnn", cell.readout(M_hat[:, 1:][mask]))
    if teacher is not None:
        M = hold_after_end(teacher.encode(x), lengths)  # (B, S, Z)
        add("teacher", teacher.readout(M[:, 1:][mask]))
        out["drift"] = (upcast(M_hat) - upcast(M)).pow(2).mean(-1).double().sum(0)  # (S,)
        last = M[:, -1].double()
        out["m_sum"], out["m_sq"] = last.sum(0), last.pow(2).sum(0)
        out["M"], out["L"] = M, lengths
    return out


def _add(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        if k == "counts":  # bincounts of different lengths
            n = max(len(a[k]), len(v))
            out[k] = F.pad(a[k], (0, n - len(a[k]))) + F.pad(v, (0, n - len(v)))
        elif k not in ("M", "L") and v is not None:  # (the first batch's memories and lengths are kept for the one-step error)
            out[k] = a[k] + v
    return out


def target_entropy(counts: torch.Tensor) -> float:
    """Entropy (nats) of the empirical marginal of the targets: the loss of a predictor that ignores
    the past and always answers with the targets' overall frequencies."""
    p = counts[counts > 0] / counts.sum().clamp_min(1)
    return max(0.0, float(-(p * p.log()).sum()))  # (one target: 0.0, not -0.0)


@torch.no_grad()
def evaluate(cell: Cell, teacher: Teacher | None, x: torch.Tensor, y: torch.Tensor, chunk: int | None = None,
             how: Rollout | None = None, lengths: torch.Tensor | None = None) -> dict:
    """Accuracy and cross-entropy on supervised positions for the cell alone (from init_memory, never
    seeing a teacher memory) and the teacher; drift[s] = MSE(m^_s, M[:, s]) for s = 0..T. Every row
    of x once, `chunk` rows at a time (None: all at once); `rows` says how many were used.
    `target_entropy`: the loss of a model that ignores the past; `teacher_gain` = 1 - teacher_ce /
    target_entropy (0: the teacher has learned nothing); `rel_drift` = drift at T / spread. A ratio
    over a denominator ~0 (one target token; identical or unmoving teacher memories) is None, with
    `<name>_why` saying why. Rows without a single supervised target are refused (ValueError). The
    cell runs through time as `how` says (the run's Rollout; None: stepped). `lengths` (B,): rows of
    different lengths (lengths.py): nothing past a row's end is scored, and the drift at T and the
    spread are each row's at its end. Real-valued targets (cell.output not categorical): `rnn_ce` is the
    output's loss per supervised value (the negative log-likelihood; the pinball loss for quantiles),
    `rnn_mse` the point forecast's mean square error, and there is no accuracy (None) and no
    target_entropy (None)."""
    y = mask_targets(y, lengths)
    if not bool(supervised(y).any()):
        raise ValueError(f"nothing to evaluate: the {len(y)} sequences of length {y.shape[1]} have no supervised "
                         "position (every target is -1 or NaN)")
    chunk = chunk or len(x)
    total = None
    for i in range(0, len(x), chunk):
        part = _sums(cell, teacher, x[i:i + chunk], y[i:i + chunk], how, None if lengths is None else lengths[i:i + chunk])
        total = part if total is None else _add(total, part)
    N, n = total["rows"], max(total["n"], 1)
    out = {"rows": N}
    for who in ("rnn", "teacher"):
        if f"{who}_ce" in total:
            ce = total[f"{who}_ce"] / n  # nats per supervised token; bits: bits per byte on byte-level text
            if "counts" in total:
                out.update({f"{who}_acc": total[f"{who}_correct"] / n, f"{who}_ce": ce, f"{who}_bits": ce / math.log(2)})
            else:
                out.update({f"{who}_acc": None, f"{who}_ce": ce, f"{who}_mse": total[f"{who}_se"] / n})
    out["target_entropy"] = target_entropy(total["counts"]) if "counts" in total else None
    if teacher is not None:
        H = out["target_entropy"]
        if H is None:
            _ratio(out, "teacher_gain", None, "real-valued targets: no marginal entropy to measure the teacher against")
        else:
            _ratio(out, "teacher_gain", 1 - out["teacher_ce"] / H if H > TINY else None,
                   "target_entropy ~0: every target is the same token, so ignoring the past is already perfect")
        out["drift"] = [round(v, 6) for v in (total["drift"] / N).tolist()]
        # how much the teacher's final memories differ between sequences: drift is small only
        # relative to this (a collapsed memory space makes any drift look small)
        var = (total["m_sq"] - total["m_sum"].pow(2) / N) / max(N - 1, 1)
        out["spread"] = spread = var.mean().item()
        zero = spread <= TINY * (total["m_sq"] / N).mean().item()
        _ratio(out, "rel_drift", None if zero else out["drift"][-1] / spread,
               f"spread {spread:.1e} ~0: the teacher's final memories are the same for every sequence")
        n_first = total["M"].shape[0]
        _ratio(out, "dyn_rel", one_step_error(cell, total["M"], x[:n_first], lengths=total["L"]),
               "the teacher's memories do not change from one step to the next")
        out.update(contraction(cell, total["M"], x[:n_first], total["L"]))
    return out


def _ratio(out: dict, name: str, value: float | None, why: str) -> None:
    """out[name] = value; an undefined ratio (None) also gets out[name + '_why'] = why."""
    out[name] = value
    if value is None:
        out[f"{name}_why"] = why


def teacher_learned(ev: dict, min_gain: float = MIN_TEACHER_GAIN) -> bool:
    """Has the teacher learned anything (its loss `min_gain` below a model's that ignores the past)?
    Until it has, its memories carry nothing, and a tiny dyn_rel or drift means nothing. An
    evaluation without a teacher_gain (no teacher), or with an undefined one (None: every target is
    the same token), says nothing against it."""
    gain = ev.get("teacher_gain")
    return gain is None or gain >= min_gain


def one_step_error(cell: Cell, M: torch.Tensor, x: torch.Tensor, budget: int = 2048,
                   lengths: torch.Tensor | None = None) -> float | None:
    """Followability: MSE(cell.update(M[:, s], x_s), M[:, s+1]) / MSE(M[:, s], M[:, s+1]) over the
    first sequences' transitions (about `budget` of them, one batched call; with `lengths` only those
    inside their rows). Near 1 the cell cannot compute the teacher's transitions; well below 1 DMT
    can make it follow (EXPERIMENTS.md 5). None where the teacher's memories do not move (their
    step ~0: the ratio is undefined)."""
    B, T = x.shape[:2]
    n = min(B, max(1, budget // max(T, 1)))
    m, m_next, Z = M[:n, :-1].float(), M[:n, 1:].float(), M.shape[-1]
    w = (torch.ones(n, T, device=x.device) if lengths is None
         else (torch.arange(T, device=x.device)[None, :] < lengths[:n].to(x.device)[:, None]).float())

    def mean(e):  # (n, T, Z) -> the mean square over the transitions inside their rows
        return (e.pow(2).mean(-1) * w).sum().item() / max(w.sum().item(), 1.0)
    step = mean(m - m_next)
    if step <= TINY * mean(m_next):
        return None
    pred = cell.update(M[:n, :-1].reshape(-1, Z), flat(x[:n])).float().view_as(m)
    return mean(pred - m_next) / step


def drift_at(drift: list, fractions=(0.25, 0.5, 1.0)) -> dict:
    """Drift at a few horizons (fractions of T), for logs and tables."""
    T = len(drift) - 1
    return {f"drift@{max(1, round(f * T))}": drift[max(1, round(f * T))] for f in fractions}


def kstep_errors(cell: Cell, M: torch.Tensor, x: torch.Tensor, n: int = 8, starts: int = 32,
                 lengths: torch.Tensor | None = None) -> dict[int, float]:
    """Contraction onto the teacher: the cell started at the teacher's memory M[:, s] and run alone on
    x_{s+1}..x_{s+k}, against the teacher's M[:, s+k], as a mean square over the memory (the units of
    drift: RMS-normalised memories of unrelated sequences differ by about 2), for k = 1, 2, 4, ... and
    T. `starts` evenly spaced starts in each of the first n sequences, run in one batch (a start
    leaves it at the sequence's end); the error at k averages the starts with s + k <= T. A cell that
    contracts keeps these flat in k; one that does not lets them grow to the drift. x (B, T), M (B, S, Z).
    With `lengths` a start counts at k only where s + k is inside its row (a k no row reaches is left out)."""
    B, T = x.shape[:2]
    Z, n = M.shape[-1], min(B, n)
    ks = sorted({1 << i for i in range(T.bit_length()) if (1 << i) <= T} | {T})
    s0 = torch.arange(0, T, max(1, T // starts), device=x.device)  # (P,) ascending
    m = M[:n, s0].clone()  # (n, P, Z)
    out: dict[int, float] = {}
    for k in range(1, T + 1):
        a = int((s0 + k <= T).sum())  # the starts still inside the sequence: a prefix
        m = m[:, :a]
        m = cell.update(m.reshape(-1, Z), flat(x[:n, s0[:a] + k - 1])).view(n, a, Z)
        if k in ks:
            err = (upcast(m) - upcast(M[:n, s0[:a] + k])).pow(2).mean(-1)  # (n, a)
            if lengths is None:
                out[k] = err.mean().item()
            else:
                inside = s0[None, :a] + k <= lengths[:n].to(x.device)[:, None]
                if bool(inside.any()):
                    out[k] = torch.where(inside, err, torch.zeros_like(err)).sum().item() / int(inside.sum())
    return out


def contraction(cell: Cell, M: torch.Tensor, x: torch.Tensor, lengths: torch.Tensor | None = None) -> dict:
    """How the cell treats errors off the teacher's trajectory, for an evaluation row: `kstep@k` (the
    k-step error from teacher memories, `kstep_errors`), `kstep_growth` (its growth per step over the
    first 8 steps) and `jac_norm` (the median largest singular value of the cell's Jacobian on teacher
    memories). Drift at T is where these end up after a whole rollout from m_empty. `lengths`: only
    steps inside their rows."""
    errs = kstep_errors(cell, M, x, lengths=lengths)
    out = {f"kstep@{k}": round(v, 6) for k, v in errs.items()}
    g = kstep_growth(errs)
    out["kstep_growth"] = None if g is None else round(g, 4)
    out["jac_norm"] = round(jacobian_norm(cell, M, x, gen=torch.Generator().manual_seed(0), lengths=lengths), 4)
    return out


def kstep_growth(errs: dict[int, float], k: int = 8) -> float | None:
    """The k-step error's growth per step over the first k steps, (e_k / e_1)^(1 / (k - 1)) (k: the
    largest measured k <= 8): below 1 the cell pulls its errors back towards the teacher's memories,
    above 1 they compound. None where e_1 is ~0 or there is a single k."""
    ks = [j for j in errs if 1 < j <= k]
    if not ks or errs.get(1, 0.0) <= TINY:
        return None
    j = max(ks)
    return (errs[j] / errs[1]) ** (1.0 / (j - 1))


def jacobian_norm(cell: Cell, M: torch.Tensor, x: torch.Tensor, n: int = 64, iters: int = 8,
                  gen: torch.Generator | None = None, lengths: torch.Tensor | None = None) -> float:
    """The median over n teacher memories m = M[i, s] of the largest singular value of the cell's
    Jacobian J = d f(m, x_{s+1}) / d m, by `iters` rounds of power iteration on J^T J (a lower bound,
    close where the top singular value stands apart). J v is a central difference with step
    eps^(1/3) (relative error about eps^(2/3)), J^T w a vector-Jacobian product: plain forward and
    first-order backward passes, which every cell has (attention has no double backward on a CPU).
    With `lengths` the memories are drawn among those inside their rows."""
    B, T = x.shape[:2]
    Z = M.shape[-1]
    idx = torch.randperm(B * T, generator=gen)
    if lengths is not None:
        inside = (torch.arange(T)[None, :] < lengths.cpu()[:, None]).reshape(-1)
        idx = idx[inside[idx]]
    idx = idx[:n].to(x.device)
    xi = flat(x)[idx]
    v = torch.randn((len(idx), Z), generator=gen, dtype=M.dtype).to(M.device)
    v = v / v.norm(dim=-1, keepdim=True)
    h = torch.finfo(M.dtype).eps ** (1 / 3)
    m0 = M[:, :-1].reshape(-1, Z)[idx].detach()
    sigma = None
    for _ in range(iters):
        with torch.no_grad():
            jv = (cell.update(m0 + h * v, xi) - cell.update(m0 - h * v, xi)) / (2 * h)  # J v
        with torch.enable_grad():  # a fresh graph each time (a compiled cell's backward may run only once)
            m = m0.clone().requires_grad_(True)
            (w,) = torch.autograd.grad(cell.update(m, xi), m, grad_outputs=jv)  # J^T J v
        sigma = jv.norm(dim=-1)
        v = w / w.norm(dim=-1, keepdim=True).clamp_min(1e-30)
    return sigma.median().item()
