"""Typed dataclasses <-> plain JSON values and `key=value` text: the one place where settings are
checked and converted. Imports nothing of memtrain, so every layer may use it.

Why hand-written and not tyro or jsonargparse: the `a.b=value` form (JSON values, dotted keys, free
`task_args` mappings) must keep working, errors must name the setting in one line, and the same
coercion reads saved run.json files and task / prepare options; the typed-CLI libraries offer
`--a.b value` flags, pull in dependencies, and still need the JSON reader below.
"""
from __future__ import annotations

import collections.abc
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

_PRAGMAS = ("noqa", "type:", "pragma:", "fmt:", "pylint:")


def _comment_text(comment: str) -> str:
    text = " ".join(comment.lstrip("#").split())
    return "" if text.lower().startswith(_PRAGMAS) else text


def _source_comments(cls) -> dict[str, str]:
    """Field name -> its comment in `cls`'s own source: the trailing `# ...` on the field's line(s),
    else the whole-line comment(s) directly above it (same indentation, no blank line between).
    {} when the source cannot be read."""
    try:
        src = textwrap.dedent(inspect.getsource(cls))
        toks = list(tokenize.generate_tokens(io.StringIO(src).readline))
    except (OSError, TypeError, tokenize.TokenError, SyntaxError):  # IndentationError is a SyntaxError
        return {}
    found: dict[str, str] = {}
    depth = 0  # INDENT level: the source starts at the decorators / `class`, so the body is level 1
    line: list = []  # significant tokens of the logical line being read
    trailing: list[str] = []  # comments inside that logical line
    above: list[tuple[int, str]] = []  # (column, text) of the whole-line comments just before it
    for tok in toks:
        if tok.type == tokenize.INDENT:
            depth += 1
        elif tok.type == tokenize.DEDENT:
            depth -= 1
        elif tok.type == tokenize.COMMENT:
            if line:
                trailing.append(_comment_text(tok.string))
            else:
                above.append((tok.start[1], _comment_text(tok.string)))
        elif tok.type == tokenize.NL:
            if not line and not tok.line.strip():  # a blank line: comments before it are not "directly above"
                above = []
        elif tok.type == tokenize.NEWLINE:
            if (depth == 1 and len(line) >= 2 and line[0].type == tokenize.NAME
                    and line[1].type == tokenize.OP and line[1].string == ":"):
                col = line[0].start[1]
                text = " ".join(t for t in trailing if t) or " ".join(t for c, t in above if c == col and t)
                found.setdefault(line[0].string, text)
            line, trailing, above = [], [], []
        elif tok.type not in (tokenize.ENCODING, tokenize.ENDMARKER):
            line.append(tok)
    return found


@functools.cache
def _field_docs(cls) -> dict[str, str]:
    comments: dict[str, str] = {}
    for base in reversed(cls.__mro__):  # a subclass's own comment wins over its base's
        if dataclasses.is_dataclass(base):
            comments.update({k: v for k, v in _source_comments(base).items() if v or k not in comments})
    docs = {}
    for f in dataclasses.fields(cls):
        help_text = f.metadata.get("help") if f.metadata else None
        docs[f.name] = " ".join(str(help_text).split()) if help_text else comments.get(f.name, "")
    return docs


def field_docs(cls) -> dict[str, str]:
    """The one-line meaning of each field of dataclass `cls`: `field(metadata={"help": ...})`, else the
    trailing comment on the field's line in the class source, else the comment line(s) directly above
    the field, else "". Without readable source only the metadata counts. Cached per class."""
    return dict(_field_docs(cls))


