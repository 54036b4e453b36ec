"""memtrain.io, the one atomic writer and format-checked JSON reader, and every writer built on it:
a write that fails midway (a full disk at fsync, a rename refused, Ctrl-C) leaves the folder exactly
as it was, with no temporary file or folder behind; read_json refuses anything that is not ours."""
from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from memtrain import io
from memtrain.data import digits, pixels
from memtrain.data.prepare import load_prepared, prepare
from memtrain.sample import load_state, save_state
from memtrain.training import checkpoint as ck

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from common import write_results  # noqa: E402


def tree(root: Path) -> dict:
    """Every path under root (hidden ones included): file -> its bytes, folder -> None."""
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


def files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def fail_nth(monkeypatch, what: str, exc: BaseException, nth: int) -> list:
    """Make the nth os.fsync of a regular file (what='fsync': the data are written, not yet renamed)
    or the nth os.replace (what='replace') raise exc. Returns the call counter."""
    calls = [0]
    real = getattr(os, what)

    def fake(*args):
        if what == "replace" or stat.S_ISREG(os.fstat(args[0]).st_mode):  # fsync of a folder: not counted
            calls[0] += 1
            if calls[0] == nth:
                raise exc
        return real(*args)

    monkeypatch.setattr(os, what, fake)
    return calls


FAILURES = [("fsync", OSError(28, "injected: no space left on device")), ("fsync", KeyboardInterrupt("injected")),
            ("replace", OSError(13, "injected: permission denied")), ("replace", KeyboardInterrupt("injected"))]
FAIL_IDS = ["fsync-OSError", "fsync-KeyboardInterrupt", "replace-OSError", "replace-KeyboardInterrupt"]


def expect_failure(exc: BaseException):
    """The injected exception, or the ValueError a writer turns an OSError into (prepare), naming it."""
    return pytest.raises((type(exc), ValueError), match="injected")


# ---- every writer: (write version 0 or 1 into root, files written per call, whole-folder atomic) -------

def _run(root, v):
    torch.manual_seed(v)
    ck.save_run(root / "run", {"cell": torch.nn.Linear(3, 2)}, {"v": v})


def _checkpoint(root, v):
    torch.manual_seed(v)
    ck.save_checkpoint(root, v + 1, {"cell": torch.nn.Linear(3, 2)}, {"v": v}, {"rng.x": torch.arange(3 + v)},
                       {"train": {}}, keep=5)


def _prepared(root, v):
    src = root.with_name(root.name + "-book.txt")  # beside root: not part of what is compared
    src.write_bytes(bytes(range(32, 127)) * 3)
    prepare("text", "file", root / "data", path=str(src), val_fraction=0.1 + 0.1 * v, overwrite=True, progress=False)


def _classifier(root, v):
    torch.manual_seed(v)
    digits.save_classifier(digits.DigitClassifier(2, (4, 4), channels=(2, 2), hidden=4), root / "clf",
                           {"val_accuracy": 0.5 + v / 10})


def _state(root, v):
    save_state(root / "state.safetensors", torch.full((2, 3), float(v)), torch.Generator().manual_seed(v), {"v": v})


def _png(root, v):
    pixels.write_png_grid(np.full((3, 4, 4), 40 * (v + 1), dtype=np.uint8), root / "grid.png")


def _results(root, v):
    write_results("bench", {"figure": v}, f"| a |\n|---|\n| {v} |", None, root)


def _atomic(root, v):
    io.atomic_write(root / "file.bin", b"version %d" % v)


# name: (writer, files it writes (fsyncs), renames it makes when a previous version exists, folder-atomic:
# a failure at ANY of its steps leaves everything intact)
WRITERS = {"io.atomic_write": (_atomic, 1, 1, True), "save_run": (_run, 2, 2, False),
           "save_checkpoint": (_checkpoint, 3, 1, True), "prepare": (_prepared, 3, 2, True),
           "save_classifier": (_classifier, 2, 2, False), "save_state": (_state, 1, 1, True),
           "write_png_grid": (_png, 1, 1, True), "write_results": (_results, 2, 2, False)}


@pytest.mark.parametrize("failure", FAILURES, ids=FAIL_IDS)
@pytest.mark.parametrize("name", list(WRITERS))
def test_a_failed_write_changes_nothing(name, failure, tmp_path, monkeypatch):
    """The previous version is intact, byte for byte, and nothing new (no temporary file, no partial
    folder) appears; then a write without the failure succeeds."""
    write = WRITERS[name][0]
    root = tmp_path / "root"
    root.mkdir()
    write(root, 0)
    before = tree(root)
    what, exc = failure
    calls = fail_nth(monkeypatch, what, exc, 1)
    with expect_failure(exc):
        write(root, 1)
    assert calls[0] >= 1  # the failure really happened inside the writer
    assert tree(root) == before
    monkeypatch.undo()
    write(root, 1)
    assert tree(root) != before and set(files(root)) >= {f for f, b in before.items() if b is not None}


