"""Retrieval accuracy of the RNN running alone against sequence length, every method given the same
seconds of training: SMT -> DMT (method=smt-dmt, handing over on measured criteria) against BPTT on
the same cell, on torch's fused LSTM and GRU and on ParaRNN's cells (the paper's Figure on length: BPTT degrades with
length, SMT should not). `--task copy` (stack, kv, ...) runs another synthetic task the same way;
its runs' folders start with the task's name and the report gives each task its own panel.

Each (method, length, seed) is one ordinary run with `train.time_limit`, kept under --root and
skipped when finished, so a sweep can be split across processes (one lane per core) and resumed.
`report` reads every finished run under --root (method, cell, T and seed from its run.json): final
RNN-alone accuracy, the training seconds and updates at which it first reached 0.95, and for
SMT -> DMT the handover step. The equal-updates view comes from the same runs' curves.

    python benchmarks/length_sweep.py run --methods smt-dmt --lengths 64 128 256 --seconds 1800 smt.transitions=32
    python benchmarks/length_sweep.py run --methods bptt-lstm bptt-mlp --lengths 64 128 256 --seconds 1800
    python benchmarks/length_sweep.py run --task kv --methods smt-dmt bptt-lstm --lengths 128 --seconds 1200 task_args.n_keys=64
    python benchmarks/length_sweep.py report
    python benchmarks/length_sweep.py report --root runs/ec --lines "SMT->DMT=smt-dmt-T*-far8own8" "LSTM lr 3e-3=bptt-lstm-T*-lr3e-3"

`--lines NAME=GLOB ...` also draws the claim at a glance (length_claim.png): RNN-alone accuracy against
T, one line per NAME (the runs whose folder names match GLOB, any seed), at equal training seconds (each
run's end) and at equal updates (every run of a length read at the fewest updates any line's run made
there). Lines join the seeds' mean; each seed is a dot.

`generalise` reads finished runs at lengths they were never trained at: each run's RNN alone (no
teacher: `memtrain eval --rnn-only`) on held-out sequences of each length, one line per NAME (run
folders matching GLOB, seeds as dots). Each run's figures are kept in its folder (generalise.json)
and reused:

    python benchmarks/length_sweep.py generalise --root runs/cur1024 --lengths 256 1024 4096 8192 --lines "SMT->DMT=smt-dmt-T256-s*" "GRU=bptt-gru-T256-s*"

A length curriculum, offered to every method alike: `--curriculum 32` trains each method at T=32
first (at most --stage1-seconds, kept once per method and seed), then BPTT on the same cell at each
target length from there, within the same --seconds in all:

    python benchmarks/length_sweep.py run --methods smt-dmt bptt-lstm --lengths 256 --seconds 1200 --curriculum 32 --eval-every 50 --tag=-cur32
"""
from __future__ import annotations

import argparse
import json
from fnmatch import fnmatch
from pathlib import Path

import torch
from common import RESULTS, grid, legend_below, md_table, pyplot, styles, write_results

from memtrain.demo import first_reaching
from memtrain.io import atomic_write
from memtrain.presets import preset_config
from memtrain.runs import evaluate_run
from memtrain.training.trainer import train

ROOT = "runs/bench/length_sweep"
# method label -> settings on top of the retrieval-smt preset
METHODS = {
    "smt-dmt": ["method=smt-dmt"],
    "bptt-mlp": ["method=bptt"],
    "bptt-lstm": ["method=bptt", "cell.kind=torch-lstm"],
    "bptt-gru": ["method=bptt", "cell.kind=torch-gru"],
    "bptt-para-gru": ["method=bptt", "cell.kind=para-gru"],  # ParaRNN's cells (BPTT gives the Newton solver's gradients)
    "bptt-para-lstm": ["method=bptt", "cell.kind=para-lstm"],
}
TARGET = 0.95


def _train(settings: list[str], out: Path, a, seconds: float, length: int, seed: int) -> dict:
    settings = [*settings, f"task={a.task}", f'task_args={{"length": {length}}}', f"train.seed={seed}", f"train.threads={a.threads}",
                f"train.eval_every={a.eval_every}", f"train.eval_batch={a.eval_batch}", "train.steps=100000000",
                f"train.time_limit={seconds}", f"out_dir={out}", *a.overrides]
    s = train(preset_config("retrieval-smt", settings), progress=False)
    if "stopped" in s:  # SIGINT / SIGTERM: the run saved a checkpoint; the sweep stops with it
        print(f"{out.name}: stopped by {s['stopped']} after {s['steps']} updates, {s['train_seconds']:.0f} s; "
              "the same command resumes it", flush=True)
        raise SystemExit(0)
    print(f"{out.name}: RNN alone {s['rnn_acc']:.3f} after {s['steps']} updates, {s['train_seconds']:.0f} s", flush=True)
    return s


