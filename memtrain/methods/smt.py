"""Supervised Memory Training (paper, SMT): the teacher and the cell train together, on every
timestep of every sequence, in one parallel pass; the cell is never unrolled.

    loss = coef_dec * CE(decoder(M[:, s], x_s..) , y_{s-1}..y_{s+Tf-2})        predictive state
         + coef_dyn * MSE(cell.update(M[:, s], x_s), M[:, s+1])               one-step dynamics
                      (on the teacher's side weighed coef_dyn_teacher, where that is set)
         + coef_unif * uniformity(memory tokens)                              against collapse

Legend: B batch, T time, S = T+1 memories, K tokens, D width, Z = K*D, V vocab, Tf future,
P decoder positions per sequence, R transitions per sequence, Q memories computed. M[:, s] = memory after s inputs.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..lengths import mask_targets, supervised
from ..models.cells import Cell, check_compatible
from ..models.inputs import flat, take
from ..models.layers import rms_normalize
from ..models.teacher import Teacher
from .base import Decision, Method
from .evaluate import teacher_learned
from .losses import masked_ce, mse_rows, shift_targets, target_loss, uniformity, upcast
from .rollout import Rollout, onpolicy_states


DECODER_READS = ("all", "known")


@dataclass
class SMTConfig:
    """Supervised Memory Training: teacher and cell jointly, every transition in one pass."""
    future: int = 32  # Tf: outputs the decoder predicts from each memory
    gamma: float = 1.0  # weight gamma^i on the i-th future output
    coef_dec: float = 1.0  # weight of the decoder's cross-entropy (predictive memories)
    coef_dyn: float = 0.1  # weight of the cell's one-step regression onto the teacher's next memory
    coef_dyn_teacher: float | None = None  # that regression's weight on the teacher's side: its pull towards memories the cell can follow (None: coef_dyn; the cell's side is always coef_dyn)
    coef_unif: float = 1e-3  # weight of the uniformity loss against memory collapse
    dec_samples: int | None = 8  # memories per sequence sent to the decoder (None: every one)
    transitions: int | None = None  # R transitions per sequence in the dynamics loss (None: all T); set, the encoder computes only the memories the loss reads
    unif_samples: int = 256  # memory tokens in the uniformity loss
    dyn_trains_teacher: bool = True  # the dynamics loss also moves the encoder (joint training)
    input_noise: float = 0.0  # std of Gaussian noise on the cell's input memory (denoising dynamics)
    coef_onpolicy: float = 0.0  # the same regression from the cell's OWN rollout states (trains the cell only)
    coef_last_input: float = 0.1  # CE of a linear probe that reads x_t back from m_t (keeps memories Markov; 0: off)
    own_steps: int = 0  # k: each transition is also regressed from the cell's OWN j-step state, j ~ U{1..k}, run from the encoder memory j steps back (error-correcting SMT; 0: off)
    own_gain: float = 1.0  # that state's error off the teacher's memory, scaled by this (>1: larger errors of the same shape)
    far_samples: int = 0  # memories per sequence asked (by a training-time head) for one supervised output beyond the decoder's window, given its offset: memories carry what matters far ahead (0: off)
    coef_far: float = 1.0  # weight of that head's cross-entropy (with smt.far_samples > 0)
    slow_tokens: int = 0  # the first k memory tokens are asked to change slowly (coef_slow) and the last-input probe does not read them: a place for what must be held (0: off)
    coef_slow: float = 1.0  # weight of MSE(M[s+1], M[s]) on the slow tokens (with smt.slow_tokens > 0)
    decoder_reads: str = "all"  # what the decoder reads of the future steps' inputs: "all" (teacher-forced, as the paper) | "known": only what was known when the memory was written (covariates known in advance, lagged targets older than the memory; newer ones read as missing), so the memory itself must carry the near future (real inputs with lagged targets, task=series)
    lagged_inputs: list[list[int]] | None = None  # with decoder_reads="known": [value feature, its missing flag, lag] of each input that holds a target `lag` steps back (None: the task's, derived once; set it for task=npz)

    def require_dyn_on_teacher(self, setting: str) -> None:
        """Refuse `setting`, a teacher-side weight of the dynamics loss, where that loss does not reach the teacher."""
        if self.coef_dyn <= 0 or not self.dyn_trains_teacher:
            raise ValueError(f"{setting} weighs the dynamics loss on the teacher: it needs smt.coef_dyn > 0 and "
                             f"smt.dyn_trains_teacher=true (got coef_dyn={self.coef_dyn}, dyn_trains_teacher={self.dyn_trains_teacher})")

    def validate(self) -> None:
        if self.future < 1:
            raise ValueError(f"smt.future must be >= 1, got {self.future}")
        for n in ("dec_samples", "transitions"):
            v = getattr(self, n)
            if v is not None and v < 1:
                raise ValueError(f"smt.{n} must be >= 1 or None, got {v}")
        for n in ("coef_dec", "coef_dyn", "coef_unif", "coef_last_input", "coef_onpolicy", "coef_far", "coef_slow",
                  "input_noise"):
            if getattr(self, n) < 0:
                raise ValueError(f"smt.{n} must be >= 0, got {getattr(self, n)}")
        for n in ("own_steps", "far_samples", "slow_tokens"):
            if getattr(self, n) < 0:
                raise ValueError(f"smt.{n} must be >= 0 (0: off), got {getattr(self, n)}")
        if self.coef_dyn_teacher is not None:
            if self.coef_dyn_teacher < 0:
                raise ValueError(f"smt.coef_dyn_teacher must be >= 0 or null, got {self.coef_dyn_teacher}")
            self.require_dyn_on_teacher("smt.coef_dyn_teacher")
        if self.own_gain <= 0:
            raise ValueError(f"smt.own_gain must be > 0, got {self.own_gain}")
        if self.unif_samples < 2:
            raise ValueError(f"smt.unif_samples must be >= 2, got {self.unif_samples}")
        if not 0 < self.gamma <= 1:
            raise ValueError(f"smt.gamma must be in (0, 1], got {self.gamma}")
        if self.decoder_reads not in DECODER_READS:
            raise ValueError(f"smt.decoder_reads must be one of {DECODER_READS}, got {self.decoder_reads!r}")
        if self.lagged_inputs is not None:
            if self.decoder_reads != "known":
                raise ValueError("smt.lagged_inputs is read only with smt.decoder_reads='known'; unset it (null) or set that")
            for item in self.lagged_inputs:
                if len(item) != 3 or min(item[:2]) < 0 or item[2] < 1:
                    raise ValueError(f"smt.lagged_inputs: each entry is [value feature >= 0, missing-flag feature >= 0, "
                                     f"lag >= 1], got {item}")

    def check_features(self, features: int | None, task: str) -> None:
        """Refuse lagged inputs outside the task's F input features (token tasks have none to hide)."""
        if self.decoder_reads != "known":
            return
        if features is None:
            raise ValueError(f"smt.decoder_reads='known' hides lagged targets among real input features; task '{task}' "
                             "reads token ids")
        if self.lagged_inputs is None:
            raise ValueError(f"smt.decoder_reads='known': task '{task}' does not say which of its inputs are lagged "
                             "targets; set smt.lagged_inputs=[[value feature, missing flag, lag], ...]")
        bad = [item for item in self.lagged_inputs if max(item[:2]) >= features]
        if bad:
            raise ValueError(f"smt.lagged_inputs {bad} name features outside task '{task}''s {features} input features")