LATER = [(name, what, nth) for name, (_, n_fsync, n_replace, _) in WRITERS.items()
         for what, n in (("fsync", n_fsync), ("replace", n_replace)) for nth in range(2, n + 1)]


@pytest.mark.parametrize("name,what,nth", LATER, ids=[f"{n}-{w}-{k}" for n, w, k in LATER])
def test_a_failure_at_a_later_step(name, what, nth, tmp_path, monkeypatch):
    """Failing at the 2nd or 3rd file or rename: a folder-atomic writer still changes nothing (prepare
    puts the old data set back); one that renames its files one by one leaves no temporary file and no
    file that was not there before."""
    write, _, _, whole = WRITERS[name]
    root = tmp_path / "root"
    root.mkdir()
    write(root, 0)
    before = tree(root)
    calls = fail_nth(monkeypatch, what, OSError(5, "injected: I/O error"), nth)
    with expect_failure(OSError()):
        write(root, 1)
    assert calls[0] >= nth
    if whole:
        assert tree(root) == before
    else:
        assert files(root) == sorted(f for f, b in before.items() if b is not None)


@pytest.mark.parametrize("name", list(WRITERS))
def test_a_failed_first_write_leaves_no_file(name, tmp_path, monkeypatch):
    write = WRITERS[name][0]
    root = tmp_path / "root"
    root.mkdir()
    fail_nth(monkeypatch, "fsync", KeyboardInterrupt("injected"), 1)
    with pytest.raises(KeyboardInterrupt):
        write(root, 0)
    assert files(root) == []


def test_run_interrupted_between_its_files_is_refused(tmp_path, monkeypatch):
    """save_run renames its weights, then run.json: dying between the two leaves a pair whose hashes
    disagree, which read_run refuses rather than loading new weights under the old metadata."""
    _run(tmp_path, 0)
    fail_nth(monkeypatch, "replace", OSError(28, "injected"), 2)
    with pytest.raises(OSError):
        _run(tmp_path, 1)
    monkeypatch.undo()
    with pytest.raises(ValueError, match="does not match the SHA-256"):
        ck.read_run(tmp_path / "run")


def test_writers_read_back(tmp_path):
    """What the writers above write is read back by their readers (the failure tests compare bytes only)."""
    root = tmp_path / "root"
    root.mkdir()
    _run(root, 1)
    assert ck.read_run(root / "run")[0]["config"] == {"v": 1}
    _checkpoint(root, 1)
    meta, _ = ck.read_run(ck.checkpoint_dir(root, 2))
    assert meta["step"] == 2 and ck.list_checkpoints(root) == [ck.checkpoint_dir(root, 2)]
    _prepared(root, 1)
    assert load_prepared(root / "data")[0]["options"]["val_fraction"] == pytest.approx(0.2)
    _classifier(root, 1)
    assert digits.load_classifier(root / "clf").hidden == 4
    _state(root, 1)
    m, g, info = load_state(root / "state.safetensors")
    assert torch.equal(m, torch.ones(2, 3)) and info == {"v": 1}
    _png(root, 1)
    assert (root / "grid.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    _results(root, 1)
    assert json.loads((root / "bench.json").read_text())["figure"] == 1


# ---- io.atomic_write -----------------------------------------------------------------------------

def test_atomic_write_streams_from_a_writer_function(tmp_path):
    arr = np.arange(10, dtype=np.uint8)
    p = io.atomic_write(tmp_path / "a.npy", lambda f: np.save(f, arr, allow_pickle=False))
    assert np.array_equal(np.load(p), arr) and sorted(x.name for x in tmp_path.iterdir()) == ["a.npy"]

    def fails(f):
        f.write(b"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        io.atomic_write(tmp_path / "a.npy", fails)
    assert np.array_equal(np.load(p), arr) and sorted(x.name for x in tmp_path.iterdir()) == ["a.npy"]


def test_atomic_write_replaces_and_fsyncs(tmp_path, monkeypatch):
    synced = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(stat.S_ISDIR(os.fstat(fd).st_mode)), real(fd)))
    p = tmp_path / "a.json"
    assert io.atomic_write(p, b"one") == p
    io.atomic_write(str(p), b"two")
    assert p.read_bytes() == b"two" and os.listdir(tmp_path) == ["a.json"]
    assert synced == [False, True, False, True]  # the file, then its folder (the rename), each time
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(p.stat().st_mode) == 0o666 & ~umask  # an ordinary file, not mkstemp's private 0600


