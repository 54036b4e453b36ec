"""Text against the authors' code: bits per byte on the KJV at equal wall-clock, with a BPTT row.

Five lanes, each one process on one thread, given the same data and the same training seconds:

- `memtrain`: SMT (the text-cpu preset with the memory-token cell of 2 blocks) for --smt-seconds, then
  DMT (teacher frozen, lr 1e-4) for --dmt-seconds, as RESULTS.md's text section;
- `memtrain-fast`: the same with memtrain's fastest sensible settings (FAST below: fewer transitions
  per sequence in the dynamics loss, so the encoder computes only the memories the loss reads);
- `authors`: their `Teacher`, `RNN`, `forward_smt` and `forward_dmt` (their model.py, imported from
  --authors-src, never copied here) at the same sizes, in a loop that does what their train_smt.py /
  train_dmt.py do (AdamW, betas 0.9/0.95, weight decay 0.01, warm-up then constant, the RNN and
  the teacher clipped at 1 separately, their decoder copied into the RNN's readout after SMT, DMT at
  their 3e-4), on the CPU in float32, for the same seconds;
- `bptt-memtok` and `bptt-lstm`: BPTT from scratch on the same memory-token cell and on torch's fused
  LSTM (hidden 128: [h, c] fill the same 256 numbers), T=128, for --smt-seconds + --dmt-seconds.

Sizes (as benchmarks/smt_throughput.py): memory 4 tokens x 64, teacher encoder depth 2 with 4 heads of
width 16 (x_transformers' attn_dim_head=16 for theirs), decoder depth 1, RNN of 2 blocks, context
Tc=128, future Tf=32, batch 32. Their sequences are Tc+Tf=160 bytes (one transition each), ours 128
(every transition, smt.future=32); their DMT rolls out Td=32 from a teacher memory of 128 bytes, ours
rolls out the whole 128 from the empty memory.

Learning rate: --lr sets the first stage's (SMT, or BPTT) learning rate of every lane alike; `run --lrs
3e-4 1e-3 3e-3` runs the lanes once per rate, one rate after another, so that every side gets the same
sweep at the same budget (a peer's setting for 150k GPU updates is not its best in 20 CPU minutes).
Without --lr each side uses its own default (memtrain's preset 1e-3, the authors' 3e-4). DMT keeps
each side's own rate. The report gives every rate's row and then each side's best.

Every --curve-every training seconds of the first stage each lane is scored again (scoring time is
not training time; memtrain's lanes stop and resume exactly, the authors' loop pauses), so the report
can say how many training seconds each lane needed to reach a given bits per byte (report --target).

Every model is scored on the same 128 held-out windows of 256 bytes (seed 0, from data/kjv/val.npy):
- teacher: the next byte from the teacher's memory of exactly 128 bytes, windows 0..31 positions on;
- RNN after a teacher prompt: the teacher encodes bytes 0..127, the RNN reads 128..255 (teacher-forced)
  predicting each;
- RNN alone: the RNN reads the window from its own empty memory; scored on bytes 128..255 (the same
  targets as after a prompt) and on bytes 1..127.

    memtrain prepare text kjv data/kjv
    git clone https://github.com/akarshkumar0101/smt third_party/smt   # ignored by git
    pip install x-transformers==2.18.5 einops                          # their model.py needs these
    python benchmarks/text_vs_authors.py run --lanes memtrain authors --lrs 3e-4 1e-3 3e-3 --root runs/bench/tva-sweep
    python benchmarks/text_vs_authors.py run --lanes memtrain-fast --lrs 1e-3 3e-3 --root runs/bench/tva-sweep
    python benchmarks/text_vs_authors.py report --root runs/bench/tva-sweep --target 3.5 3.0

Without the authors' code the `authors` lane says how to get it and exits 2; the others run alone.
"""
from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from common import md_table, pyplot, write_results
from smt_throughput import head_width, load_authors

from memtrain.io import atomic_write
from memtrain.presets import preset_config
from memtrain.runs import load_run
from memtrain.training.trainer import train