def future_targets(x: torch.Tensor, y: torch.Tensor, pos: torch.Tensor, Tf: int):
    """For memories at positions pos (B, P): future inputs x_s..x_{s+Tf-2} (B, P, Tf-1[, F]) and targets
    y_{s-1}..y_{s+Tf-2} (B, P, Tf[, G]), unsupervised past the end of the sequence (inputs there are 0)."""
    B, P = pos.shape
    tail = x.shape[2:]
    x_pad = F.pad(x, (0, 0) * len(tail) + (0, Tf), value=0)  # (B, T+Tf[, F])
    y1 = shift_targets(y)  # (B, 1+T[, G]): y1[s] = y_{s-1}
    fill = float("nan") if y.is_floating_point() else -1
    y_pad = torch.cat([y1, y1.new_full((B, Tf, *y.shape[2:]), fill)], dim=1)  # (B, 1+T+Tf[, G])
    off = torch.arange(Tf, device=x.device)
    idx = pos[..., None] + off  # (B, P, Tf)
    x_fut = take(x_pad, idx[..., : Tf - 1].reshape(B, -1)).view(B, P, Tf - 1, *tail)  # (explicit sizes: Tf=1 leaves none)
    y_fut = take(y_pad, idx.reshape(B, -1)).view(B, P, Tf, *y.shape[2:])
    return x_fut, y_fut


def hide_unknown(x_fut: torch.Tensor, lagged: list[list[int]]) -> torch.Tensor:
    """The decoder's future inputs x_s..x_{s+Tf-2} (..., Tf-1, F) of the memory written after x_{s-1},
    with what was not known then hidden. The input k steps on holds y_{s+k-lag} at the value feature of
    a lagged target [value, flag, lag]; the memory has read y up to y_{s-2}, so that value is known
    where k <= lag - 2. Elsewhere it reads 0 and its flag 1, as a missing value does (task=series)."""
    n, width = x_fut.shape[-2:]
    k = torch.arange(n, device=x_fut.device)
    value = torch.zeros(n, width, dtype=torch.bool, device=x_fut.device)
    flag = torch.zeros_like(value)
    for v, f, lag in lagged:
        value[:, v] |= k >= lag - 1
        flag[:, f] |= k >= lag - 1
    return torch.where(value, 0.0, torch.where(flag, 1.0, x_fut))


