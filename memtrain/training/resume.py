"""Exact resume: what a training checkpoint must hold for a resumed run to continue as if it had
never stopped, and which checkpoint (if any) a run resumes from.

The state is the model (checkpoint.py), the optimizer's tensors and scalars, the random generators
(the data generator, torch's global generator, CUDA's), the step counter, the training time spent
(for `train.time_limit`), the evaluation time, the best held-out loss (`train.keep_best`) and how far `metrics.jsonl` had been written. A resumed run is refused when
its settings differ from the checkpoint's in anything but the run-control settings (`control(...)` in
config.py): a resume
continues the same run; a different run starts from it with `init_from`.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from .checkpoint import list_checkpoints, read_checkpoint
from .config import RESUME_MODES, run_control_keys

RUN_CONTROL = run_control_keys()  # settings that may change when a run is resumed

def flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):  # an empty mapping adds no settings
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def config_differences(saved: dict, now: dict) -> list[str]:
    """'key: A in the checkpoint, B now' for every setting outside RUN_CONTROL that differs."""
    a, b = flatten(saved), flatten(now)
    show = lambda d, k: repr(d[k]) if k in d else "(not set)"  # noqa: E731
    return [f"{k}: {show(a, k)} in the checkpoint, {show(b, k)} now"
            for k in sorted(set(a) | set(b)) if k not in RUN_CONTROL and (k not in a or k not in b or a[k] != b[k])]


@dataclass
class RunState:
    """Where a run stands, beside its weights: what a training checkpoint's run.json records."""
    step: int = 0  # updates done
    seconds: float = 0.0  # training time spent (for train.time_limit)
    bad_streak: int = 0  # non-finite updates in a row just before this point
    metrics_bytes: int = 0  # how far metrics.jsonl had been written
    eval_seconds: float = 0.0  # time spent evaluating (not counted by train.time_limit)
    best: float | None = None  # train.keep_best: the lowest held-out rnn_ce so far (kept in out_dir/best)
    best_step: int | None = None  # ... and the step it was measured at

    def record(self, opt: torch.optim.Optimizer, gen: torch.Generator, finished: bool, summary: dict | None,
               processes: int) -> tuple[dict, dict]:
        """-> (run.json entries, tensors) for a training checkpoint of this state."""
        plain, tensors = optimizer_state(opt)
        info = {"train": {"seconds": self.seconds, "eval_seconds": self.eval_seconds, "best": self.best, "best_step": self.best_step,
                          "metrics_bytes": self.metrics_bytes, "bad_streak": self.bad_streak,
                          "optimizer": plain, "finished": finished, "summary": summary, "processes": processes}}
        return info, {**tensors, **rng_state(gen)}

    @classmethod
    def restore(cls, meta: dict, tensors: dict, opt: torch.optim.Optimizer, gen: torch.Generator, where: str) -> "RunState":
        """Load the optimizer and the generators from a checkpoint read by `find_resume`; -> its state."""
        info = meta["train"]
        load_optimizer_state(opt, info.get("optimizer"), tensors, where)
        set_rng_state(gen, tensors, where)
        return cls(meta["step"], float(info["seconds"]), int(info.get("bad_streak", 0)), int(info["metrics_bytes"]),
                   float(info.get("eval_seconds", 0.0)), info.get("best"), info.get("best_step"))


# ---- the optimizer and the random generators as (JSON, tensors) ----------------------------------

def optimizer_state(opt: torch.optim.Optimizer) -> tuple[dict, dict]:
    """Split `opt.state_dict()` into JSON-able scalars and tensors named 'optim.<param>.<name>'."""
    sd = opt.state_dict()
    tensors, state = {}, {}
    for idx, entry in sd["state"].items():
        plain = {}
        for name, v in entry.items():
            if torch.is_tensor(v):
                tensors[f"optim.{idx}.{name}"] = v.detach().to("cpu", copy=True).contiguous()  # a snapshot
            else:
                plain[name] = v
        state[str(idx)] = plain
    return {"state": state, "param_groups": sd["param_groups"]}, tensors


