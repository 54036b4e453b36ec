"""Files on disk, the one copy: atomic writes (temporary name, fsync, rename), SHA-256, JSON files
checked to be ours (format and version), and loading named tensors into a module.

Nothing here imports the rest of memtrain, so every layer may use it. Nothing that can run code is
ever loaded: tensors come from safetensors, everything else from JSON.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path

import torch


def fsync_dir(path: str | os.PathLike) -> None:
    """Make a rename inside `path` durable (no-op where directories cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, data, atomic: bool = True) -> Path:
    """Write `data` to `path` and fsync it: bytes, or a function that writes to the open binary file
    (a large array streamed, never held twice in memory). With `atomic` (default) it goes to a
    temporary name in the same folder that is renamed over `path`, so a reader sees the old file or
    the new one, never half of one; if anything fails (a full disk, an interrupt) nothing is left
    behind. Without it (a file inside a folder that is itself renamed into place) `path` is written
    directly, and removed if the write fails."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}") if atomic else path
    try:
        with open(tmp, "wb") as f:
            data(f) if callable(data) else f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if atomic:
            os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if atomic:
        fsync_dir(path.parent)
    return path


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def json_bytes(obj) -> bytes:
    """Indented JSON without NaN or infinity (which JSON does not have): refused, so a measurement
    goes through `nonfinite_to_null` first."""
    return (json.dumps(obj, indent=1, allow_nan=False) + "\n").encode()


def nonfinite_to_null(obj):
    """`obj` with every float that is not finite (inf, -inf, nan) replaced by None, through dicts,
    lists and tuples (which become lists): a measurement that diverged is written as JSON null."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: nonfinite_to_null(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [nonfinite_to_null(v) for v in obj]
    return obj


def _no_constant(name):
    raise ValueError(f"{name} is not a number JSON allows")


def read_json(path: str | os.PathLike, name: str, kind: str, fmt: str | None = None, versions=None) -> dict:
    """A JSON object from `path`, refused with one line unless it parses (strict: no NaN), is an
    object, and, when `fmt` is given, has "format": fmt and a "version" in `versions`. `name` is what
    is read ("checkpoint 'runs/x'"), `kind` what it should be ("memtrain run"), for the messages."""
    p = Path(path)
    try:
        data = json.loads(p.read_bytes().decode("utf-8"), parse_constant=_no_constant)
    except FileNotFoundError:
        raise ValueError(f"{name} is not a {kind}: {p.name} does not exist") from None
    except (UnicodeDecodeError, json.JSONDecodeError, ValueError, RecursionError) as e:
        raise ValueError(f"{name} is not a {kind}: {p.name} is not valid JSON ({str(e)[:120]})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{name} is not a {kind}: {p.name} holds a {type(data).__name__}, not a JSON object")
    if fmt is not None and data.get("format") != fmt:
        raise ValueError(f"{name} is not a {kind} (format {data.get('format')!r}, want {fmt!r})")
    if versions is not None and data.get("version") not in versions:
        raise ValueError(f"{name} has format version {data.get('version')!r}; this memtrain reads versions {list(versions)}")
    return data


def load_module(module: torch.nn.Module, tensors: dict, name: str, where: str) -> None:
    """Load '<name>.*' tensors into module, naming any missing, extra or mis-shaped tensor."""
    pre = name + "."
    sub = {k[len(pre):]: v for k, v in tensors.items() if k.startswith(pre)}
    own = module.state_dict()
    missing = sorted(set(own) - set(sub))
    extra = sorted(set(sub) - set(own))
    shapes = [f"{k}: {tuple(sub[k].shape)} vs {tuple(v.shape)}" for k, v in own.items() if k in sub and sub[k].shape != v.shape]
    dtypes = [f"{k}: {sub[k].dtype} vs {v.dtype}" for k, v in own.items() if k in sub and sub[k].dtype != v.dtype]
    if missing or extra or shapes or dtypes:
        raise ValueError(f"checkpoint {where!r} does not fit this {name}: missing {missing[:3]}, unexpected {extra[:3]}, "
                         f"shapes {shapes[:3]}" + (f", dtypes {dtypes[:3]}" if dtypes else ""))
    module.load_state_dict(sub)