def test_atomic_write_not_atomic_removes_a_half_file(tmp_path, monkeypatch):
    """atomic=False writes in place (inside a folder renamed as a whole) and deletes it on failure."""
    p = tmp_path / "x.bin"
    fail_nth(monkeypatch, "fsync", OSError(28, "injected"), 1)
    with pytest.raises(OSError, match="injected"):
        io.atomic_write(p, b"data", atomic=False)
    assert os.listdir(tmp_path) == []
    monkeypatch.undo()
    io.atomic_write(p, b"data", atomic=False)
    assert p.read_bytes() == b"data"


def test_json_bytes_refuses_nan():
    assert json.loads(io.json_bytes({"a": [1, 0.5]})) == {"a": [1, 0.5]}
    with pytest.raises(ValueError):
        io.json_bytes({"a": float("nan")})


# ---- io.read_json --------------------------------------------------------------------------------

@pytest.mark.parametrize("content,match", [
    (b"{not json", r"the thing is not a ours file: m\.json is not valid JSON"),
    (b"\xff\xfe{}", r"the thing is not a ours file: m\.json is not valid JSON"),
    (b'{"format": "ours", "version": 1, "x": NaN}', r"the thing is not a ours file: m\.json is not valid JSON \(NaN is not a number"),
    (b'{"x": Infinity}', r"the thing is not a ours file: m\.json is not valid JSON \(Infinity"),
    (b"[1, 2]", r"the thing is not a ours file: m\.json holds a list, not a JSON object"),
    (b'"ours"', r"the thing is not a ours file: m\.json holds a str, not a JSON object"),
    (b'{"format": "theirs", "version": 1}', r"the thing is not a ours file \(format 'theirs', want 'ours'\)"),
    (b'{"version": 1}', r"the thing is not a ours file \(format None"),
    (b'{"format": "ours", "version": 3}', r"the thing has format version 3; this memtrain reads versions \[1, 2\]"),
    (b'{"format": "ours"}', r"the thing has format version None"),
])
def test_read_json_refuses(tmp_path, content, match):
    p = tmp_path / "m.json"
    p.write_bytes(content)
    with pytest.raises(ValueError, match=match):
        io.read_json(p, "the thing", "ours file", fmt="ours", versions=(1, 2))


def test_read_json_accepts_ours_and_names_a_missing_file(tmp_path):
    p = tmp_path / "m.json"
    p.write_bytes(io.json_bytes({"format": "ours", "version": 2, "x": [1.5]}))
    assert io.read_json(p, "the thing", "ours file", fmt="ours", versions=(1, 2))["x"] == [1.5]
    assert io.read_json(p, "the thing", "ours file") == {"format": "ours", "version": 2, "x": [1.5]}  # no fmt: any object
    with pytest.raises(ValueError, match=r"the thing is not a ours file: nope\.json does not exist"):
        io.read_json(tmp_path / "nope.json", "the thing", "ours file")


def test_readers_refuse_nan_and_non_objects(tmp_path):
    """The package's readers go through read_json: NaN and non-objects are refused with their own words."""
    root = tmp_path / "root"
    root.mkdir()
    _run(root, 0)
    meta = root / "run" / ck.META
    meta.write_text(meta.read_text().replace('"v": 0', '"v": NaN'))
    with pytest.raises(ValueError, match="is not a memtrain run: run.json is not valid JSON"):
        ck.read_run(root / "run")
    _classifier(root, 0)
    (root / "clf" / digits.META).write_text("[]")
    with pytest.raises(ValueError, match="is not a memtrain digit classifier: digits.json holds a list"):
        digits.load_classifier(root / "clf")
    _prepared(root, 0)
    (root / "data" / "meta.json").write_text('{"format": NaN}')
    with pytest.raises(ValueError, match="is not a memtrain prepared data set: meta.json is not valid JSON"):
        load_prepared(root / "data")


def test_the_data_layer_does_not_import_training():
    import ast

    for f in sorted((Path(__file__).resolve().parents[1] / "memtrain" / "data").glob("*.py")):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = ["memtrain", "data"][: max(0, 2 - node.level + 1)] if node.level else []
                names = [".".join(base + ([node.module] if node.module else []))]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            for name in names:
                assert not name.startswith("memtrain.training"), f"memtrain/data/{f.name} imports {name}"


def test_nonfinite_to_null_makes_strict_json_of_a_diverged_measurement():
    inf, nan = float("inf"), float("nan")
    row = {"step": 3, "ok": 0.5, "ce": nan, "drift": [0.0, inf, -inf], "pair": (1.0, nan), "nested": {"x": [nan]}, "name": "a"}
    clean = io.nonfinite_to_null(row)
    assert clean == {"step": 3, "ok": 0.5, "ce": None, "drift": [0.0, None, None], "pair": [1.0, None],
                     "nested": {"x": [None]}, "name": "a"}
    assert json.loads(io.json_bytes(clean)) == clean
    with pytest.raises(ValueError, match="Out of range float"):
        io.json_bytes(row)  # json_bytes itself stays strict: a measurement goes through nonfinite_to_null first
    assert row["ce"] != row["ce"], "the input is not changed"