def sample_positions(y: torch.Tensor, Tf: int, n: int | None, gen: torch.Generator | None,
                     lengths: torch.Tensor | None = None) -> torch.Tensor:
    """Memory positions s (B, P) for the decoder: only memories with a supervised output among their
    next Tf (others carry no decoder loss), n of them per sequence without replacement (all if n is
    None or larger; rows with fewer repeat positions, which only reweights them). A row with nothing
    supervised takes any position (inside its length, with `lengths`; its loss is 0)."""
    B, T = y.shape[:2]
    sup = F.pad(supervised(y).float(), (1, Tf), value=0.0)  # (B, 1+T+Tf), sup[s] = y_{s-1} supervised
    counts = sup.unfold(1, Tf, 1)[:, : T + 1].sum(-1)  # (B, S): supervised outputs in each window
    weight = (counts > 0).float()
    none = weight.sum(1) == 0
    if lengths is None:
        weight[none] = 1.0  # nothing supervised: any position (loss will be 0)
    else:
        inside = (torch.arange(T + 1, device=y.device)[None, :] <= lengths.to(y.device)[:, None]).float()
        weight[none] = inside[none]
    if n is None:
        return torch.arange(T + 1, device=y.device).expand(B, T + 1)
    P = min(n, T + 1)
    noise = torch.rand(B, T + 1, generator=gen, device="cpu").to(y.device)
    keys = torch.where(weight > 0, noise, noise - 2.0)  # eligible positions first, in random order
    order = keys.argsort(dim=1, descending=True)[:, :P]  # (B, P)
    n_ok = weight.sum(1, keepdim=True).long()  # (B, 1)
    slot = torch.arange(P, device=y.device)[None, :] % n_ok  # reuse eligible ones if too few
    return torch.gather(order, 1, slot)


def sample_transitions(lengths: torch.Tensor, T: int, n: int | None, gen: torch.Generator | None):
    """For rows of different lengths: n transitions per row (all T if n is None or larger), drawn
    without replacement among the row's real ones (t < lengths[b]) -> (positions (B, R), weights (B, R)):
    a row with fewer than R real transitions fills its other slots with position 0 at weight 0."""
    B = lengths.shape[0]
    R = T if n is None or n >= T else n
    keys = torch.rand(B, T, generator=gen).to(lengths.device)
    real = torch.arange(T, device=lengths.device)[None, :] < lengths[:, None]
    order = torch.where(real, keys, keys + 2.0).argsort(dim=1)[:, :R]  # real transitions first, in random order
    w = order < lengths[:, None]
    return torch.where(w, order, torch.zeros_like(order)), w.float()


def draw_inside(real_dec: torch.Tensor, K: int, Q: int, n: int, gen: torch.Generator | None) -> torch.Tensor:
    """Indices of n memory tokens (of the B*Q*K the SMT loss computes: the decoder's P memories first,
    then the transitions', all inside their rows) drawn without replacement among the memories inside
    their rows; real_dec (B, P) says which decoder memories are."""
    B, P = real_dec.shape
    real = torch.cat([real_dec, real_dec.new_ones(B, Q - P)], dim=1).repeat_interleave(K, dim=1).reshape(-1)
    keys = torch.rand(real.shape[0], generator=gen).to(real.device)
    order = torch.where(real, keys, keys + 2.0).argsort()
    return order[: min(n, int(real.sum()))]


def loss_memories(teacher: Teacher, x, dec_pos, dyn_pos, extra=()):
    """The memories the SMT loss reads -> (M, m_dec (B, P, Z), m_now, m_next (B, R, Z), x_in (B, R),
    [M at each of `extra`]). dyn_pos None: every memory is computed, M (B, S, Z), and the transitions
    are all T. Otherwise only M = [M[dec_pos], M[dyn_pos], M[dyn_pos + 1], M[extra[0]], ...] (B, Q, Z).
    extra: more (B, n) memory positions (own-rollout starts, far-future questions)."""
    P = dec_pos.shape[1]
    Z = teacher.cfg.mem_size

    def at(M, pos):
        return torch.gather(M, 1, pos[..., None].expand(-1, -1, Z))

    if dyn_pos is None:
        M = teacher.encode(x)  # (B, S, Z)
        return M, at(M, dec_pos), M[:, :-1], M[:, 1:], x, [at(M, e) for e in extra]
    R = dyn_pos.shape[1]
    pos = [dec_pos, dyn_pos, dyn_pos + 1, *extra]
    M = teacher.encode(x, torch.cat(pos, dim=1))  # (B, Q, Z)
    parts = M.split([p.shape[1] for p in pos], dim=1)
    return (M, *parts[:3], take(x, dyn_pos), list(parts[3:]))


