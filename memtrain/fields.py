"""Typed dataclasses <-> plain JSON values and `key=value` text: the one place where settings are
checked and converted. Imports nothing of memtrain, so every layer may use it.

Why hand-written and not tyro or jsonargparse: the `a.b=value` form (JSON values, dotted keys, free
`task_args` mappings) must keep working, errors must name the setting in one line, and the same
coercion reads saved run.json files and task / prepare options; the typed-CLI libraries offer
`--a.b value` flags, pull in dependencies, and still need the JSON reader below.
"""
from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import io
import json
import math
import textwrap
import tokenize
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
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{key} must be a list, got {value!r}")
        (item,) = typing.get_args(tp)
        return [coerce(v, item, key) for v in value]
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


# ---- self-description: every setting with its type, default and meaning, from the dataclasses ----

@functools.cache
def _source_comments(cls) -> dict[str, str]:
    """Field name -> the comment(s) on the line(s) of its declaration in `cls`'s source ({} without source)."""
    try:
        src = textwrap.dedent(inspect.getsource(cls))
        body = ast.parse(src).body[0].body
        comments = {t.start[0]: " ".join(t.string.lstrip("#").split())
                    for t in tokenize.generate_tokens(io.StringIO(src).readline) if t.type == tokenize.COMMENT}
    except (OSError, TypeError, SyntaxError, tokenize.TokenError):
        return {}
    return {n.target.id: " ".join(comments[k] for k in range(n.lineno, n.end_lineno + 1) if k in comments)
            for n in body if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)}


def field_docs(cls) -> dict[str, str]:
    """The one-line meaning of each field of dataclass `cls`: `field(metadata={"help": ...})`, else the
    comment on the field's line in the class source, else ""."""
    comments = _source_comments(cls)
    return {f.name: " ".join(str(f.metadata.get("help", "")).split()) or comments.get(f.name, "")
            for f in dataclasses.fields(cls)}


def type_name(tp) -> str:
    """A field's type as a user reads it: int, float | None, [float, float], mapping, ..."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is type(None):
        return "None"
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_name(a) for a in args)
    if origin is tuple:
        return "[" + ", ".join(type_name(a) for a in args) + "]"
    if tp is dict or origin is dict:
        return "mapping"
    return getattr(tp, "__name__", str(tp))


def describe(cls, prefix: str = "", defaults=None) -> list[tuple[str, str, str, str]]:
    """Every setting of dataclass `cls` (which must build with no arguments) as (dotted name, type,
    default as written on the command line, meaning); nested dataclass fields are expanded in place
    as `name.sub` with the defaults of the outer default's instance. Fields with init=False are not
    settings."""
    defaults = cls() if defaults is None else defaults
    hints, docs, rows = typing.get_type_hints(cls), field_docs(cls), []
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        value = getattr(defaults, f.name)
        if dataclasses.is_dataclass(hints[f.name]):
            rows += describe(hints[f.name], f"{prefix}{f.name}.", value)
        else:
            rows.append((prefix + f.name, type_name(hints[f.name]), json.dumps(value), docs[f.name]))
    return rows


HELP_NOTES = """\
  Settings are key=value arguments; a later one wins over an earlier one (and over a preset's).
  Values are JSON: numbers, true/false, null, lists like [1, 2]; strings quoted or bare. Nested
  settings have dotted names (teacher.d_model=64). A mapping (task_args, method_args) is given whole,
  task_args={"key": 1}, or key by key, task_args.key=1; its keys are checked against what it configures.
  Columns: name, type, default (as written on the command line), meaning."""


def settings_help(cls, title: str, width: int = 120) -> str:
    """A text table of every setting of `cls` (see `describe`): the top-level ones first, then a
    heading (the section's class and the first line of its docstring) and the rows of each section."""
    rows = sorted(describe(cls), key=lambda r: "." in r[0])  # stable: declaration order within each group
    heads = {"": f"{cls.__name__} (top level): {_doc_line(cls)}"}
    for f in dataclasses.fields(cls):
        sub = typing.get_type_hints(cls)[f.name]
        if dataclasses.is_dataclass(sub):
            heads[f.name] = f"{f.name} ({sub.__name__}): {_doc_line(sub)}"
    w0, w1, w2 = (min(max(len(r[i]) for r in rows), cap) for i, cap in ((0, 32), (1, 16), (2, 16)))
    lead = 2 + w0 + 2 + w1 + 2 + w2 + 2
    out, section = [title, HELP_NOTES], None
    for name, tp, default, meaning in rows:
        if name.rpartition(".")[0] != section:
            section = name.rpartition(".")[0]
            out += ["", heads.get(section, section).rstrip(": ")]
        head = f"  {name:<{w0}}  {tp:<{w1}}  {default:<{w2}}".ljust(lead)
        lines = textwrap.wrap(meaning, width=max(width - len(head), 30)) or [""]
        out += [(head + lines[0]).rstrip()] + [" " * len(head) + more for more in lines[1:]]
    return "\n".join(out) + "\n"


def _doc_line(cls) -> str:
    """The first line of a class's own docstring ("" for the signature @dataclass writes)."""
    doc = cls.__dict__.get("__doc__") or ""
    return "" if doc.startswith(cls.__name__ + "(") else inspect.cleandoc(doc).partition("\n")[0]