ROOT = "runs/bench/text_vs_authors"
D, K, HEADS, ENC_DEPTH, RNN_DEPTH, DEC_DEPTH, TC, TF, TD, B = 64, 4, 4, 2, 2, 1, 128, 32, 32, 32
WINDOWS, WINDOW, TEACHER_POSITIONS = 128, 256, 32
LANES = ("memtrain", "memtrain-fast", "authors", "bptt-memtok", "bptt-lstm")
CELL = ["cell.kind=memtok", f"cell.depth={RNN_DEPTH}"]
FAST = ["smt.transitions=16"]  # the fastest sensible setting: 2.8 updates/s against 0.73 (all 128 transitions), 1.9 (32) and 1.7 (32 with teacher.window=64), 45 s probes


def held_out_windows(data: str, n: int = WINDOWS, length: int = WINDOW, seed: int = 0) -> torch.Tensor:
    """(n, length) byte windows at offsets drawn with `seed` from the prepared folder's val.npy."""
    val = np.load(Path(data) / "val.npy", allow_pickle=False)
    if len(val) <= length:
        raise SystemExit(f"{data}/val.npy holds {len(val)} bytes, fewer than a window of {length + 1}")
    starts = np.random.default_rng(seed).integers(0, len(val) - length, n)
    return torch.from_numpy(np.stack([val[s:s + length] for s in starts]).astype(np.int64))


class Adapter:
    """What scoring needs of a model: the teacher's memory of a context and its next-byte logits, the
    RNN's initial memory, step and next-byte logits. Subclasses bind one codebase's modules."""
    has_teacher = True

    def teacher_memory(self, ctx): ...
    def teacher_logits(self, m): ...
    def init(self, n): ...
    def step(self, m, x_t): ...
    def logits(self, m): ...


class MemtrainModel(Adapter):
    def __init__(self, teacher, cell):
        self.teacher, self.cell, self.has_teacher = teacher, cell, teacher is not None

    @classmethod
    def from_run(cls, run_dir: str) -> MemtrainModel:
        _, _, teacher, cell = load_run(run_dir)
        return cls(teacher, cell)

    def teacher_memory(self, ctx):
        return self.teacher.encode(ctx)[:, -1]  # the memory after the whole context

    def teacher_logits(self, m):
        return self.teacher.readout(m)

    def init(self, n):
        return self.cell.init_memory(n)

    def step(self, m, x_t):
        return self.cell.update(m, x_t)

    def logits(self, m):
        return self.cell.readout(m)


class AuthorsModel(Adapter):
    def __init__(self, rnn, teacher):
        self.rnn, self.teacher = rnn, teacher

    def teacher_memory(self, ctx):
        return self.teacher.encode(ctx)

    def teacher_logits(self, m):
        return self.teacher.teacher_readout(m)

    def init(self, n):
        return torch.zeros(n, self.rnn.cfg.mem_size)  # as their encode_with_rnn

    def step(self, m, x_t):
        return self.rnn.rnn_update(m, x_t[:, None])

    def logits(self, m):
        return self.rnn.rnn_readout(m)