def scale_grad(t: torch.Tensor, a: float) -> torch.Tensor:
    """t itself, with its gradient multiplied by a on the way back."""
    return t if a == 1.0 else a * t + (1.0 - a) * t.detach()


def far_positions(y: torch.Tensor, Tf: int, n: int, gen: torch.Generator | None):
    """Far-future questions for smt.far_samples: n (memory position s, output index u) pairs per
    sequence (B, n) each, with y[:, u] supervised and beyond the decoder's window from s (u >= s + Tf - 1,
    offset o = u - s + 1 >= Tf). u is drawn uniformly among such outputs, then s uniformly in 0..u-Tf+1.
    -> (s, u, ok): ok (B, n) False for rows with no such output (their loss is 0)."""
    B, T = y.shape[:2]
    sup = supervised(y) & (torch.arange(T, device=y.device) >= Tf - 1)  # outputs some memory sees only from afar
    keys = torch.rand(B, n, T, generator=gen).to(y.device)
    keys = torch.where(sup[:, None, :], keys, keys - 2.0)
    u = keys.argmax(-1)  # (B, n): a random eligible output (any, where none is)
    ok = sup.any(1)[:, None].expand(B, n)
    frac = torch.rand(B, n, generator=gen).to(y.device)
    s = (frac * (u - Tf + 2).clamp_min(1)).long().clamp(max=T)  # uniform in 0..u-Tf+1
    return s, u, ok


class FarHead(nn.Module):
    """A training-time head (not part of the teacher or the RNN): logits for the output `o` steps after a
    memory's first prediction, from the memory (B, Z) and a learned embedding of o's log2 bucket."""

    BUCKETS = 64  # quarter-octave buckets: offsets up to 2^16

    def __init__(self, mem_size: int, out_dim: int, width: int = 256):
        super().__init__()
        self.offset = nn.Embedding(self.BUCKETS, width)
        self.fc = nn.Linear(mem_size, width)
        self.out = nn.Linear(width, out_dim)

    def forward(self, m: torch.Tensor, o: torch.Tensor) -> torch.Tensor:
        bucket = (4 * torch.log2(o.clamp_min(1).to(m.dtype))).long().clamp(0, self.BUCKETS - 1)
        return self.out(F.gelu(self.fc(m) + self.offset(bucket)))


def far_question_loss(far_head: FarHead, m_far, y, far, output=None) -> torch.Tensor:
    """Far-future questions: the memory at s (m_far (B, n, Z)) must tell the supervised output u,
    o = u - s + 1 steps ahead of its first prediction (beyond the decoder's window), without the inputs
    in between. far = (s, u, ok) from `far_positions`; rows with ok False are unsupervised. `output`:
    how the head's outputs are read (the teacher's; None: token ids)."""
    s_far, u_far, ok = far
    raw = far_head(m_far.reshape(-1, m_far.shape[-1]), (u_far - s_far + 1).reshape(-1))
    if output is None or output.kind == "categorical":
        return masked_ce(raw, torch.where(ok, torch.gather(y, 1, u_far), -1).reshape(-1))
    y_far = take(y, u_far)  # (B, n, G)
    y_far = torch.where(ok[..., None], y_far, torch.full_like(y_far, float("nan")))
    return target_loss(output, raw, y_far.reshape(-1, y.shape[-1]))


@torch.no_grad()
def own_states(cell: Cell, m0, x, start, stop):
    """The cell's own states: from memories m0 (B, R, Z) at positions `start` (B, R), run alone on the
    inputs up to position `stop` (B, R) (M[s+1] = f(M[s], x[:, s])), each row for its own stop - start
    steps, all rows in one batch per step. -> (B, R, Z), no graph."""
    B, R, Z = m0.shape
    m = m0.reshape(-1, Z)
    start, stop = start.reshape(-1), stop.reshape(-1)
    seq = torch.arange(B, device=x.device).repeat_interleave(R)  # row b*R + r reads sequence b
    n = stop - start
    m = m.clone()
    for i in range(int(n.max()) if len(n) else 0):
        go = (n > i).nonzero().squeeze(1)  # only the rows still running: sum(n) row-steps, not R*max(n)
        m[go] = cell.update(m[go], x[seq[go], start[go] + i])
    return m.view(B, R, Z)


