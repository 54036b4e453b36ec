"""The main job: SMT -> DMT (one run, handing over on measured criteria), BPTT on the same cell and
BPTT on torch's fused LSTM, the baselines given the same wall-clock, then one table. `memtrain demo` runs it on the embedded default (retrieval, no download)."""
from __future__ import annotations

import json
from pathlib import Path

from .data.tasks import build_task
from .fields import to_dict
from .io import atomic_write, json_bytes
from .runs import evaluate_run
from .training import distributed
from .training.build import assemble, pick_device
from .training.config import RunConfig, apply_overrides
from .training.trainer import train

STAGES = ("smt-dmt", "bptt", "bptt-lstm")


def compare(out_dir: str, overrides: list[str] = (), steps: int = 3000, seconds: float | None = None,
            bptt_seconds: float | None = None, progress: bool = True, log=print) -> list[dict]:
    """Train SMT -> DMT as one run (method=smt-dmt: SMT hands over to DMT when the teacher has
    solved the task and its memories are followable, DMT ends the run on a plateau; at most `steps`
    updates or `seconds` of training), then BPTT on the same cell and BPTT on torch's fused LSTM for
    the same wall-clock (unless bptt_seconds is given); return one summary row per method and write
    them to out_dir/compare.json. Each stage is an ordinary run in out_dir/<stage>: run the same
    command again after a stop signal or a crash and finished stages are skipped, the interrupted
    one resumes. Returns [] when a stage was stopped by SIGINT/SIGTERM (it saved its checkpoint)."""
    out = Path(out_dir)
    if not distributed.main_process():
        log = lambda *_: None
    main_cfg = demo_config(out, overrides, steps, seconds)
    for cfg in (main_cfg, *_baselines(main_cfg, out, 1.0)):  # every stage's settings, before any training
        assemble(cfg)  # (networks built and dropped: the configuration is not changed)
    world = distributed.setup(pick_device(main_cfg.train.device).type)  # under torchrun: one group for all stages
    try:
        log(f"[1/3] SMT -> DMT: SMT until the teacher solves the task and the cell can follow it, then DMT until "
            f"it plateaus (at most {f'{seconds:g} s' if seconds is not None else f'{steps} updates'})")
        main = train(main_cfg, progress=progress)
        if main.get("stopped"):
            return []
        clock = bptt_seconds if bptt_seconds is not None else max(main["train_seconds"], 0.01)
        summaries = [main]
        for i, cfg in enumerate(_baselines(main_cfg, out, clock)):
            log(f"[{i + 2}/3] BPTT on {'the same cell' if i == 0 else 'torch' + chr(39) + 's fused LSTM'} for the "
                f"same wall-clock: {clock:.1f} s of training")
            summaries.append(train(cfg, progress=progress))
            if summaries[-1].get("stopped"):
                return []
        if not world.main:  # the other ranks do not evaluate: rank 0 makes the table
            return []
        longer = GENERALISE * build_task(main_cfg.task, **main_cfg.task_args).length
        rows = [{"method": "SMT (RNN at the handover)", **_at_handover(out / "smt-dmt", main), "longer": None},
                {"method": "SMT -> DMT", **_row(main, out / "smt-dmt"), "longer": _alone_at(out / "smt-dmt", longer)},
                {"method": "BPTT, same cell", **_row(summaries[1], out / "bptt"), "longer": _alone_at(out / "bptt", longer)},
                {"method": "BPTT, torch LSTM", **_row(summaries[2], out / "bptt-lstm"),
                 "longer": _alone_at(out / "bptt-lstm", longer)}]
        atomic_write(out / "compare.json", json_bytes({"rows": rows, "config": to_dict(main_cfg)}))
        return rows
    finally:
        distributed.teardown(world)


def demo_config(out: Path, overrides: list[str] = (), steps: int = 3000, seconds: float | None = None) -> RunConfig:
    """The SMT -> DMT run of the demo: the defaults (the recommended recipe) on retrieval, with
    decisions every 50 updates (the handover and the plateau come twice as soon as at the default
    100), and DMT ending once the RNN alone is right on 99% of the held-out batch (in the first demo
    run it was at 1.000 after 50 DMT updates, and the drift's slow decline kept DMT going 1,200 more)."""
    budget = [f"train.steps={steps}", "train.time_limit=null"] if seconds is None else \
        ["train.steps=100000000", f"train.time_limit={seconds!r}"]
    return apply_overrides(RunConfig(), ["method=smt-dmt", "task=retrieval", "train.eval_every=50", "handover.dmt_target=0.99",
                                         *overrides, *budget, f"out_dir={Path(out) / 'smt-dmt'}"])


def _baselines(cfg: RunConfig, out: Path, seconds: float) -> list[RunConfig]:
    """BPTT on the same cell and on torch's fused LSTM (memory [h, c] of the same size), `seconds` each."""
    clock = ["method=bptt", "train.steps=100000000", f"train.time_limit={seconds!r}"]
    return [apply_overrides(cfg, clock + [f"out_dir={out / 'bptt'}"]),
            apply_overrides(cfg, clock + ["cell.kind=torch-lstm", f"out_dir={out / 'bptt-lstm'}"])]


GENERALISE = 8  # the demo also runs each trained RNN alone at 8T, a length none of them was trained at


def _alone_at(run_dir: Path, length: int) -> dict:
    """The finished run's RNN alone at `length` (256 held-out sequences, no teacher)."""
    (row,) = evaluate_run(str(run_dir), lengths=[length], batch_size=256, rnn_only=True)
    return {"length": length, "rnn_acc": row["rnn_acc"]}


