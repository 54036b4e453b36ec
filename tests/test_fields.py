"""Settings a user can discover: `memtrain.fields.describe` / `settings_help` read every setting's type,
default and meaning from the configuration dataclasses, and `memtrain train --help` /
`memtrain config --help` print them."""
from __future__ import annotations

import dataclasses
import re
import typing
from dataclasses import dataclass, field
from typing import Optional

import pytest

from memtrain.cli import main
from memtrain.fields import describe, field_docs, settings_help
from memtrain.training.config import RunConfig

ROW = re.compile(r"^  ([A-Za-z_][\w.]*)  ")  # a setting row: two spaces, the name, at least two spaces


@dataclass
class _Inner:
    """A nested section.

    More text that is not shown."""

    depth: int = 2  # blocks per layer
    # a comment above a field is not its meaning (only the comment on its line is)
    width: float = 0.5  # width of one unit, in tokens
    bare: str = "x"

    def validate(self) -> None:
        pass  # a comment inside a method

    after: bool = True  # declared after a method


@dataclass
class _Outer:
    name: str = "causal"  # the name
    betas: tuple[float, float] = (0.9, 0.95)  # two betas
    limit: Optional[float] = None  # a limit (None: none)
    args: dict = field(default_factory=dict)  # a free mapping
    helped: int = field(default=3, metadata={"help": "from the metadata"})  # loses to the metadata
    inner: _Inner = field(default_factory=lambda: _Inner(depth=5))
    multi: int = field(
        default=7,
    )  # a field over several lines
    computed: int = field(default=0, init=False)  # set in __post_init__: not a setting

    @property
    def twice(self) -> int:  # a property: not a setting
        return 2 * self.multi


def _help(sub: str, capsys) -> str:
    with pytest.raises(SystemExit) as e:
        main([sub, "--help"])
    assert e.value.code == 0
    return capsys.readouterr().out


def _table(text: str) -> str:
    """The epilog: what argparse prints after its options block."""
    return text[text.index("\n\n", text.index("options:")):]


def _sections(cls, prefix=""):
    yield prefix, cls
    for name, tp in typing.get_type_hints(cls).items():
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            yield from _sections(tp, prefix + name + ".")


def _missing_meanings() -> list[str]:
    return [name for name, _, _, meaning in describe(RunConfig) if not meaning]


def test_every_setting_has_a_meaning():
    assert _missing_meanings() == []


def test_describe_a_small_dataclass():
    assert describe(_Outer) == [
        ("name", "str", '"causal"', "the name"),
        ("betas", "[float, float]", "[0.9, 0.95]", "two betas"),
        ("limit", "float | None", "null", "a limit (None: none)"),
        ("args", "mapping", "{}", "a free mapping"),
        ("helped", "int", "3", "from the metadata"),
        ("inner.depth", "int", "5", "blocks per layer"),  # the default_factory's value, not _Inner's 2
        ("inner.width", "float", "0.5", "width of one unit, in tokens"),
        ("inner.bare", "str", '"x"', ""),
        ("inner.after", "bool", "true", "declared after a method"),
        ("multi", "int", "7", "a field over several lines"),
    ]
    assert describe(_Inner, prefix="x.")[0] == ("x.depth", "int", "2", "blocks per layer")


def test_field_docs_without_source_keeps_the_metadata():
    cls = dataclasses.make_dataclass("NoSource", [("a", int, field(default=1, metadata={"help": "  from\n metadata "})),
                                                 ("b", int, field(default=2))])
    assert field_docs(cls) == {"a": "from metadata", "b": ""}
    assert describe(cls) == [("a", "int", "1", "from metadata"), ("b", "int", "2", "")]


def test_settings_help_groups_by_section():
    text = settings_help(_Outer, "TITLE")
    lines = text.splitlines()
    assert lines[0] == "TITLE"
    assert "inner (_Inner): A nested section." in lines
    assert "More text" not in text
    assert 'task_args={"key": 1}' in text  # how to give a mapping
    rows = [ROW.match(line)[1] for line in lines if ROW.match(line)]
    # top-level settings first (multi too, though declared after inner), then each section
    assert rows == ["name", "betas", "limit", "args", "helped", "multi", "inner.depth", "inner.width", "inner.bare",
                    "inner.after"]


def test_train_help_lists_every_setting(capsys):
    text = _help("train", capsys)
    assert text.startswith("usage: memtrain train") and "--preset" in text
    assert "`memtrain train --help`" in text  # the overrides argument points here
    table = _table(text)
    rows = {}
    for line in table.splitlines():
        if m := ROW.match(line):
            rows[m[1]] = line.split()
    names = [r[0] for r in describe(RunConfig)]
    assert sorted(rows) == sorted(names) and len(names) == len(set(names))
    assert sum(1 for line in table.splitlines() if ROW.match(line)) == len(names)
    dec = " ".join(rows["smt.dec_samples"])
    assert dec.startswith("smt.dec_samples int | None 8 ")
    assert "memories" in dec and "decoder" in dec  # words of its comment
    for name in ("train.lr", "cell.kind", "teacher.window"):
        assert name in rows
    sections = [(prefix, cls) for prefix, cls in _sections(RunConfig) if prefix]
    assert len(sections) >= 6  # teacher, cell, smt, dmt, bptt, train (and any added since)
    for prefix, cls in sections:
        assert f"\n{prefix.rstrip('.')} ({cls.__name__})" in table


def test_config_help_shows_the_same_table(capsys):
    train_table = _table(_help("train", capsys))
    text = _help("config", capsys)
    assert text.startswith("usage: memtrain config")
    assert _table(text) == train_table


def test_coerce_reads_a_list_item_by_item():
    from memtrain.fields import coerce
    assert coerce([48, 336], list[int], "task_args.lags") == [48, 336] and coerce((2,), list[int], "k") == [2]
    with pytest.raises(ValueError, match="task_args.lags must be an integer, got 4.5"):
        coerce([4.5], list[int], "task_args.lags")
    with pytest.raises(ValueError, match="k must be a list, got 3"):
        coerce(3, list[int], "k")