def onpolicy_loss(teacher: Teacher, cell: Cell, M, x, dyn_pos, x_in, m_next, how: Rollout | None = None,
                  lengths=None, w=None):
    """The regression of the cell from its OWN states (a forward-only rollout from m_empty) onto the
    encoder's next memories, at the loss's transitions, in one batched call (DMT's one-step gradient,
    while the teacher is still training). The target is detached: letting it move would let the
    teacher shrink its memories' spread until everything is trivially "tracked" (EXPERIMENTS.md). The
    rollout runs as `how` says (the run's Rollout; None: stepped); w (B, R): the transitions' weights
    (0: padding; None: all count)."""
    B, Z = x.shape[0], M.shape[-1]
    m0 = M[:, 0].detach() if dyn_pos is None else teacher.empty_memory(1).detach().expand(B, -1)
    m_own = onpolicy_states(cell, m0, x, how, lengths)[:, :-1]  # (B, T, Z), no graph
    if dyn_pos is not None:
        m_own = torch.gather(m_own, 1, dyn_pos[..., None].expand(-1, -1, Z))
    pred_own = cell.update(m_own.reshape(-1, Z), flat(x_in))
    return mse_rows(pred_own, m_next.detach().reshape(-1, Z), w)


def own_state_loss(cell: Cell, m_own0, own_pos, now_pos, m_now, m_next, x, x_in, gain: float = 1.0, w=None):
    """Error-correcting SMT: the regression of the cell from its OWN state onto the teacher's next
    memory, for every transition at once. The input is the cell run alone from the encoder memory
    m_own0 at own_pos to now_pos (B, R): its error off the teacher's m_now is shaped like the errors its
    rollouts make and sized like them (times `gain`, then renormalised where the cell normalises). The
    cell learns to pull such errors back towards the teacher's trajectory: a time-parallel DAgger,
    as DART does for imitation. Trains the cell only (input and target detached: a moving target lets
    the teacher shrink its memories until everything is "followed"). w (B, R): the transitions' weights
    (0: padding; None: all count). -> (loss, its input's error)."""
    Z = m_now.shape[-1]
    m_own = own_states(cell, m_own0.detach(), x, own_pos, now_pos)  # (B, R, Z)
    base = m_now.detach()
    m_in = base + gain * (m_own - base)
    if gain != 1.0 and cell.cfg.norm_memory:
        m_in = rms_normalize(m_in, cell.D)
    pred = cell.update(m_in.reshape(-1, Z), flat(x_in))
    loss = mse_rows(pred, m_next.detach().reshape(-1, Z), w)
    return loss, mse_rows(m_own.reshape(-1, Z), base.reshape(-1, Z), w).detach()


def decoder_loss(teacher: Teacher, x, y, dec_pos, m_dec, cfg: SMTConfig):
    """Predictive state: the decoder reads the memories at dec_pos (m_dec (B, P, Z)) and predicts the
    next Tf outputs -> (loss weighted by gamma^k, the first output's loss: what the RNN's readout sees)."""
    Tf, Z = cfg.future, m_dec.shape[-1]
    x_fut, y_fut = future_targets(x, y, dec_pos, Tf)  # (B, P, Tf-1[, F]), (B, P, Tf[, G])
    if cfg.decoder_reads == "known":
        x_fut = hide_unknown(x_fut, cfg.lagged_inputs)
    N = m_dec.shape[0] * m_dec.shape[1]
    raw = teacher.decode(m_dec.reshape(N, Z), x_fut.reshape(N, Tf - 1, *x.shape[2:]))  # (B*P, Tf, output.dim)
    w = cfg.gamma ** torch.arange(Tf, device=x.device, dtype=raw.dtype)
    y_fut = y_fut.reshape(-1, Tf, *y.shape[2:])
    out = teacher.output
    return target_loss(out, raw, y_fut, w.expand(raw.shape[0], Tf)), target_loss(out, raw[:, 0], y_fut[:, 0])


def dynamics_loss(cell: Cell, m_now, m_next, x_in, cfg: SMTConfig, w=None):
    """One step of the cell from every (sampled) encoder memory m_now (B, R, Z) onto m_next. The
    teacher's side gets the gradient coef_dyn_teacher / coef_dyn of the cell's where that is set, none
    without dyn_trains_teacher. w (B, R): the transitions' weights (0: padding; None: all count).
    -> (loss, m_now, m_next as the loss read them)."""
    Z = m_now.shape[-1]
    if not cfg.dyn_trains_teacher:
        m_now, m_next = m_now.detach(), m_next.detach()
    elif cfg.coef_dyn_teacher is not None:
        m_now, m_next = (scale_grad(m, cfg.coef_dyn_teacher / cfg.coef_dyn) for m in (m_now, m_next))
    m_in = m_now.reshape(-1, Z)
    if cfg.input_noise > 0:  # the cell must map a neighbourhood of m_t onto m_{t+1}: errors shrink
        m_in = m_in + cfg.input_noise * torch.randn_like(m_in)
    pred = cell.update(m_in, flat(x_in))  # (B*R, Z)
    return mse_rows(pred, m_next.reshape(-1, Z), w), m_now, m_next