def stage_one(method: str, a, seed: int) -> tuple[Path, dict]:
    """--curriculum L0: the method at the short length L0 for at most --stage1-seconds (SMT -> DMT
    with the demo's settings: it may end itself once the RNN alone reaches 0.99). Kept under --root
    without the tag and shared by every target length and stage-2 setting of this method and seed
    (the settings given after the options apply to it too: another set needs another --root)."""
    L0 = a.curriculum
    out = Path(a.root) / f"{_task_prefix(a)}{method}-T{L0}-s{seed}-stage1"
    extra = [f"smt.future={min(32, L0)}", "handover.dmt_target=0.99"] if method == "smt-dmt" else []
    return out, _train([*METHODS[method], *extra], out, a, a.stage1_seconds, L0, seed)


def _task_prefix(a) -> str:
    """Run folders of tasks other than retrieval start with the task's name (retrieval's keep 0.3's names)."""
    return "" if a.task == "retrieval" else f"{a.task}-"


def run(a) -> None:
    """Each (method, length, seed) for --seconds of training. With --curriculum L0 the seconds are
    shared by two stages: the method at L0 (stage_one), then BPTT on the same cell at the full
    length from it (for SMT -> DMT that is the paper's proposed BPTT post-training) for the rest."""
    torch.set_num_threads(a.threads)
    for method in a.methods:
        for seed in a.seeds:
            first = stage_one(method, a, seed) if a.curriculum else None
            for length in a.lengths:
                out = Path(a.root) / f"{_task_prefix(a)}{method}-T{length}-s{seed}{a.tag}"
                if first is None:
                    _train(METHODS[method], out, a, a.seconds, length, seed)
                    continue
                (d1, s1), cell = first, METHODS[method][1:] if method != "smt-dmt" else []
                _train(["method=bptt", *cell, f"init_from={d1}", f"train.lr={a.stage2_lr}", "train.warmup=0"], out, a,
                       a.seconds - s1["train_seconds"], length, seed)


def summarise(d: Path) -> dict:
    """One run's row. A curriculum run (init_from a '-stage1' run) counts both stages: its method
    reads 'smt-dmt@32 -> bptt', its seconds and updates include stage 1's, and its curve (of the full
    length) is shifted by them."""
    meta = json.loads((d / "run.json").read_text())
    cfg, summary = meta["config"], meta["summary"]
    rows = [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()]
    method, s0, u0, lr = cfg["method"], 0.0, 0, cfg["train"]["lr"]
    if cfg.get("init_from") and Path(cfg["init_from"]).name.endswith("-stage1"):
        first = json.loads((Path(cfg["init_from"]) / "run.json").read_text())
        method = f"{first['config']['method']}@{first['config']['task_args']['length']} -> {method}"
        s0, u0, lr = first["summary"]["train_seconds"], first["summary"]["steps"], f"{first['config']['train']['lr']:g} / {lr:g}"
    rows = [{**r, "step": r["step"] + u0, **({"time": r["time"] + s0} if "time" in r else {})} for r in rows]
    hit = first_reaching(rows, TARGET)  # [seconds, updates] or None
    return {"dir": str(d), "task": cfg.get("task", "retrieval"), "method": method, "cell": cfg["cell"]["kind"], "length": cfg["task_args"]["length"],
            "seed": cfg["train"]["seed"], "lr": lr, "rnn_acc": summary["rnn_acc"],
            "teacher_acc": summary.get("teacher_acc"), "seconds": summary["train_seconds"] + s0, "updates": summary["steps"] + u0,
            "handover_step": summary.get("handover_step"),
            "to_target_s": hit[0] if hit else None, "to_target_updates": hit[1] if hit else None,
            "curve": [(r["step"], r["time"], r["rnn_acc"]) for r in rows if "rnn_acc" in r and "event" not in r],
            **contraction_at_end(rows, cfg["task_args"]["length"])}


def contraction_at_end(rows: list[dict], T: int) -> dict:
    """The last evaluation's k-step errors from teacher memories at k = 64 and T and its drift at T
    (methods/evaluate.py; None for runs without a teacher or from before 0.6)."""
    last = next((r for r in reversed(rows) if "rnn_acc" in r and "event" not in r), {})
    return {"kstep64": last.get("kstep@64"), "kstepT": last.get(f"kstep@{T}"), "drift_end": last.get(f"drift@{T}")}