def _bits(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy per target, in bits."""
    return F.cross_entropy(logits.double(), y, reduction="none") / math.log(2)


def read(model: Adapter, m: torch.Tensor, w: torch.Tensor, start: int) -> torch.Tensor:
    """Step the RNN from memory m (which has read w[:, :start]) through the rest of w, teacher-forced;
    -> (n, len - start) bits of each w[:, t] predicted from the memory before reading it."""
    out = []
    for t in range(start, w.shape[1]):
        out.append(_bits(model.logits(m), w[:, t]))
        m = model.step(m, w[:, t])
    return torch.stack(out, 1)


@torch.no_grad()
def score(model: Adapter, w: torch.Tensor, prompt: int = TC) -> dict:
    """Bits per byte of the teacher, of the RNN after a teacher-encoded prompt and of the RNN alone."""
    alone = read(model, model.step(model.init(len(w)), w[:, 0]), w, 1)  # targets w[:, 1:]
    out = {"rnn_alone_bits": alone[:, prompt - 1:].mean().item(), "rnn_alone_first_bits": alone[:, :prompt - 1].mean().item()}
    if model.has_teacher:
        out["rnn_prompted_bits"] = read(model, model.teacher_memory(w[:, :prompt]), w, prompt).mean().item()
        n = min(TEACHER_POSITIONS, w.shape[1] - prompt)
        out["teacher_bits"] = torch.cat([_bits(model.teacher_logits(model.teacher_memory(w[:, j:j + prompt])), w[:, j + prompt])
                                         for j in range(n)]).mean().item()
    return out


# --- the lanes -------------------------------------------------------------------------------------------

def checkpoints(seconds: float, every: float | None) -> list[float]:
    """The training seconds at which a stage of `seconds` is scored: every `every` seconds and at the end."""
    if not every or every >= seconds:
        return [seconds]
    n = math.ceil(seconds / every - 1e-9)
    return [min(seconds, every * k) for k in range(1, n + 1)]


def _memtrain_run(settings: list[str], out: Path, a, seconds: float, w, every: float | None = None) -> dict:
    """Train a memtrain run for `seconds`, stopping at each checkpoint to score it (and resuming exactly);
    -> the final updates, seconds and scores, with the curve of every checkpoint's."""
    curve = []
    for limit in checkpoints(seconds, every):
        cfg = preset_config("text-cpu", [*settings, f'task_args={{"path": "{a.data}", "length": {TC}}}', "train.steps=100000000",
                                         f"train.time_limit={limit}", "train.threads=1", f"train.seed={a.seed}", f"out_dir={out}"])
        s = train(cfg, progress=False)
        curve.append({"updates": s["steps"], "train_seconds": s["train_seconds"], **score(MemtrainModel.from_run(str(out)), w)})
    return {**curve[-1], "curve": curve}


def lr_settings(a) -> list[str]:
    return [] if a.lr is None else [f"train.lr={a.lr}"]


def lane_memtrain(a, w, extra: list[str] = ()) -> dict:
    root = lane_dir(a)
    smt = _memtrain_run([*CELL, *extra, *lr_settings(a), "train.eval_every=250"], root / "smt", a, a.smt_seconds, w, a.curve_every)
    dmt = _memtrain_run([*CELL, *extra, "method=dmt", f"init_from={root / 'smt'}", "train.lr=1e-4", "train.warmup=0",
                         "train.eval_every=100"], root / "dmt", a, a.dmt_seconds, w)
    return {"stages": {"smt": smt, "dmt": dmt}, "settings": [*CELL, *extra]}


def lane_bptt(a, w, cell: list[str]) -> dict:
    s = _memtrain_run([*cell, *lr_settings(a), "method=bptt", "train.eval_every=500"], lane_dir(a), a,
                      a.smt_seconds + a.dmt_seconds, w, a.curve_every)
    return {"stages": {"bptt": s}, "settings": cell}


class Windows:
    """Their batches: windows of T+1 bytes at uniform random offsets of the training stream, x the first
    T and y the last T (what their MyDataset.sample_batch returns; their my_datasets package imports
    torchvision and datasets, which this benchmark does not need)."""

    def __init__(self, data: np.ndarray, rng: np.random.Generator):
        self.data, self.rng = data, rng

    def sample_batch(self, batch_size: int, ctx_len: int) -> dict:
        starts = self.rng.integers(0, len(self.data) - ctx_len - 1, batch_size)
        win = torch.from_numpy(np.stack([self.data[s:s + ctx_len + 1] for s in starts]).astype(np.int64))
        return {"x": win[:, :-1], "y": win[:, 1:]}


def timed_loop(update, seconds: float, label: str, probe=None, every: float | None = None) -> dict:
    """Call update(i) until `seconds` of it have passed, and at each checkpoint (checkpoints(seconds,
    every)) call probe() (not timed); -> updates, training seconds and, with a probe, the last probe's
    figures and the curve of all of them."""
    spent, i, said, curve = 0.0, 0, time.perf_counter(), []
    marks = checkpoints(seconds, every) if probe is not None else []
    while spent < seconds:
        t0 = time.perf_counter()
        update(i)
        spent += time.perf_counter() - t0
        i += 1
        if marks and spent >= marks[0]:
            while marks and spent >= marks[0]:  # an update longer than `every` passes several marks at once
                marks.pop(0)
            curve.append({"updates": i, "train_seconds": spent, **probe()})
        if time.perf_counter() - said > 60:
            print(f"[authors {label}] {i} updates, {spent:.0f} s", flush=True)
            said = time.perf_counter()
    out = {"updates": i, "train_seconds": spent}
    return {**curve[-1], **out, "curve": curve} if curve else out


def authors_updates(am, rnn, teacher, ds, forward, cfg, params, clip_groups, warmup: int, lr: float = 3e-4):
    """One update of their train_smt.py / train_dmt.py step: warm-up then constant lr, AdamW, clip."""
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-2, betas=(0.9, 0.95))

    def update(i):
        for g in opt.param_groups:
            g["lr"] = lr * min(1.0, i / warmup) if warmup else lr
        batch = ds.sample_batch(batch_size=B, ctx_len=cfg.T)
        opt.zero_grad(set_to_none=True)
        forward(rnn, teacher, batch, cfg)["loss"].backward()
        for group in clip_groups:
            torch.nn.utils.clip_grad_norm_(group, 1.0)
        opt.step()

    return update


