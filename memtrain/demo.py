"""The main job: SMT -> DMT and BPTT on the same cell and task, BPTT given the same wall-clock,
then one table. `memtrain demo` runs it on the embedded default (retrieval, no download)."""
from __future__ import annotations

from pathlib import Path

from .fields import to_dict
from .io import atomic_write, json_bytes
from .presets import PRESETS
from .training import distributed
from .training.build import assemble, pick_device
from .training.config import RunConfig, apply_overrides
from .training.trainer import train


def compare(out_dir: str, overrides: list[str] = (), smt_steps: int = 900, dmt_steps: int = 600,
            dmt_lr: float = 1e-4, bptt_seconds: float | None = None, smt_seconds: float | None = None,
            dmt_seconds: float | None = None, progress: bool = True, log=print) -> list[dict]:
    """Train SMT, then DMT from it, then BPTT for the same total wall-clock (unless bptt_seconds is
    given); return one summary row per stage and write them to out_dir/compare.json.
    smt_seconds / dmt_seconds give a stage a training-time budget instead of a number of steps.
    Each stage is an ordinary run in out_dir/<stage>: run the same command again after a stop signal
    or a crash and finished stages are skipped, the interrupted one resumes. Returns [] when a stage
    was stopped by SIGINT/SIGTERM (it saved its checkpoint)."""
    out = Path(out_dir)
    base = list(PRESETS["retrieval-smt"][1]) + list(overrides)
    if not distributed.main_process():
        log = lambda *_: None  # noqa: E731  (under torchrun rank 0 speaks)
    smt_cfg = apply_overrides(RunConfig(), base + [*_budget(smt_steps, smt_seconds), f"out_dir={out / 'smt'}", "method=smt"])
    dmt_cfg = apply_overrides(smt_cfg, ["method=dmt", *_budget(dmt_steps, dmt_seconds), f"init_from={out / 'smt'}",
                                        f"out_dir={out / 'dmt'}", f"train.lr={dmt_lr!r}", "train.warmup=0"])
    for cfg in (smt_cfg, dmt_cfg, _bptt_config(smt_cfg, out, 1.0)):  # every stage's settings, before any training
        assemble(cfg)  # (networks built and dropped: the configuration is not changed)
    world = distributed.setup(pick_device(smt_cfg.train.device).type)  # under torchrun: one group for all stages
    try:
        log(f"[1/3] SMT: teacher + cell jointly, {_say(smt_steps, smt_seconds)}")
        smt = train(smt_cfg, progress=progress)
        if smt.get("stopped"):
            return []
        log(f"[2/3] DMT from the SMT run, {_say(dmt_steps, dmt_seconds)}")
        dmt = train(dmt_cfg, progress=progress)
        if dmt.get("stopped"):
            return []
        budget = bptt_seconds if bptt_seconds is not None else max(smt["train_seconds"] + dmt["train_seconds"], 0.01)
        log(f"[3/3] BPTT on the same cell for the same wall-clock: {budget:.1f} s of training")
        bptt = train(_bptt_config(smt_cfg, out, budget), progress=progress)
        if bptt.get("stopped"):
            return []
        if not world.main:  # the other ranks do not evaluate: rank 0 makes the table
            return []
        rows = [
            {"method": "SMT (RNN after SMT)", **_row(smt)},
            {"method": "SMT -> DMT", **_row(dmt, extra_seconds=smt["train_seconds"], extra_steps=smt["steps"])},
            {"method": "BPTT", **_row(bptt)},
        ]
        atomic_write(out / "compare.json", json_bytes({"rows": rows, "config": to_dict(smt_cfg)}))
        return rows
    finally:
        distributed.teardown(world)


def _bptt_config(smt_cfg: RunConfig, out: Path, seconds: float) -> RunConfig:
    return apply_overrides(smt_cfg, ["method=bptt", "train.steps=1000000", f"train.time_limit={seconds}",
                                     f"out_dir={out / 'bptt'}"])


def _budget(steps: int, seconds: float | None) -> list[str]:
    if seconds is None:
        return [f"train.steps={steps}", "train.time_limit=null"]
    return ["train.steps=100000000", f"train.time_limit={seconds!r}"]


def _say(steps: int, seconds: float | None) -> str:
    return f"{steps} steps" if seconds is None else f"{seconds:g} s"


def _row(s: dict, extra_seconds: float = 0.0, extra_steps: int = 0) -> dict:
    return {"rnn_acc": s["rnn_acc"], "teacher_acc": s.get("teacher_acc"),
            "seconds": round(s["train_seconds"] + extra_seconds, 1), "updates": s["steps"] + extra_steps,
            "sequential_steps": s["sequential_steps"], "drift_end": s["drift"][-1] if s.get("drift") else None}


def format_table(rows: list[dict]) -> str:
    head = "| method | RNN alone acc | teacher acc | wall-clock (s) | updates | sequential cell steps / update |"
    lines = [head, "|---|---|---|---|---|---|"]
    for r in rows:
        t = "-" if r["teacher_acc"] is None else f"{r['teacher_acc']:.3f}"
        lines.append(f"| {r['method']} | {r['rnn_acc']:.3f} | {t} | {r['seconds']:.0f} | {r['updates']} | {r['sequential_steps']} |")
    return "\n".join(lines)