def load_optimizer_state(opt: torch.optim.Optimizer, plain: dict, tensors: dict, where: str) -> None:
    try:
        state = {}
        for idx, entry in plain["state"].items():
            state[int(idx)] = dict(entry)
        for key, v in tensors.items():
            if key.startswith("optim."):
                _, idx, name = key.split(".", 2)
                state.setdefault(int(idx), {})[name] = v
        groups = plain["param_groups"]
        if len(groups) != len(opt.param_groups) or any(len(g["params"]) != len(o["params"]) for g, o in zip(groups, opt.param_groups)):
            raise ValueError("its optimizer holds a different number of parameters")
        params = {i: p for g, o in zip(groups, opt.param_groups) for i, p in zip(g["params"], o["params"])}
        for idx, entry in state.items():
            if idx not in params:
                raise ValueError(f"state for parameter {idx}, which it does not have")
            for name, v in entry.items():
                if not torch.is_tensor(v):
                    continue
                fits = v.numel() == 1 if name == "step" else v.shape == params[idx].shape
                if not fits or not v.is_floating_point():
                    raise ValueError(f"{name} of parameter {idx} is {v.dtype} {tuple(v.shape)}, the parameter {tuple(params[idx].shape)}")
        for g in groups:
            if "betas" in g:
                g["betas"] = tuple(g["betas"])
        opt.load_state_dict({"state": state, "param_groups": groups})
    except (KeyError, TypeError, AttributeError, ValueError, RuntimeError) as e:
        raise ValueError(f"checkpoint {where!r}: the optimizer state does not fit this run ({str(e)[:200]})") from None


def rng_state(gen: torch.Generator) -> dict:
    tensors = {"rng.data": gen.get_state(), "rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    return tensors


def set_rng_state(gen: torch.Generator, tensors: dict, where: str) -> None:
    try:
        gen.set_state(tensors["rng.data"])
        torch.set_rng_state(tensors["rng.torch"])
        if torch.cuda.is_available():
            n = min(torch.cuda.device_count(), sum(k.startswith("rng.cuda.") for k in tensors))
            torch.cuda.set_rng_state_all([tensors[f"rng.cuda.{i}"] for i in range(n)])
    except (KeyError, RuntimeError, TypeError) as e:
        raise ValueError(f"checkpoint {where!r}: its random-generator state is missing or unusable ({str(e)[:200]})") from None


# ---- which checkpoint --------------------------------------------------------------------------------

def find_resume(out_dir: str, mode: str, quiet: bool = False):
    """-> (path, meta, tensors, state) of the newest intact training checkpoint in out_dir, or None
    to start fresh. `mode`: 'auto' resumes when there is one, 'require' insists, 'never' refuses an
    out_dir that already holds checkpoints. Checkpoints that fail their checks are skipped with a
    warning; if every one fails, the run is refused rather than silently restarted."""
    if mode not in RESUME_MODES:
        raise ValueError(f"train.resume must be one of {RESUME_MODES}, got {mode!r}")
    found = list_checkpoints(out_dir) if out_dir else []
    if mode == "require" and not found:
        raise ValueError(f"train.resume='require' but out_dir={out_dir!r} holds no training checkpoint")
    if not found:
        return None
    if mode == "never":
        raise ValueError(f"out_dir={out_dir!r} already holds training checkpoints (newest {found[-1].name}); "
                         "train.resume='never' will not overwrite them: choose another out_dir, or delete "
                         f"{str(Path(out_dir) / 'checkpoints')!r}")
    reasons = []
    for path in reversed(found):
        try:
            return (path, *read_checkpoint(path))
        except ValueError as e:
            reasons.append(str(e))
            if not quiet:
                print(f"memtrain: skipping a damaged checkpoint: {e}", file=sys.stderr)
    raise ValueError(f"out_dir={out_dir!r} holds {len(found)} training checkpoint(s) and none is intact "
                     f"({'; '.join(reasons[:2])}); move them away to start again")