def type_name(tp) -> str:
    """A field's annotated type as a user reads it: int, float | None, [float, float], mapping, ..."""
    if tp is None or tp is type(None):
        return "None"
    if isinstance(tp, str):  # an annotation get_type_hints could not resolve
        return tp
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_name(a) for a in args)
    if origin is typing.Literal:
        return " | ".join(json.dumps(a) for a in args)
    if origin is tuple:
        if not args:
            return "list"
        if len(args) == 2 and args[1] is Ellipsis:
            return f"[{type_name(args[0])}, ...]"
        return "[" + ", ".join(type_name(a) for a in args) + "]"
    if origin in (list, set, frozenset) or tp in (list, tuple, set, frozenset):
        return f"[{type_name(args[0])}, ...]" if args else "list"
    if tp is dict or origin is dict or (isinstance(origin, type) and issubclass(origin, collections.abc.Mapping)):
        return "mapping"
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _json_text(value) -> str:
    """A value as it is written on the command line: JSON (32, null, true, "causal", [0.9, 0.95], {})."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    try:
        return json.dumps(value, allow_nan=False, ensure_ascii=False)
    except (TypeError, ValueError):
        return repr(value)


_NO_DEFAULT = object()


def _default_of(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        try:
            return f.default_factory()
        except Exception:  # a factory that needs more than nothing: show the field as required
            return _NO_DEFAULT
    return _NO_DEFAULT


def _settings(cls, prefix: str, value):
    """Yield ("row", (name, type, default, meaning)) for leaf settings and ("section", (prefix, cls,
    field meaning)) before each nested dataclass's own rows, in declaration order. `value` is an
    instance whose values are the defaults (a nested field's default_factory result), or None."""
    try:
        hints = typing.get_type_hints(cls)
    except Exception:  # unresolvable annotations: show them as written
        hints = {}
    docs = field_docs(cls)
    for f in dataclasses.fields(cls):
        if not f.init:  # computed in __post_init__: not a setting
            continue
        tp = hints.get(f.name, f.type)
        if value is not None:
            default = getattr(value, f.name, _NO_DEFAULT)
        else:
            default = _default_of(f)
        name = prefix + f.name
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            yield "section", (name, tp, docs[f.name])
            nested = default if isinstance(default, tp) else None
            yield from _settings(tp, name + ".", nested)
        else:
            shown = "(required)" if default is _NO_DEFAULT else _json_text(default)
            yield "row", (name, type_name(tp), shown, docs[f.name])


def describe(cls, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """Every setting of dataclass `cls` as (dotted name, type, default as JSON, meaning), nested
    dataclass fields expanded in place as `name.sub` (no row of their own). A default_factory's value
    is shown; fields with init=False and properties are not settings."""
    return [item for what, item in _settings(cls, prefix, None) if what == "row"]


def _first_doc_line(cls) -> str:
    doc = cls.__dict__.get("__doc__") or ""
    if doc.startswith(cls.__name__ + "("):  # the signature @dataclass writes when there is no docstring
        return ""
    lines = inspect.cleandoc(doc).strip().splitlines()
    return lines[0].strip() if lines else ""


def settings_help(cls, title: str, width: int = 120) -> str:
    """A text table of every setting of `cls` (see `describe`), grouped by section: the top-level
    settings first, then a heading and the rows of each nested dataclass. For argparse's epilog
    (with RawDescriptionHelpFormatter)."""
    rows: list[tuple[str, str, str, str]] = []
    groups: dict[str, list] = {"": []}
    headings = {"": f"{cls.__name__} (top level)" + (f": {d}" if (d := _first_doc_line(cls)) else "")}
    for what, item in _settings(cls, "", None):
        if what == "section":
            name, sub, meaning = item
            doc = _first_doc_line(sub) or meaning
            headings[name] = f"{name} ({sub.__name__})" + (f": {doc}" if doc else "")
            groups[name] = []
        else:
            rows.append(item)
            groups[item[0].rpartition(".")[0]].append(item)

    mappings = [r[0] for r in rows if r[1] == "mapping"]
    example = next((r for r in rows if "." in r[0] and r[2] not in ("(required)", "null")), None)
    notes = ["Settings are key=value arguments; a later one wins over an earlier one (and over a preset's).",
             "Values are JSON: numbers, true/false, null, lists like [1, 2]; strings quoted or bare."]
    if example:
        notes.append(f"Nested settings have dotted names, e.g. {example[0]}={example[2]}.")
    if mappings:
        m = mappings[0]
        notes.append(f"{', '.join(mappings)} {'is a free mapping' if len(mappings) == 1 else 'are free mappings'}, "
                     f'given whole ({m}={{"key": 1}}) or key by key ({m}.key=1); the keys are not checked here but '
                     f"against the parameters of what the mapping configures (e.g. the task's own).")
    notes.append("Columns: name, type, default (as written on the command line), meaning.")

    def cap(values, limit):
        return min(max((len(v) for v in values), default=0), limit)

    w_name, w_type, w_default = (cap([r[i] for r in rows], lim) for i, lim in ((0, 32), (1, 16), (2, 16)))
    lead = 2 + w_name + 2 + w_type + 2 + w_default + 2
    out = [title]
    for note in notes:
        out += textwrap.wrap(note, width=width, initial_indent="  ", subsequent_indent="    ")
    for key, group in groups.items():
        if key == "" and not group:
            continue
        out += [""] + textwrap.wrap(headings[key], width=width, subsequent_indent="    ")
        if not group:
            out.append("  (no settings)")
        for name, tp, default, meaning in group:
            head = f"  {name:<{w_name}}  {tp:<{w_type}}  {default:<{w_default}}"
            if not meaning:
                out.append(head.rstrip())
                continue
            pad = max(lead, len(head) + 2)
            lines = textwrap.wrap(meaning, width=max(width - pad, 30)) or [""]
            out.append(head.ljust(pad) + lines[0])
            out += [" " * lead + more for more in lines[1:]]
    return "\n".join(out) + "\n"
