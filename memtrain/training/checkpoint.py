"""Checkpoints on disk: tensors in safetensors plus a JSON file. Nothing that can run code is ever
loaded (no pickles, no torch.load).

Two kinds share one format (`run.json` + `model.safetensors`), so anything that reads a finished run
(`memtrain eval`, `sample`, `init_from`) also reads a training checkpoint:

    out_dir/run.json, model.safetensors      the final model of a finished run
    out_dir/checkpoints/step-00000100/       a training checkpoint: the same two files plus
        train_state.safetensors              optimizer tensors and random-generator states

Crash safety. A final model is written weights first, then `run.json` holding the weights' SHA-256,
each file with io.atomic_write (a temporary name, fsynced and renamed): a run killed between the two
renames leaves a pair whose hashes disagree, which `read_run` refuses. A training checkpoint is built
in a temporary folder and renamed into place as a whole, so a `step-*` folder is always complete;
older ones are deleted only after the new one is in place, keeping the last `keep`.
"""
from __future__ import annotations

import os
import re
import shutil
import zipfile
from pathlib import Path

import torch

from ..io import atomic_write, fsync_dir, json_bytes, read_json, sha256

FORMAT = "memtrain-run"
VERSION = 13  # 13: smt.decoder_reads, smt.lagged_inputs (older runs: "all", none); 12: teacher.running_sums (older runs: off); 11: handover.count_from (older runs: "start", how they counted); 10: dmt.grow_min_steps and the update at which DMT's rollout length began (older runs: 0); 9: train.schedule_steps, handover.smt_steps / dmt_schedule, dmt.grow / grow_patience and DMT's rollout length and its trackers (older runs: off); 8: smt.coef_dyn_teacher, handover.solved_coef_dyn_teacher (older runs: off); 7: smt's error-correcting settings (older runs: off, their defaults); 6: the rollout section (older runs: its defaults, stepped); 5: handover.teacher_min_gain (older runs: its default); 4: smt.dyn_samples is smt.transitions; 3: settings renamed in memtrain 0.2 (config.upgrade translates 1-3); 2: SHA-256 of every tensor file
READS = tuple(range(1, VERSION + 1))
WEIGHTS, META, STATE = "model.safetensors", "run.json", "train_state.safetensors"
CHECKPOINTS = "checkpoints"
_STEP_DIR = re.compile(r"^step-(\d{8,})$")
PICKLE_SUFFIXES = (".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".bin")
PICKLE_WHY = ("memtrain never loads pickles: unpickling runs whatever code the file names, so a "
              "checkpoint from an untrusted source could take over the machine")


# ---- what goes in -----------------------------------------------------------------------------------

def module_tensors(modules: dict) -> dict:
    """{'<name>.<key>': tensor} on the CPU for every module that is not None."""
    tensors = {}
    for name, module in modules.items():
        if module is None:
            continue
        for k, v in module.state_dict().items():
            tensors[f"{name}.{k}"] = v.detach().to("cpu").contiguous()
    return tensors


def check_finite(tensors: dict, what: str) -> None:
    """Refuse to write NaN or inf weights: a non-finite model is never saved."""
    bad = [k for k, v in tensors.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise NonFiniteError(f"refusing to save {what}: non-finite values in {bad[:3]}{' ...' if len(bad) > 3 else ''}")


class NonFiniteError(ValueError):
    pass


def _meta(config: dict, modules: dict, files: dict, extra: dict | None) -> bytes:
    meta = {"format": FORMAT, "version": VERSION, "config": config,
            "modules": sorted(k for k, m in modules.items() if m is not None), "sha256": files}
    meta.update(extra or {})
    return json_bytes(meta)


# ---- a finished run ---------------------------------------------------------------------------------

def save_run(out_dir: str | Path, modules: dict, config: dict, extra: dict | None = None) -> Path:
    """Write `model.safetensors` (each module's tensors under '<name>.') and `run.json`."""
    from safetensors.torch import save

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = module_tensors(modules)
    check_finite(tensors, f"the model in {str(out)!r}")
    blob = save(tensors)
    atomic_write(out / WEIGHTS, blob)
    atomic_write(out / META, _meta(config, modules, {WEIGHTS: sha256(blob)}, extra))
    return out


def _refuse_non_run(d: Path) -> None:
    """Explain why `d` (a file, or a folder without our two files) is not loaded."""
    where = str(d)
    if d.is_file():
        with open(d, "rb") as f:
            head = f.read(4)
        if d.suffix in PICKLE_SUFFIXES or head[:1] == b"\x80" or (head == b"PK\x03\x04" and _zip_has_pickle(d)):
            raise ValueError(f"checkpoint {where!r} looks like a pickle (torch.save) file; {PICKLE_WHY}; "
                             f"a memtrain checkpoint is a folder with {META} and {WEIGHTS}")
        raise ValueError(f"checkpoint {where!r} is a file; a memtrain checkpoint is a folder with {META} and {WEIGHTS}")
    if not d.is_dir():
        raise ValueError(f"checkpoint {where!r} is not a directory")
    pickles = sorted(p.name for p in d.iterdir() if p.suffix in PICKLE_SUFFIXES)
    steps = list_checkpoints(d)
    hint = ""
    if pickles:
        hint = f"; it holds {pickles[:3]}: {PICKLE_WHY}"
    elif steps:
        hint = (f"; the run did not finish, its newest training checkpoint is {str(steps[-1])!r} "
                "(resume it by running the same command again, or evaluate that folder)")
    raise ValueError(f"checkpoint {where!r} needs {META} and {WEIGHTS} (memtrain never loads pickles){hint}")


def _zip_has_pickle(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as z:
            return any(n.endswith(".pkl") for n in z.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def _read_meta(d: Path) -> dict:
    where = str(d)
    meta = read_json(d / META, f"checkpoint {where!r}", "memtrain run", FORMAT, READS)
    if not isinstance(meta.get("config"), dict) or not isinstance(meta.get("modules"), list):
        raise ValueError(f"checkpoint {where!r}: {META} lacks its 'config' or 'modules' entry")
    if meta["version"] >= 2 and not isinstance(meta.get("sha256"), dict):
        raise ValueError(f"checkpoint {where!r}: {META} lacks the 'sha256' of its tensor files")
    return meta


def _read_tensors(d: Path, name: str, meta: dict) -> dict:
    from safetensors import SafetensorError
    from safetensors.torch import load

    where = str(d)
    path = d / name
    if not path.is_file():
        raise ValueError(f"checkpoint {where!r} lacks {name}")
    blob = path.read_bytes()
    want = (meta.get("sha256") or {}).get(name)
    if meta["version"] >= 2 and want != sha256(blob):
        raise ValueError(f"checkpoint {where!r}: {name} does not match the SHA-256 in {META} "
                         "(corrupt, or a save was interrupted between its files)")
    try:
        tensors = load(blob)
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise ValueError(f"checkpoint {where!r}: {name} is corrupt ({str(e)[:120]})") from None
    return tensors


def read_run(run_dir: str | Path) -> tuple[dict, dict]:
    """-> (meta, tensors). Refuses anything that is not one of our checkpoints, with the reason."""
    d = Path(run_dir)
    if not d.is_dir() or not (d / META).is_file() or not (d / WEIGHTS).is_file():
        _refuse_non_run(d)
    meta = _read_meta(d)
    return meta, _read_tensors(d, WEIGHTS, meta)


# ---- training checkpoints ---------------------------------------------------------------------------

def checkpoint_dir(out_dir: str | Path, step: int) -> Path:
    return Path(out_dir) / CHECKPOINTS / f"step-{step:08d}"


def list_checkpoints(out_dir: str | Path) -> list[Path]:
    """Training checkpoint folders in out_dir, oldest first (temporary folders are not listed)."""
    d = Path(out_dir) / CHECKPOINTS
    if not d.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in d.iterdir() if p.is_dir() and (m := _STEP_DIR.match(p.name))]
    return [p for _, p in sorted(found)]


def remove_partial(out_dir: str | Path) -> list[str]:
    """Delete temporary folders left by a save that was killed; returns their names."""
    d = Path(out_dir) / CHECKPOINTS
    if not d.is_dir():
        return []
    gone = [p for p in d.iterdir() if p.name.startswith(".tmp-")]
    for p in gone:
        shutil.rmtree(p, ignore_errors=True)
    return [p.name for p in gone]


def save_checkpoint(out_dir: str | Path, step: int, modules: dict, config: dict, state: dict, info: dict,
                    keep: int) -> Path:
    """Write a training checkpoint for `step` atomically, then keep only the newest `keep`.
    `state` holds the extra tensors (optimizer, random generators); `info` goes into run.json."""
    from safetensors.torch import save

    final = checkpoint_dir(out_dir, step)
    parent = final.parent
    parent.mkdir(parents=True, exist_ok=True)
    if final.is_dir():  # the same step saved twice (a stop signal on a save step): it holds this state
        _prune(parent, keep)
        return final
    tensors = module_tensors(modules)
    check_finite(tensors, f"checkpoint {str(final)!r}")
    check_finite({k: v for k, v in state.items() if k.startswith("optim.")}, f"checkpoint {str(final)!r}")
    tmp = parent / f".tmp-{final.name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        w, s = save(tensors), save(state)
        atomic_write(tmp / WEIGHTS, w, atomic=False)  # the folder is renamed into place as a whole
        atomic_write(tmp / STATE, s, atomic=False)
        atomic_write(tmp / META, _meta(config, modules, {WEIGHTS: sha256(w), STATE: sha256(s)}, {"step": step, **info}),
                     atomic=False)
        fsync_dir(tmp)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_dir(parent)
    _prune(parent, keep)
    return final


def _prune(parent: Path, keep: int) -> None:
    for old in list_checkpoints(parent.parent)[:-keep]:
        # rename first, so a kill during the deletion never leaves a half-deleted step-* folder
        doomed = parent / f".tmp-delete-{old.name}"
        os.replace(old, doomed)
        shutil.rmtree(doomed, ignore_errors=True)
    fsync_dir(parent)


def read_checkpoint(path: str | Path) -> tuple[dict, dict, dict]:
    """-> (meta, model tensors, state tensors) of one training checkpoint, verified against its hashes."""
    d = Path(path)
    meta, tensors = read_run(d)
    info = meta.get("train")
    if not _count(meta.get("step")) or not isinstance(info, dict):
        raise ValueError(f"checkpoint {str(d)!r} is a finished model, not a training checkpoint (no step/train state)")
    kinds = {"seconds": _seconds, "metrics_bytes": _count, "bad_streak": _count, "finished": lambda v: isinstance(v, bool),
             "optimizer": lambda v: isinstance(v, dict) and isinstance(v.get("state"), dict) and isinstance(v.get("param_groups"), list),
             "summary": lambda v: v is None or isinstance(v, dict)}
    bad = [k for k, ok in kinds.items() if not ok(info.get(k))]
    if bad:
        raise ValueError(f"checkpoint {str(d)!r}: {META} has unusable training entries {bad}")
    return meta, tensors, _read_tensors(d, STATE, meta)


def _count(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _seconds(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v < float("inf")