def last_input_loss(last_input_head: nn.Module, m_after, x_in, cfg: SMTConfig, D: int, w=None):
    """Every memory m_t must tell its last input x_t. The teacher reads each token together with the
    previous one (token shift) or through previous-token heads, so nothing else makes it keep x_t;
    without it the cell cannot compute m_{t+1} from (m_t, x_{t+1}) where x_t matters (retrieval: the
    symbol after the marker), and the memories are not Markov (EXPERIMENTS.md 7). With slow tokens the
    probe reads the fast ones only. w (B, R): the transitions' weights (0: padding; None: all count)."""
    Z = m_after.shape[-1]
    probe_in = m_after.reshape(-1, Z)
    if cfg.slow_tokens > 0:
        probe_in = torch.cat([torch.zeros_like(probe_in[:, : cfg.slow_tokens * D]), probe_in[:, cfg.slow_tokens * D:]], dim=1)
    if x_in.is_floating_point():  # real inputs: the probe regresses the last input's features (NaN: missing)
        target = flat(x_in)
        ok = ~torch.isnan(target)
        err = torch.where(ok, upcast(last_input_head(probe_in)) - torch.nan_to_num(target), torch.zeros_like(target))
        wt = ok.to(err.dtype) * (1.0 if w is None else w.reshape(-1, 1).to(err.dtype))
        return (err.pow(2) * wt).sum() / wt.sum().clamp_min(1e-12)
    if w is not None:
        return masked_ce(last_input_head(probe_in), x_in.reshape(-1), w.reshape(-1).to(probe_in.dtype))
    return F.cross_entropy(upcast(last_input_head(probe_in)), x_in.reshape(-1))


def smt_loss(teacher: Teacher, cell: Cell, x, y, cfg: SMTConfig, dec_pos, dyn_pos, unif_idx, last_input_head=None,
             how: Rollout | None = None, own_pos=None, far=None, far_head=None, w_dyn=None, lengths=None):
    """The SMT objective for given sample positions (pure; `SMT.loss` draws the positions).

    dec_pos (B, P) memory positions for the decoder; dyn_pos (B, R) transition starts in 0..T-1, or
    None for all T. With dyn_pos None the encoder computes every memory, M (B, S, Z); with dyn_pos
    only the P + 2R memories the loss reads, M = [M[dec_pos], M[dyn_pos], M[dyn_pos + 1]] (B, Q, Z),
    so its register work is O(Q*K*T) instead of O(S*K*T). unif_idx (U,) indexes the B*Q*K memory
    tokens of that M. last_input_head: a Linear Z -> V (needed when cfg.coef_last_input > 0). how: the
    run's Rollout for the on-policy term's rollout (cfg.coef_onpolicy > 0; None: stepped). own_pos
    (B, R), or (B, T) with dyn_pos None: where each transition's own-state rollout starts (<= its
    position; cfg.own_steps > 0). far: (s, u, ok) from `far_positions` and far_head a `FarHead`
    (cfg.far_samples > 0). Sequences of different lengths: y is -1 past each row's end, `w_dyn` (B, R)
    (or (B, T) with dyn_pos None) weighs each transition (1 inside its row, 0 past its end), unif_idx
    picks memories inside their rows, and `lengths` (B,) stops the on-policy rollout at each end.
    -> (loss, {"loss_<term>": each term unweighted, "dyn_rel", ...})."""
    D = teacher.cfg.d_model
    own = cfg.own_steps > 0
    if own and own_pos is None:
        raise ValueError("smt.own_steps > 0 needs own_pos, where each transition's own rollout starts (SMT.loss draws it)")
    if cfg.far_samples > 0 and (far is None or far_head is None):
        raise ValueError("smt.far_samples > 0 needs the far-future questions and head (SMT draws and builds them)")
    if cfg.coef_last_input > 0 and last_input_head is None:
        raise ValueError("smt.coef_last_input > 0 needs the last-input probe (SMT builds it): pass last_input_head, "
                         "or set smt.coef_last_input=0")
    extra = ([own_pos] if own else []) + ([far[0]] if cfg.far_samples > 0 else [])
    M, m_dec, m_before, m_after, x_in, m_extra = loss_memories(teacher, x, dec_pos, dyn_pos, extra)
    Z = M.shape[-1]

    # each term: (its weight, its value); the metrics log every value unweighted as loss_<name>
    terms = {}
    loss_dec, loss_dec0 = decoder_loss(teacher, x, y, dec_pos, m_dec, cfg)
    terms["dec"] = (cfg.coef_dec, loss_dec)
    loss_dyn, m_now, m_next = dynamics_loss(cell, m_before, m_after, x_in, cfg, w_dyn)
    terms["dyn"] = (cfg.coef_dyn, loss_dyn)
    terms["unif"] = (cfg.coef_unif, uniformity(M.reshape(-1, D)[unif_idx]))  # over sampled memory tokens
    if cfg.coef_last_input > 0:
        terms["last_input"] = (cfg.coef_last_input, last_input_loss(last_input_head, m_after, x_in, cfg, D, w_dyn))
    if cfg.far_samples > 0:
        terms["far"] = (cfg.coef_far, far_question_loss(far_head, m_extra[-1], y, far, teacher.output))
    if cfg.slow_tokens > 0:
        # the slow tokens: their step is penalised, so what they hold stays put and the cell can keep it
        # by leaving them alone (the per-token normalisation no longer couples it to the recent inputs)
        w = cfg.slow_tokens * D
        terms["slow"] = (cfg.coef_slow, mse_rows(m_after.reshape(-1, Z)[:, :w], m_before.reshape(-1, Z)[:, :w], w_dyn))
    metrics = {"loss_dec0": loss_dec0.detach()}
    # followability: the cell's one-step error relative to how far the teacher's memory moves per
    # step. Near 1 the cell has not learned the transitions (DMT cannot help yet); well below 1 the
    # memories are predictable from (m_t, x_{t+1}) and DMT can remove the drift (EXPERIMENTS.md 5).
    with torch.no_grad():
        step = mse_rows(m_now.reshape(-1, Z), m_next.reshape(-1, Z), w_dyn).clamp_min(1e-12)
    metrics["dyn_rel"] = loss_dyn.detach() / step
    if own:
        now_pos = torch.arange(x.shape[1], device=x.device).expand_as(own_pos) if dyn_pos is None else dyn_pos
        loss_own, metrics["own_err"] = own_state_loss(cell, m_extra[0], own_pos, now_pos, m_now, m_next, x, x_in, cfg.own_gain,
                                                      w_dyn)
        terms["own"] = (cfg.coef_dyn, loss_own)
        metrics["own_rel"] = loss_own.detach() / step
    if cfg.coef_onpolicy > 0:
        terms["onpolicy"] = (cfg.coef_onpolicy, onpolicy_loss(teacher, cell, M, x, dyn_pos, x_in, m_next, how, lengths, w_dyn))
    loss = sum(coef * value for coef, value in terms.values())
    metrics.update({f"loss_{name}": value.detach() for name, (_, value) in terms.items()})
    return loss, metrics