def recorded(results: str | None, present: set) -> list[dict]:
    """Runs in the results file written before whose folders are no longer under --root (run on
    another checkout or cleaned up): their summaries and curves are kept, so the table grows."""
    path = Path(results or RESULTS) / "length_sweep.json"
    if not path.is_file():
        return []
    runs = [r for r in json.loads(path.read_text()).get("runs", []) if Path(r["dir"]).name not in present]
    return [{"task": "retrieval", **r} for r in runs]  # rows recorded before runs carried their task


def at_updates(r: dict, n: int) -> float | None:
    """RNN-alone accuracy at the last evaluation at or before update n (the equal-updates view)."""
    seen = [acc for step, _, acc in r["curve"] if step <= n]
    return seen[-1] if seen else None


def report(a) -> None:
    found = [summarise(f.parent) for f in sorted(Path(a.root).glob("*/run.json")) if not f.parent.name.endswith("-stage1")]
    found += recorded(a.results, {Path(r["dir"]).name for r in found})
    if not found:
        raise SystemExit(f"no finished runs under {a.root}")
    found.sort(key=lambda r: (r["task"] != "retrieval", r["task"], r["length"], r["method"], r["cell"], str(r["lr"]), r["seed"]))
    panels = list(dict.fromkeys((r["task"], r["length"]) for r in found))  # in the table's order
    fewest = {p: min(r["updates"] for r in found if (r["task"], r["length"]) == p) for p in panels}
    fmt = lambda v, spec: "-" if v is None else format(v, spec)
    table = md_table(["run", "task", "T", "method", "cell", "lr", "seed", "RNN alone", "teacher", "seconds", "updates", "handover at",
                      f"to {TARGET}: s / updates", "RNN alone at equal updates", "k-step error at 64 / T", "drift at T"],
                     [[Path(r["dir"]).name, r["task"], r["length"], r["method"], r["cell"], r["lr"], r["seed"], f"{r['rnn_acc']:.3f}", fmt(r["teacher_acc"], ".3f"),
                       round(r["seconds"]), r["updates"], fmt(r["handover_step"], "d"),
                       "-" if r["to_target_s"] is None else f"{r['to_target_s']:.0f} / {r['to_target_updates']}",
                       f"{fmt(at_updates(r, fewest[r['task'], r['length']]), '.3f')} at {fewest[r['task'], r['length']]}",
                       f"{fmt(r.get('kstep64'), '.3f')} / {fmt(r.get('kstepT'), '.3f')}", fmt(r.get("drift_end"), ".3f")]
                      for r in found])
    table += ("\n\nAccuracy of the RNN running alone from its empty memory on the held-out batch (retrieval: "
              "vocabulary 9, chance 0.125); seconds are training seconds (evaluations excluded), one thread each. The last "
              "column reads every run at the same number of updates per task and length (the fewest any run there made), "
              "from its own curve. The last two columns (runs with a teacher, 0.6 on): the cell started on the teacher's "
              "memory and run alone 64 and T steps, against the teacher's memory there, and the RNN alone's drift at T "
              "(MSE per memory value; unrelated memories differ by about 2).")
    write_results("length_sweep", {"runs": found}, table, draw({"runs": found}), a.results)
    print(table)
    if getattr(a, "lines", None):
        claim = claim_lines(found, a.lines)
        write_results("length_claim", claim, claim_table(claim), draw_claim(claim), a.results)
        print(claim_table(claim))


def pick_lines(specs: list[str], runs: list, folder) -> dict:
    """--lines NAME=GLOB ...: NAME -> the runs whose folder name (folder(run)) matches GLOB."""
    chosen = {}
    for spec in specs:
        name, sep, pattern = spec.partition("=")
        if not sep or not name or not pattern:
            raise SystemExit(f"--lines wants NAME=GLOB, got {spec!r}")
        chosen[name] = [r for r in runs if fnmatch(folder(r), pattern)]
        if not chosen[name]:
            raise SystemExit(f"--lines {spec!r}: no finished run's folder matches {pattern!r}")
    return chosen


def claim_lines(found: list[dict], lines: list[str]) -> dict:
    """--lines NAME=GLOB: per line and length, each matching run's RNN-alone accuracy at its end (equal
    seconds) and at the fewest updates any chosen run of that length made (equal updates)."""
    chosen = pick_lines(lines, found, lambda r: Path(r["dir"]).name)
    lengths = sorted({r["length"] for runs in chosen.values() for r in runs})
    fewest = {T: min(r["updates"] for runs in chosen.values() for r in runs if r["length"] == T) for T in lengths}
    out = {"fewest_updates": fewest, "lines": {}}
    for name, runs in chosen.items():
        out["lines"][name] = [{"dir": r["dir"], "T": r["length"], "seed": r["seed"], "seconds": r["seconds"], "updates": r["updates"],
                               "at_end": r["rnn_acc"], "at_equal_updates": at_updates(r, fewest[r["length"]])} for r in runs]
    return out


