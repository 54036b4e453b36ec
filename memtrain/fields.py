"""Typed dataclasses <-> plain JSON values and `key=value` text: the one place where settings are
checked and converted. Imports nothing of memtrain, so every layer may use it.

Why hand-written and not tyro or jsonargparse: the `a.b=value` form (JSON values, dotted keys, free
`task_args` mappings) must keep working, errors must name the setting in one line, and the same
coercion reads saved run.json files and task / prepare options; the typed-CLI libraries offer
`--a.b value` flags, pull in dependencies, and still need the JSON reader below.
"""
from __future__ import annotations

import dataclasses
import json
import math
import types
import typing


def to_dict(cfg) -> dict:
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def coerce(value, tp, key: str):
    """Check and convert a plain value to a field's annotated type."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return coerce(value, a, key)
            except ValueError as e:
                errors.append(str(e))
        raise ValueError(errors[0] if errors else f"{key}: bad value {value!r}")
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or len(value) != len(typing.get_args(tp)):
            raise ValueError(f"{key} must be a list of {len(typing.get_args(tp))} numbers, got {value!r}")
        return tuple(coerce(v, a, key) for v, a in zip(value, typing.get_args(tp)))
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ValueError(f"{key} must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{key} must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str) and value.strip().lower().lstrip("+-") in ("nan", "inf", "infinity"):
            raise ValueError(f"{key} must be a finite number, got {value!r}")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{key} must be a number, got {value!r}")
        if not math.isfinite(value):
            raise ValueError(f"{key} must be a finite number, got {value!r}")
        return float(value)
    if tp is str:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)  # key=123 on the command line parses as a number; keep it as text
        if not isinstance(value, str):
            raise ValueError(f"{key} must be a string, got {value!r}")
        return value
    if tp is dict or origin is dict:
        if not isinstance(value, dict):
            raise ValueError(f"{key} must be a mapping, got {value!r}")
        return dict(value)
    raise ValueError(f"{key}: unsupported type {tp}")


def from_dict(cls, data: dict, prefix: str = ""):
    """Build a dataclass from plain values, refusing unknown keys and wrong types."""
    if not isinstance(data, dict):
        raise ValueError(f"{prefix.rstrip('.') or 'config'} must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"unknown setting(s) {[prefix + k for k in unknown]}; {prefix or 'config'} takes {sorted(known)}")
    kwargs = {}
    for k, v in data.items():
        tp = hints[k]
        if dataclasses.is_dataclass(tp):
            kwargs[k] = from_dict(tp, v, prefix + k + ".")
        else:
            kwargs[k] = coerce(v, tp, prefix + k)
    return cls(**kwargs)


def parse_value(text: str):
    """Command-line values: JSON when it parses (numbers, true/false, null, lists), else a string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text




def set_dotted(data: dict, item: str, free: tuple[str, ...] = ()) -> None:
    """Apply one 'a.b=value' override to nested plain data; keys under a name in `free` (a mapping
    setting such as task_args) may be new, any other key must exist already."""
    if "=" not in item:
        raise ValueError(f"override {item!r} must look like key=value (e.g. train.steps=100)")
    key, text = item.split("=", 1)
    parts = key.split(".")
    node = data
    for p in parts[:-1]:
        if not isinstance(node.get(p), dict):
            raise ValueError(f"unknown setting {key!r}")
        node = node[p]
    if parts[0] not in free and parts[-1] not in node:
        raise ValueError(f"unknown setting {key!r}")
    node[parts[-1]] = parse_value(text)