class SMT(Method):
    """Trains teacher and cell jointly; the cell's readout and start memory are the teacher's copies."""

    name, config_class, needs_teacher = "smt", SMTConfig, True

    def __init__(self, teacher: Teacher, cell: Cell, cfg: SMTConfig, rollout: Rollout | None = None):
        super().__init__(teacher, cell, cfg, rollout)
        check_compatible(cell.cfg, teacher.cfg)
        # a training-time probe, not part of the teacher or the RNN (not saved with the run)
        last = teacher.cfg.features or teacher.cfg.vocab_size  # the probe tells the last input: its id, or its features
        self.last_input_head = nn.Linear(teacher.cfg.mem_size, last) if cfg.coef_last_input > 0 else None
        self.far_head = FarHead(teacher.cfg.mem_size, teacher.output.dim) if cfg.far_samples > 0 else None
        self.blank_teacher = BlankTeacher()  # says when the teacher has learned nothing

    def trainable(self):
        # the cell's readout head and start memory are copies of the teacher's (see `before_eval`)
        skip = {id(p) for p in self.cell.head.parameters()} | {id(self.cell.m_init)}
        probe = [p for h in (self.last_input_head, self.far_head) if h is not None for p in h.parameters()]
        return list(self.teacher.parameters()) + [p for p in self.cell.parameters() if id(p) not in skip] + probe

    def loss(self, x, y, gen=None, cfg: SMTConfig | None = None, lengths=None):
        """The SMT loss at positions drawn with `gen`, under the run's settings or `cfg` (smt-dmt
        changes smt.coef_dyn_teacher once the teacher has solved the task). With `lengths` (B,)
        every position is drawn inside its row (lengths.py)."""
        B, T = x.shape[:2]
        cfg = self.cfg if cfg is None else cfg
        y = mask_targets(y, lengths)
        dec_pos = sample_positions(y, cfg.future, cfg.dec_samples, gen, lengths)
        dyn_pos, w_dyn = None, None
        if lengths is not None:
            dyn_pos, w_dyn = sample_transitions(lengths.to(x.device), T, cfg.transitions, gen)
        elif cfg.transitions is not None and cfg.transitions < T:
            r = torch.rand(B, T, generator=gen).argsort(dim=1)[:, : cfg.transitions]
            dyn_pos = r.to(x.device)
        Q = T + 1 if dyn_pos is None else (dec_pos.shape[1] + (3 if cfg.own_steps > 0 else 2) * dyn_pos.shape[1]
                                           + cfg.far_samples)  # memories the encoder computes
        if lengths is None:
            n_tok = B * Q * self.teacher.cfg.mem_tokens
            unif_idx = torch.randperm(n_tok, generator=gen)[: cfg.unif_samples].to(x.device)
        else:  # only memories inside their rows (a transition past the end points at memory 0)
            unif_idx = draw_inside(dec_pos <= lengths.to(x.device)[:, None], self.teacher.cfg.mem_tokens, Q, cfg.unif_samples, gen)
        own_pos = None
        if cfg.own_steps > 0:  # each transition's own rollout starts j ~ U{1..k} steps back (at 0 at the latest)
            now = torch.arange(T).expand(B, T) if dyn_pos is None else dyn_pos.cpu()
            j = torch.randint(1, cfg.own_steps + 1, now.shape, generator=gen)
            own_pos = (now - j).clamp_min(0).to(x.device)
        far = far_positions(y, cfg.future, cfg.far_samples, gen) if cfg.far_samples > 0 else None
        return smt_loss(self.teacher, self.cell, x, y, cfg, dec_pos, dyn_pos, unif_idx, self.last_input_head, self.rollout,
                        own_pos, far, self.far_head, w_dyn, lengths)

    def before_eval(self):
        """Before the cell runs alone: give it the teacher's readout and m_empty."""
        adopt_teacher(self.cell, self.teacher)

    def after_eval(self, ev: dict, step: int, budget_used: float = 0.0) -> Decision | None:
        return self.blank_teacher.check(ev, step, budget_used)

    def upgrade_state(self, tensors: dict, version: int) -> dict:
        """Checkpoints before format 5 (memtrain 0.4) have no blank-teacher count: it starts from zero."""
        if version < 5:
            fresh = {k: v for k, v in self.extra_state().items() if k.startswith("blank_teacher.")}
            tensors = {**fresh, **tensors}
        return tensors

    def sequential_steps(self, T: int) -> int:
        return 1  # every transition of every sequence in one pass