def _at_handover(run_dir: Path, summary: dict) -> dict:
    """The evaluation row at the handover (the RNN after SMT alone), from the run's metrics.jsonl."""
    step = summary.get("handover_step")
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    at = [r for r in rows if r.get("step") == step and "rnn_acc" in r and "event" not in r] if step is not None else []
    if not at:  # no handover: SMT ran to the end of the budget
        return {**_row(summary, run_dir), "handover": False}
    r = at[-1]
    return {"rnn_acc": r["rnn_acc"], "teacher_acc": r.get("teacher_acc"), "seconds": round(r["time"], 1),
            "updates": step, "sequential_steps": 1, "drift_end": r.get("drift@" + str(len(summary["drift"]) - 1)),
            "to_095": first_reaching(rows[:rows.index(r) + 1], 0.95), "handover": True}


def _row(s: dict, run_dir: Path) -> dict:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {"rnn_acc": s["rnn_acc"], "teacher_acc": s.get("teacher_acc"), "seconds": round(s["train_seconds"], 1),
            "updates": s["steps"], "sequential_steps": s["sequential_steps"],
            "drift_end": s["drift"][-1] if s.get("drift") else None, "to_095": first_reaching(rows, 0.95)}


def first_reaching(rows: list[dict], target: float) -> list | None:
    """[training seconds, updates] at the first evaluation (a metrics.jsonl row) where the RNN alone
    reached `target`; None if none did."""
    hit = next((r for r in rows if r.get("rnn_acc", 0) >= target and "event" not in r), None)
    return None if hit is None else [round(hit["time"], 1), hit["step"]]


def format_table(rows: list[dict]) -> str:
    longer = next((r["longer"]["length"] for r in rows if r.get("longer")), None)
    head = ("| method | RNN alone acc | teacher acc | wall-clock (s) | updates | first at 0.95: s / updates | "
            "sequential cell steps / update |" + ("" if longer is None else f" RNN alone at T={longer} (never trained there) |"))
    lines = [head, "|---|---|---|---|---|---|---|" + ("" if longer is None else "---|")]
    for r in rows:
        t = "-" if r["teacher_acc"] is None else f"{r['teacher_acc']:.3f}"
        hit = "-" if r["to_095"] is None else f"{r['to_095'][0]:.0f} / {r['to_095'][1]}"
        far = "" if longer is None else (" - |" if not r.get("longer") else f" {r['longer']['rnn_acc']:.3f} |")
        lines.append(f"| {r['method']} | {r['rnn_acc']:.3f} | {t} | {r['seconds']:.0f} | {r['updates']} | {hit} | "
                     f"{r['sequential_steps']} |{far}")
    return "\n".join(lines)


SMT_DMT, LSTM, HANDOVER = "SMT -> DMT", "BPTT, torch LSTM", "SMT (RNN at the handover)"

# Why the demo runs at T=32: measured in RESULTS.md section 1 (0.7, 0.8, 0.13), not by the demo's own run
WHY_THIS_LENGTH = ("Why T=32 (measured in RESULTS.md section 1, not by this run): no length was found where SMT -> DMT "
                   "beats every baseline within about 10 minutes of a 2-core CPU; at T=32 the fused LSTM is as good and "
                   "about as fast (first to 0.95 in some demo runs, second in others), and at T=256, where the LSTM stays at "
                   "chance, SMT -> DMT reaches 0.95 in 15-22 minutes (4 of 5 seeds) and torch's GRU with a decaying "
                   "learning rate in 8-14 (3 of 3); trained at T=256, SMT -> DMT's RNN is exact to T=8,192 in 3 of 4 seeds and the GRU's "
                   "at 0.83-1.000; at T=512 the GRU took 22 minutes, SMT -> DMT 38; from scratch at T=1024 neither "
                   "within two hours.")


def beyond(rows: list[dict]) -> str | None:
    """One sentence on the longer length: each method's RNN alone there, best first."""
    far = sorted((r for r in rows if r.get("longer")), key=lambda r: -r["longer"]["rnn_acc"])
    if not far:
        return None
    return (f"Run alone at T={far[0]['longer']['length']}, a length none of them was trained at: "
            + ", ".join(f"{r['method']} {r['longer']['rnn_acc']:.3f}" for r in far) + ".")


def verdict(rows: list[dict], length: int, target: float = 0.95) -> str:
    """One sentence that reads the table: who reaches `target` first in wall-clock, how the updates
    of SMT -> DMT and of the fused LSTM compare, and who does not reach it."""
    main = [r for r in rows if r["method"] != HANDOVER]
    hit = sorted((r for r in main if r["to_095"]), key=lambda r: r["to_095"][0])
    missed = [r for r in main if not r["to_095"]]
    if not hit:
        best = max(main, key=lambda r: r["rnn_acc"])
        return (f"At T={length} no RNN running alone reaches {target:g} within this budget; the best is "
                f"{best['method']} at {best['rnn_acc']:.3f}.")
    first = hit[0]
    s = f"At T={length} {first['method']} reaches {target:g} first in wall-clock ({first['to_095'][0]:.0f} s"
    s += "".join(f", {r['method']} {r['to_095'][0]:.0f} s" for r in hit[1:]) + ")"
    ours, lstm = (next((r for r in hit if r["method"] == name), None) for name in (SMT_DMT, LSTM))
    if ours and lstm:
        a, b = ours["to_095"][1], lstm["to_095"][1]
        s += (f"; SMT -> DMT needs {b / a:.1f}x fewer updates ({a:,} against {b:,})" if a <= b else
              f"; SMT -> DMT needs {a / b:.1f}x more updates ({a:,} against {b:,})")
    if missed:
        s += "; " + " and ".join(f"{r['method']} does not reach it ({r['rnn_acc']:.3f})" for r in missed)
    return s + "."