def claim_table(claim: dict) -> str:
    rows = []
    for name, runs in claim["lines"].items():
        for T in sorted({r["T"] for r in runs}):
            here = sorted((r for r in runs if r["T"] == T), key=lambda r: r["seed"])
            fmt = lambda k: " / ".join("-" if r[k] is None else f"{r[k]:.3f}" for r in here)
            rows.append([name, T, " ".join(str(r["seed"]) for r in here), round(max(r["seconds"] for r in here)), fmt("at_end"),
                         claim["fewest_updates"][T], fmt("at_equal_updates")])
    return (md_table(["line", "T", "seeds", "seconds (at most)", "RNN alone at the end", "equal updates", "RNN alone there"], rows)
            + "\n\nPer seed, in the seeds' order. Equal updates: every run of that length read at its last evaluation at "
              "or before the fewest updates any chosen run of that length made.")


def draw_claim(claim: dict):
    """Two panels: RNN-alone accuracy against T at equal seconds and at equal updates."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9.0, 3.6), sharey=True)
    names = list(claim["lines"])
    for (name, runs), style in zip(claim["lines"].items(), styles(len(names))):
        for ax, key in zip(axes, ("at_end", "at_equal_updates")):
            pts = [(r["T"], r[key]) for r in runs if r[key] is not None]
            Ts = sorted({T for T, _ in pts})
            mean = [sum(v for t, v in pts if t == T) / sum(1 for t, _ in pts if t == T) for T in Ts]
            ax.plot(Ts, mean, marker="o", lw=1.4, label=name, **style)
            ax.scatter([T for T, _ in pts], [v for _, v in pts], s=12, color=style["color"], alpha=0.5)
    for ax, title in zip(axes, ("equal training seconds (each run's end)", "equal updates")):
        ax.axhline(0.125, color="grey", lw=0.8, ls=":")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("sequence length T")
        ax.set_title(title, fontsize=9)
        ax.set_ylim(0, 1.05)
    axes[0].set_ylabel("RNN alone accuracy (retrieval)")
    legend_below(fig, list(axes), ncol=min(len(names), 4), fontsize=8)  # below the panels: it covers no point
    return fig


def draw(data: dict):
    """One panel per (task, length), four a row, in the table's order; each (method, cell, lr) has
    one colour in every panel and one entry in the legend below them. (Claim data, from --lines: its
    two panels, draw_claim; generalise's data: draw_generalise.)"""
    if "lines" in data:
        return draw_generalise(data) if "lengths" in data else draw_claim(data)
    runs = [{"task": "retrieval", **r} for r in data["runs"]]
    panels = list(dict.fromkeys((r["task"], r["length"]) for r in runs))
    labels = list(dict.fromkeys(f"{r['method']} {r['cell']} lr {r['lr']}" for r in runs))
    fig, axes = grid(len(panels), size=(4.0, 3.0))
    style = dict(zip(labels, styles(len(labels))))
    for ax, (task, T) in zip(axes, panels):
        for r in (r for r in runs if (r["task"], r["length"]) == (task, T)):
            label = f"{r['method']} {r['cell']} lr {r['lr']}"
            ax.plot([c[1] for c in r["curve"]], [c[2] for c in r["curve"]], lw=1.2, label=label, **style[label])
        if task == "retrieval":
            ax.axhline(0.125, color="grey", lw=0.8, ls=":")
        ax.set_xlabel("training seconds", fontsize=8)
        ax.set_ylabel("RNN alone accuracy", fontsize=8)
        ax.set_ylim(0, 1.05)
        ax.set_title(f"{task}, T={T}", fontsize=9)
    legend_below(fig, axes, ncol=3, fontsize=8)
    return fig


def generalise(a) -> None:
    """Each matching run's RNN alone at each of --lengths (held-out draws of --batch sequences, the
    same seed for every run), cached per run and length in the run's generalise.json."""
    lines = pick_lines(a.lines, sorted(f.parent for f in Path(a.root).glob("*/run.json")), lambda d: d.name)
    out = {"lengths": a.lengths, "batch": a.batch, "lines": {}}
    for name, runs in lines.items():
        out["lines"][name] = [read_at_lengths(d, a.lengths, a.batch) for d in runs]
    rows = [[name, Path(r["dir"]).name, r["trained_T"], r["seed"], round(r["seconds"]), *(f"{r['acc'][str(L)]:.3f}" for L in a.lengths)]
            for name, rs in out["lines"].items() for r in rs]
    table = (md_table(["line", "run", "trained at T", "seed", "training s", *(f"T={L}" for L in a.lengths)], rows)
             + f"\n\nRNN-alone retrieval accuracy on {a.batch} held-out sequences per length (chance 0.125), no training "
               "at any length but the run's own; the needle lies in the first half, so at T it is asked T/2 to T-2 steps "
               "after it was read.")
    write_results("length_generalise", out, table, draw_generalise(out), a.results)
    print(table)


def read_at_lengths(d: Path, lengths: list[int], batch: int) -> dict:
    meta = json.loads((d / "run.json").read_text())
    cache_file = d / "generalise.json"
    cache = json.loads(cache_file.read_text()) if cache_file.is_file() else {}
    key = lambda L: f"{L}@{batch}"
    todo = [L for L in lengths if key(L) not in cache]
    if todo:
        for row in evaluate_run(str(d), lengths=todo, batch_size=batch, rnn_only=True):
            cache[key(row["length"])] = row["rnn_acc"]
        atomic_write(cache_file, json.dumps(cache, indent=1).encode())
    return {"dir": str(d), "trained_T": meta["config"]["task_args"]["length"], "seed": meta["config"]["train"]["seed"],
            "seconds": meta["summary"]["train_seconds"], "acc": {str(L): cache[key(L)] for L in lengths}}


def draw_generalise(data: dict):
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.2, 3.6))
    Ls = data["lengths"]
    for (name, runs), style in zip(data["lines"].items(), styles(len(data["lines"]))):
        mean = [sum(r["acc"][str(L)] for r in runs) / len(runs) for L in Ls]
        ax.plot(Ls, mean, marker="o", lw=1.4, label=f"{name} ({len(runs)} seeds)", **style)
        for r in runs:
            ax.scatter(Ls, [r["acc"][str(L)] for L in Ls], s=12, color=style["color"], alpha=0.5)
    trained = sorted({r["trained_T"] for runs in data["lines"].values() for r in runs})
    for T in trained:
        ax.axvline(T, color="grey", lw=0.8, ls="--")
    ax.axhline(0.125, color="grey", lw=0.8, ls=":")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("evaluation length T (dashed: the training length)")
    ax.set_ylabel("RNN alone accuracy (retrieval)")
    ax.set_ylim(0, 1.05)
    legend_below(fig, [ax], ncol=2, fontsize=8)
    return fig


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--methods", nargs="+", choices=sorted(METHODS), default=["smt-dmt", "bptt-lstm"])
    r.add_argument("--lengths", nargs="+", type=int, default=[64, 128, 256])
    r.add_argument("--task", default="retrieval", help="any synthetic task (copy, stack, kv, ...); its default settings but the length")
    r.add_argument("--seeds", nargs="+", type=int, default=[0])
    r.add_argument("--seconds", type=float, default=1800)
    r.add_argument("--eval-every", type=int, default=100)
    r.add_argument("--eval-batch", type=int, default=128)
    r.add_argument("--threads", type=int, default=1)
    r.add_argument("--tag", default="", help="appended to each run's folder name (e.g. -lr3e-3 with train.lr=3e-3)")
    r.add_argument("--curriculum", type=int, default=None, metavar="L0",
                   help="two stages within --seconds: the method at length L0, then BPTT on its cell at each length")
    r.add_argument("--stage1-seconds", type=float, default=400, help="with --curriculum: at most this long at L0")
    r.add_argument("--stage2-lr", type=float, default=1e-4, help="with --curriculum: the BPTT stage's learning rate")
    r.add_argument("overrides", nargs="*", help="key=value settings on top of the retrieval-smt preset")
    rep = sub.add_parser("report")
    rep.add_argument("--lines", nargs="+", default=[], metavar="NAME=GLOB",
                     help="also draw length_claim.png: accuracy against T, one line per NAME (run folders matching GLOB)")
    g = sub.add_parser("generalise", help="finished runs' RNN alone at lengths they were not trained at")
    g.add_argument("--lines", nargs="+", required=True, metavar="NAME=GLOB", help="one line per NAME: run folders matching GLOB")
    g.add_argument("--lengths", nargs="+", type=int, default=[256, 1024, 4096])
    g.add_argument("--batch", type=int, default=256, help="held-out sequences per length")
    for s in (r, rep, g):
        s.add_argument("--root", default=ROOT)
        s.add_argument("--results", default=None)
    a = p.parse_args()
    {"run": run, "report": report, "generalise": generalise}[a.cmd](a)


if __name__ == "__main__":
    main()