class BlankTeacher(nn.Module):
    """Says once when the teacher has learned nothing: its loss is no better than the entropy of the
    targets' marginal (a model that ignores the past), so its memories carry nothing yet and a tiny
    dyn_rel or drift is no success (they are trivially small on a memory that does not depend on the
    input). A teacher gets a fair budget first: it must have learned nothing for `patience`
    evaluations in a row AND a quarter of the run's budget (`min_budget`) must be spent. Teachers sit
    at chance for a while before they leave it (the demo's at T=32 until update ~350 of 3,000, 12%), and
    a warning at update 150 was a false alarm in every demo run. Its count is a buffer: a resumed run
    goes on counting where it stopped."""

    def __init__(self, patience: int = 3, min_budget: float = 0.25):
        super().__init__()
        self.patience, self.min_budget = patience, min_budget
        self.register_buffer("streak", torch.tensor(0))
        self.register_buffer("said", torch.tensor(False))

    def check(self, ev: dict, step: int, budget_used: float = 0.0) -> Decision | None:
        if "teacher_gain" not in ev:
            return None
        self.streak.fill_(0 if teacher_learned(ev) else int(self.streak) + 1)
        if bool(self.said) or int(self.streak) < self.patience or budget_used < self.min_budget:
            return None
        self.said.fill_(True)
        return Decision("warning",
                        (f"the teacher has learned nothing in {int(self.streak)} evaluations ({budget_used:.0%} of the run's "
                         f"budget spent): its held-out loss "
                         f"{ev['teacher_ce']:.3f} nats is no better than ignoring the past (the targets' entropy "
                         f"{ev['target_entropy']:.3f}), so its memories carry nothing yet and a small dyn_rel or "
                         "drift means nothing. Give it more updates or a higher train.lr, and check smt.future "
                         "(docs/guide.md: choosing smt.future)"),
                        {"teacher_ce": ev["teacher_ce"], "target_entropy": ev["target_entropy"]})


@torch.no_grad()
def adopt_teacher(cell: Cell, teacher: Teacher) -> None:
    """The explicit step that gives the RNN its readout and start: copy the teacher decoder into the
    cell's readout head and the teacher's m_empty into the cell's initial memory. For a cell and
    teacher that fit (`check_compatible`, which SMT checks once when it is built)."""
    cell.head.load_state_dict(teacher.decoder.state_dict())
    cell.m_init.copy_(teacher.empty_memory(1)[0])
