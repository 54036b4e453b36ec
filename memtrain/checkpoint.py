"""Checkpoints: model tensors in safetensors plus a JSON file with the configuration. Nothing that
runs code is ever loaded. Files are written to a temporary name, flushed and renamed, so a reader
never sees half a checkpoint."""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

FORMAT = "memtrain-run"
VERSION = 1
WEIGHTS, META = "model.safetensors", "run.json"


def _atomic_write(path: Path, write) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save_run(out_dir: str | Path, modules: dict, config: dict, extra: dict | None = None) -> Path:
    """Write `model.safetensors` (each module's tensors under '<name>.') and `run.json`."""
    from safetensors.torch import save

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for name, module in modules.items():
        if module is None:
            continue
        for k, v in module.state_dict().items():
            tensors[f"{name}.{k}"] = v.detach().to("cpu").contiguous()
    blob = save(tensors)
    _atomic_write(out / WEIGHTS, lambda f: f.write(blob))
    meta = {"format": FORMAT, "version": VERSION, "config": config, "modules": sorted(k for k, m in modules.items() if m is not None)}
    meta.update(extra or {})
    _atomic_write(out / META, lambda f: f.write(json.dumps(meta, indent=1).encode()))
    return out


def read_run(run_dir: str | Path) -> tuple[dict, dict]:
    """-> (meta, tensors). Refuses anything that is not one of our checkpoints, with the reason."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    d = Path(run_dir)
    if not d.is_dir():
        raise ValueError(f"checkpoint {str(d)!r} is not a directory")
    meta_path, weights_path = d / META, d / WEIGHTS
    if not meta_path.is_file() or not weights_path.is_file():
        raise ValueError(f"checkpoint {str(d)!r} needs {META} and {WEIGHTS} (memtrain never loads pickles)")
    try:
        meta = json.loads(meta_path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"checkpoint {str(d)!r}: {META} is not valid JSON ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(f"checkpoint {str(d)!r} is not a memtrain run (format {meta.get('format') if isinstance(meta, dict) else None!r})")
    if meta.get("version") != VERSION:
        raise ValueError(f"checkpoint {str(d)!r} has format version {meta.get('version')!r}; this memtrain reads version {VERSION}")
    if not isinstance(meta.get("config"), dict) or not isinstance(meta.get("modules"), list):
        raise ValueError(f"checkpoint {str(d)!r}: {META} lacks its 'config' or 'modules' entry")
    try:
        tensors = load_file(str(weights_path))
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(f"checkpoint {str(d)!r}: {WEIGHTS} is corrupt ({e})") from None
    return meta, tensors


def load_module(module: torch.nn.Module, tensors: dict, name: str, where: str) -> None:
    """Load '<name>.*' tensors into module, naming any missing, extra or mis-shaped tensor."""
    pre = name + "."
    sub = {k[len(pre):]: v for k, v in tensors.items() if k.startswith(pre)}
    own = module.state_dict()
    missing = sorted(set(own) - set(sub))
    extra = sorted(set(sub) - set(own))
    shapes = [f"{k}: {tuple(sub[k].shape)} vs {tuple(v.shape)}" for k, v in own.items() if k in sub and sub[k].shape != v.shape]
    if missing or extra or shapes:
        raise ValueError(f"checkpoint {where!r} does not fit this {name}: missing {missing[:3]}, unexpected {extra[:3]}, shapes {shapes[:3]}")
    module.load_state_dict(sub)