def lane_authors(a, w) -> dict:
    am = load_authors(a.authors_src)
    if am is None:
        raise SystemExit(2)
    np.random.seed(a.seed)
    torch.manual_seed(a.seed)
    with head_width(am, D // HEADS):
        teacher = am.Teacher(am.TeacherConfig(vocab_size=256, mem_size=K * D, mem_tokens=K, d_model=D, encoder_depth=ENC_DEPTH,
                                              decoder_depth=DEC_DEPTH, n_heads=HEADS))
        rnn = am.RNN(am.RNNConfig(vocab_size=256, mem_size=K * D, mem_tokens=K, d_model=D, rnn_depth=RNN_DEPTH,
                                  decoder_depth=DEC_DEPTH, n_heads=HEADS))
    ds = Windows(np.load(Path(a.data) / "train.npy", allow_pickle=False), np.random.default_rng(a.seed))
    rnn.train(), teacher.train()
    scfg = am.SMTConfig(T=TC + TF, Tc=TC, Tf=TF)
    params = [*rnn.parameters(), *teacher.parameters()]

    def probe() -> dict:
        """Score as train_smt.py would save it now (its decoder in the RNN's readout), then carry on
        training with the RNN's own readout as it was."""
        saved = {k: v.clone() for k, v in rnn.state_dict().items()}
        rnn.decoder.load_state_dict(teacher.decoder.state_dict())  # as train_smt.py does when it saves
        rnn.to_logits.load_state_dict(teacher.to_logits.state_dict())
        rnn.eval(), teacher.eval()
        out = score(AuthorsModel(rnn, teacher), w)
        rnn.load_state_dict(saved)
        rnn.train(), teacher.train()
        return out

    smt = timed_loop(authors_updates(am, rnn, teacher, ds, am.forward_smt, scfg, params,
                                     [list(rnn.parameters()), list(teacher.parameters())], a.authors_warmup,
                                     lr=3e-4 if a.lr is None else a.lr), a.smt_seconds, "smt", probe, a.curve_every)
    rnn.decoder.load_state_dict(teacher.decoder.state_dict())  # as train_smt.py does when it saves
    rnn.to_logits.load_state_dict(teacher.to_logits.state_dict())
    rnn.train()
    # their DMT never updates the teacher (hot_teacher_*=False) but leaves it requiring gradients, so
    # autograd records its 32 encodes per update; switching that off changes no number, only the time
    teacher.requires_grad_(False)
    dcfg = am.DMTConfig(T=TC + TD + TF, Td=TD, Tc=TC, Tf=TF)
    dmt = timed_loop(authors_updates(am, rnn, teacher, ds, am.forward_dmt, dcfg, list(rnn.parameters()),
                                     [list(rnn.parameters())], 15), a.dmt_seconds, "dmt")  # their 1% of 1,500
    rnn.eval()
    dmt.update(score(AuthorsModel(rnn, teacher), w))
    return {"stages": {"smt": smt, "dmt": dmt}, "authors_code": str(Path(a.authors_src) / "model.py")}


def lane_id(name: str, lr: float | None) -> str:
    """A lane's name with its learning rate: the name of its result file and folder under --root."""
    return name if lr is None else f"{name}-lr{lr:g}"


def lane_dir(a) -> Path:
    return Path(a.root) / lane_id(a.lane, a.lr)


def lane(a) -> None:
    torch.set_num_threads(1)
    w = held_out_windows(a.data)
    if a.lane == "memtrain":
        result = lane_memtrain(a, w)
    elif a.lane == "memtrain-fast":
        result = lane_memtrain(a, w, FAST)
    elif a.lane == "authors":
        sys.path.insert(0, a.authors_src)
        result = lane_authors(a, w)
    else:
        result = lane_bptt(a, w, CELL if a.lane == "bptt-memtok" else ["cell.kind=torch-lstm"])
    result.update({"lane": a.lane, "lr": a.lr, "seed": a.seed, "smt_seconds": a.smt_seconds, "dmt_seconds": a.dmt_seconds})
    out = Path(a.root) / f"{lane_id(a.lane, a.lr)}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, (json.dumps(result, indent=1) + "\n").encode())
    print(json.dumps(result, indent=1))


def run(a) -> int:
    """For each learning rate in turn, start each lane as its own process, all at once, and wait for them."""
    common = ["--root", a.root, "--data", a.data, "--authors-src", a.authors_src, "--seed", str(a.seed),
              "--smt-seconds", str(a.smt_seconds), "--dmt-seconds", str(a.dmt_seconds), "--authors-warmup", str(a.authors_warmup),
              "--curve-every", str(a.curve_every or 0)]
    worst = 0
    for lr in a.lrs or [None]:
        rate = [] if lr is None else ["--lr", repr(lr)]
        procs = {lane_id(n, lr): subprocess.Popen([sys.executable, __file__, "lane", n, *common, *rate]) for n in a.lanes}
        codes = {name: p.wait() for name, p in procs.items()}
        print({name: ("ok" if c == 0 else f"exit {c}") for name, c in codes.items()}, flush=True)
        worst = max(worst, *codes.values())
    return worst


# --- the report ------------------------------------------------------------------------------------------

LABELS = {"memtrain": "memtrain SMT -> DMT", "memtrain-fast": "memtrain SMT -> DMT, fast settings",
          "authors": "authors' code SMT -> DMT", "bptt-memtok": "memtrain BPTT, same cell", "bptt-lstm": "BPTT, torch's fused LSTM"}
SIDES = {"memtrain": "memtrain", "memtrain-fast": "memtrain", "authors": "authors' code", "bptt-memtok": "BPTT, same cell",
         "bptt-lstm": "BPTT, fused LSTM"}
SCORES = ("teacher_bits", "rnn_prompted_bits", "rnn_alone_bits")
COLOURS = {"memtrain": "tab:blue", "memtrain-fast": "tab:purple", "authors": "tab:green", "bptt-memtok": "tab:orange",
           "bptt-lstm": "tab:red"}
STYLES = ("-", "--", ":", "-.")


def seconds_to(r: dict, key: str, target: float) -> float | None:
    """Training seconds (all stages, in order) at the first scored point where `key` <= target, or None."""
    before = 0.0
    for s in r["stages"].values():
        for point in s.get("curve", [s]):
            if point.get(key) is not None and point[key] <= target:
                return before + point["train_seconds"]
        before += s["train_seconds"]
    return None


def _fmt_lr(lr) -> str:
    return "own default" if lr is None else f"{lr:g}"


def report(a) -> None:
    """Every finished lane under each --root (one root per seed or sweep) in one table, then each
    side's best of its learning rates, and the training seconds to reach --target bits per byte."""
    found = []
    for root in a.root:
        for f in sorted(Path(root).glob("*.json")) if Path(root).is_dir() else []:
            r = json.loads(f.read_text())
            if r.get("lane") in LANES:
                found.append(r)
    if not found:
        raise SystemExit(f"no finished lanes under {', '.join(a.root)}")
    found.sort(key=lambda r: (LANES.index(r["lane"]), r["seed"], -1 if r.get("lr") is None else r["lr"]))
    rows = [[LABELS[r["lane"]], _fmt_lr(r.get("lr")), r["seed"], stage, s["updates"], round(s["train_seconds"]),
             s.get("teacher_bits"), s.get("rnn_prompted_bits"), s["rnn_alone_bits"], s["rnn_alone_first_bits"]]
            for r in found for stage, s in r["stages"].items()]
    table = md_table(["lane", "lr", "seed", "after", "updates", "training s", "teacher", "RNN after a teacher prompt",
                      "RNN alone (bytes 128-255)", "RNN alone (bytes 1-127)"], rows)
    best = []
    for side in dict.fromkeys(SIDES[r["lane"]] for r in found):
        mine = [r for r in found if SIDES[r["lane"]] == side]
        cells = [side]
        for key in SCORES:
            have = [(list(r["stages"].values())[-1].get(key), r) for r in mine]
            have = [(v, r) for v, r in have if v is not None]
            if not have:
                cells.append(None)
                continue
            v, r = min(have, key=lambda x: x[0])
            cells.append(f"{v:.3f} ({'fast, ' if r['lane'] == 'memtrain-fast' else ''}lr {_fmt_lr(r.get('lr'))})")
        for target in a.target:
            for key in SCORES:
                times = [t for t in (seconds_to(r, key, target) for r in mine) if t is not None]
                cells.append(f"{min(times):.0f}" if times else "not reached")
        best.append(cells)
    heads = [f"s to {what} <= {target:g}" for target in a.target for what in ("teacher", "prompted RNN", "RNN alone")]
    table += "\n\nEach side's best over its learning rates (and settings), at the end of training:\n\n" + md_table(
        ["side", "teacher", "RNN after a teacher prompt", "RNN alone (bytes 128-255)", *heads], best)
    table += (f"\n\nBits per byte on the same {WINDOWS} held-out KJV windows of {WINDOW} bytes; one thread per lane, "
              "lanes run two at a time; training seconds exclude scoring. 's to ... <=' is the training time (all stages) "
              "at the first scored point at or under the target, the best over the side's runs.")
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6), sharey=True)
    low = 8.0
    for ax, key, title in zip(axes, SCORES, ("teacher", "RNN after a teacher prompt", "RNN alone")):
        for r in found:
            xs, ys, before = [], [], 0.0
            for s in r["stages"].values():
                for point in s.get("curve", [s]):
                    if point.get(key) is not None:
                        xs.append((before + point["train_seconds"]) / 60)
                        ys.append(point[key])
                before += s["train_seconds"]
            if xs:  # a colour per lane, a line style per learning rate
                low = min(low, *ys)
                lrs = sorted({x.get("lr") or 0 for x in found if x["lane"] == r["lane"]})
                ax.plot(xs, ys, marker=".", color=COLOURS[r["lane"]], linestyle=STYLES[lrs.index(r.get("lr") or 0) % len(STYLES)],
                        label=f"{LABELS[r['lane']]}, lr {_fmt_lr(r.get('lr'))}")
        for seconds in {r["smt_seconds"] for r in found if "smt" in r["stages"] and "smt_seconds" in r}:
            ax.axvline(seconds / 60, color="0.6", linewidth=0.8, linestyle=":")  # SMT -> DMT
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("training minutes")
    axes[0].set_ylim(low - 0.1, 8)  # (shared; an RNN that has lost its way is far above 8, the scale is for the rest)
    axes[0].set_ylabel("bits per byte (held out)")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, -0.02), ncol=3, fontsize=7)
    write_results("text_vs_authors", {"lanes": found, "target": a.target}, table, fig, a.results)
    print(table)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r, one = sub.add_parser("run"), sub.add_parser("lane")
    r.add_argument("--lanes", nargs="+", choices=LANES, default=["memtrain", "authors"])
    one.add_argument("lane", choices=LANES)
    for s in (r, one):
        s.add_argument("--data", default="data/kjv", help="a folder written by `memtrain prepare text kjv`")
        s.add_argument("--authors-src", default="third_party/smt/src", help="folder holding the authors' model.py")
        s.add_argument("--smt-seconds", type=float, default=1200)
        s.add_argument("--dmt-seconds", type=float, default=300)
        s.add_argument("--authors-warmup", type=int, default=50, help="their warm-up updates for SMT (ours: train.warmup=50)")
        s.add_argument("--seed", type=int, default=0)
        s.add_argument("--curve-every", type=float, default=150, help="score the first stage every this many training "
                       "seconds (0: only at the end)")
    r.add_argument("--lrs", type=float, nargs="+", default=None, help="run every lane once per learning rate, in turn")
    one.add_argument("--lr", type=float, default=None, help="the first stage's learning rate (default: each side's own)")
    for s in (r, one):
        s.add_argument("--root", default=ROOT)
    rep = sub.add_parser("report")
    rep.add_argument("--root", nargs="+", default=[ROOT], help="one folder per seed")
    rep.add_argument("--results", default=None)
    rep.add_argument("--target", type=float, nargs="+", default=[3.0], help="bits per byte for the time-to-target columns")
    a = p.parse_args(argv)
    if a.cmd == "run":
        return run(a)
    lane(a) if a.cmd == "lane" else report(a)
    return 0


if __name__ == "__main__":
    sys.exit(main())
