"""The numerical pieces of benchmarks/ against plain references, and the results writer."""
import json
import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from common import md_table, training_update, write_results  # noqa: E402
from grad_profile import bptt_profile, smt_cell_profile  # noqa: E402
from memory_geometry import effective_rank, mean_pairwise_distance  # noqa: E402


def test_effective_rank_of_known_spectra():
    g = torch.Generator().manual_seed(0)
    Q, _ = torch.linalg.qr(torch.randn(50, 50, generator=g, dtype=torch.float64))
    U, V = Q[:, :8], torch.linalg.qr(torch.randn(8, 8, generator=g, dtype=torch.float64))[0]
    X = U @ torch.diag(torch.tensor([3.0] * 4 + [0.0] * 4, dtype=torch.float64)) @ V.T  # 4 equal singular values
    X = torch.cat([X, -X])  # rows that already average to zero: centring leaves the spectrum (x sqrt 2)
    assert effective_rank(X) == pytest.approx(4.0, rel=1e-6)
    s = torch.tensor([4.0, 2.0, 1.0, 1.0], dtype=torch.float64)
    p = s / s.sum()
    ref = float(torch.exp(-(p * p.log()).sum()))
    Y = U[:, :4] @ torch.diag(s) @ torch.linalg.qr(torch.randn(4, 4, generator=g, dtype=torch.float64))[0].T
    Y = torch.cat([Y, -Y])
    assert effective_rank(Y) == pytest.approx(ref, rel=1e-6)
    line = torch.arange(10.0)[:, None] * torch.ones(1, 5)  # every row on one line
    assert effective_rank(line) == pytest.approx(1.0, abs=1e-6)


def test_mean_pairwise_distance_matches_loop():
    X = torch.randn(7, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ref = sum(float((X[i] - X[j]).norm()) for i in range(7) for j in range(7) if i != j) / (7 * 6)
    assert mean_pairwise_distance(X) == pytest.approx(ref, rel=1e-10)


class ScaleCell(torch.nn.Module):
    """m' = a * m + e(x): dL/dm_t = a^(T-t) dL/dm_T exactly."""

    def __init__(self, a: float, Z: int = 3, V: int = 4):
        super().__init__()
        self.a = a
        self.embed = torch.nn.Embedding(V, Z).double()
        self.head = torch.nn.Linear(Z, V).double()

    def init_memory(self, B):
        return torch.zeros(B, self.embed.embedding_dim, dtype=torch.float64)

    def update(self, m, x):
        return self.a * m + self.embed(x)

    def readout(self, m):
        return self.head(m)


def test_bptt_profile_is_the_chain_rule():
    torch.manual_seed(0)
    T, B = 6, 2
    x = torch.randint(0, 4, (B, T))
    y = torch.full((B, T), -1)
    y[:, -1] = torch.randint(0, 4, (B,))  # only the last position supervised
    for a in (0.5, 2.0):
        g = bptt_profile(ScaleCell(a), x, y)
        assert len(g) == T + 1
        for t in range(T + 1):
            assert g[t] == pytest.approx(g[T] * a ** (T - t), rel=1e-9)


def test_smt_cell_profile_is_per_step_and_never_through_time():
    """The gradient at step t only depends on that step's error: perturbing the teacher memory of a
    later step leaves the earlier steps' gradients unchanged."""
    torch.manual_seed(0)
    Z, T, B = 3, 5, 2

    class Enc:
        def __init__(self, M):
            self.M = M

        def encode(self, x):
            return self.M

    M = torch.randn(B, T + 1, Z, dtype=torch.float64)
    x = torch.randint(0, 4, (B, T))
    cell = ScaleCell(0.7, Z)
    g1 = smt_cell_profile(Enc(M), cell, x, 1.0)
    M2 = M.clone()
    M2[:, -1] += 1.0  # the target of the last step only
    g2 = smt_cell_profile(Enc(M2), cell, x, 1.0)
    assert len(g1) == T and g1[:-1] == pytest.approx(g2[:-1], rel=1e-12) and g1[-1] != pytest.approx(g2[-1])
    # reference: d/dm_t of mean((a m_t + e(x_t) - M_{t+1})^2) over B*T*Z elements, norm per sequence, mean
    with torch.no_grad():
        r = 2 * 0.7 * (0.7 * M[:, :-1] + cell.embed(x) - M[:, 1:]) / (B * T * Z)
    assert g1 == pytest.approx(r.norm(dim=-1).mean(0).tolist(), rel=1e-9)


def test_write_results_and_table(tmp_path):
    table = md_table(["a", "b"], [[1, 0.5], [None, 1e-5], ["x", 12345.0]])
    assert table.splitlines() == ["| a | b |", "|---|---|", "| 1 | 0.500 |", "| - | 1e-05 |", "| x | 12,345 |"]
    paths = write_results("demo_bench", {"figure": 1.5}, table, None, tmp_path)
    assert [p.name for p in paths] == ["demo_bench.json", "demo_bench.md"]
    data = json.loads(paths[0].read_text())
    assert data["figure"] == 1.5 and data["benchmark"] == "demo_bench" and "torch" in data["machine"]
    assert table in paths[1].read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo_bench.json", "demo_bench.md"]  # no temp files left


def test_training_update_matches_a_manual_adamw_step():
    """The timed update is one clipped AdamW step of the given loss, as the training loop does it."""
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(5, dtype=torch.float64) * 10)
    ref, w0 = torch.nn.Parameter(w.detach().clone()), w.detach().clone()
    training_update(lambda: (w ** 2).sum(), [w], lr=0.1, clip=1.0)()
    opt = torch.optim.AdamW([ref], lr=0.1)
    (ref ** 2).sum().backward()
    torch.nn.utils.clip_grad_norm_([ref], 1.0)
    opt.step()
    torch.testing.assert_close(w.detach(), ref.detach())
    assert not torch.equal(w.detach(), w0)  # it moved


def test_a_curriculum_run_counts_both_stages(tmp_path):
    """length_sweep's row for a curriculum run: stage 1's seconds and updates are added, the curve
    (at the full length) is shifted by them, and the equal-updates reading takes the last point."""
    from length_sweep import at_updates, summarise

    def run(d, method, length, lr, summary, rows, init_from=None):
        d.mkdir()
        cfg = {"method": method, "cell": {"kind": "mlp"}, "task_args": {"length": length}, "train": {"seed": 0, "lr": lr},
               "init_from": init_from}
        (d / "run.json").write_text(json.dumps({"config": cfg, "summary": summary}))
        (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    first = tmp_path / "smt-dmt-T32-s0-stage1"
    run(first, "smt-dmt", 32, 1e-3, {"rnn_acc": 1.0, "train_seconds": 300.0, "steps": 1500}, [])
    second = tmp_path / "smt-dmt-T256-s0-x"
    run(second, "bptt", 256, 1e-5, {"rnn_acc": 0.8, "train_seconds": 900.0, "steps": 2000},
        [{"step": 50, "time": 20.0, "rnn_acc": 0.9}, {"step": 100, "time": 40.0, "rnn_acc": 0.96}], init_from=str(first))
    r = summarise(second)
    assert r["method"] == "smt-dmt@32 -> bptt" and r["seconds"] == 1200.0 and r["updates"] == 3500
    assert r["curve"] == [(1550, 320.0, 0.9), (1600, 340.0, 0.96)] and (r["to_target_s"], r["to_target_updates"]) == (340.0, 1600)
    assert at_updates(r, 1599) == 0.9 and at_updates(r, 1000) is None


def test_length_sweep_reports_each_task_apart(tmp_path):
    """Runs of another task (--task copy) get their own task column, panel and equal-updates point;
    rows recorded before runs carried a task read as retrieval."""
    from argparse import Namespace

    from length_sweep import report

    def run(name, task, steps):
        d = tmp_path / "runs" / name
        d.mkdir(parents=True)
        cfg = {"method": "bptt", "task": task, "cell": {"kind": "torch-lstm"}, "task_args": {"length": 64},
               "train": {"seed": 0, "lr": 1e-3}, "init_from": None}
        (d / "run.json").write_text(json.dumps({"config": cfg, "summary": {"rnn_acc": 0.5, "train_seconds": 10.0, "steps": steps}}))
        (d / "metrics.jsonl").write_text("".join(json.dumps({"step": k, "time": k / 10, "rnn_acc": k / steps}) + "\n"
                                                 for k in (steps // 2, steps)))

    run("bptt-lstm-T64-s0", "retrieval", 100)
    run("copy-bptt-lstm-T64-s0", "copy", 40)
    old = dict(json.loads((tmp_path / "runs" / "bptt-lstm-T64-s0" / "run.json").read_text()))
    del old["config"]["task"]  # a 0.3 row: no task recorded
    (tmp_path / "runs" / "bptt-lstm-T64-s0" / "run.json").write_text(json.dumps(old))
    report(Namespace(root=str(tmp_path / "runs"), results=str(tmp_path / "out")))
    lines = [ln for ln in (tmp_path / "out" / "length_sweep.md").read_text().splitlines() if ln.startswith("| ")][1:]
    cells = [[c.strip() for c in ln.strip("|").split("|")] for ln in lines]
    assert [(c[0], c[1]) for c in cells] == [("bptt-lstm-T64-s0", "retrieval"), ("copy-bptt-lstm-T64-s0", "copy")]
    assert [c[-3] for c in cells] == ["1.000 at 100", "1.000 at 40"]  # each task read at its own fewest updates
    assert [c[-2:] for c in cells] == [["- / -", "-"]] * 2  # no teacher: no contraction figures


def test_length_sweep_row_carries_the_last_contraction_figures():
    from length_sweep import contraction_at_end
    rows = [{"step": 1, "rnn_acc": 0.1, "kstep@64": 0.5, "kstep@128": 0.9, "drift@128": 1.0},
            {"step": 2, "rnn_acc": 0.9, "kstep@64": 0.02, "kstep@128": 0.05, "drift@128": 0.1},
            {"step": 2, "event": "handover", "rnn_acc": 0.9}]
    assert contraction_at_end(rows, 128) == {"kstep64": 0.02, "kstepT": 0.05, "drift_end": 0.1}
    assert contraction_at_end([], 128) == {"kstep64": None, "kstepT": None, "drift_end": None}


def _tiny_text_model():
    """A float64 teacher and cell from the tiny preset (retrieval's vocabulary of 9)."""
    from memtrain import build
    from memtrain.presets import preset_config

    torch.manual_seed(0)
    _, teacher, cell, _ = build(preset_config("tiny", ["method=smt"]))
    return teacher.double().eval(), cell.double().eval()


def test_text_scores_match_evaluate():
    """text_vs_authors' bits per byte, in float64: the RNN alone over both halves of a window is
    memtrain's evaluate() of the whole window; the teacher's next token after exactly `prompt` tokens
    is evaluate() with every other target masked; an RNN prompted by its own memory of the prompt
    scores what it scores alone on the same targets."""
    from text_vs_authors import MemtrainModel, score

    from memtrain.methods.evaluate import evaluate

    teacher, cell = _tiny_text_model()
    w = torch.randint(0, 9, (5, 12), generator=torch.Generator().manual_seed(1))
    p = 6
    model = MemtrainModel(teacher, cell)
    s = score(model, w, prompt=p)
    whole = evaluate(cell, teacher, w[:, :-1], w[:, 1:])
    L = w.shape[1] - 1  # targets w[:, 1:]
    assert (s["rnn_alone_first_bits"] * (p - 1) + s["rnn_alone_bits"] * (L - p + 1)) / L == pytest.approx(whole["rnn_bits"], rel=1e-9)
    ref = []
    for j in range(w.shape[1] - p):
        y = torch.full((5, p), -1)
        y[:, -1] = w[:, j + p]
        ref.append(evaluate(cell, teacher, w[:, j:j + p], y)["teacher_bits"])
    assert s["teacher_bits"] == pytest.approx(sum(ref) / len(ref), rel=1e-9)

    class SelfPrompted(MemtrainModel):
        def teacher_memory(self, ctx):
            m = self.init(len(ctx))
            for t in range(ctx.shape[1]):
                m = self.step(m, ctx[:, t])
            return m

    own = score(SelfPrompted(teacher, cell), w, prompt=p)
    assert own["rnn_prompted_bits"] == pytest.approx(own["rnn_alone_bits"], rel=1e-9)
    assert own["rnn_prompted_bits"] != pytest.approx(s["rnn_prompted_bits"], rel=1e-6)  # the teacher's prompt differs


def test_text_vs_authors_without_their_code_says_how_to_get_it(tmp_path, capsys):
    import numpy as np
    from text_vs_authors import main

    (tmp_path / "kjv").mkdir()
    np.save(tmp_path / "kjv" / "val.npy", np.arange(1000) % 256)
    with pytest.raises(SystemExit) as e:
        main(["lane", "authors", "--data", str(tmp_path / "kjv"), "--authors-src", str(tmp_path / "none"),
              "--root", str(tmp_path / "runs")])
    assert e.value.code == 2
    assert "git clone https://github.com/akarshkumar0101/smt" in capsys.readouterr().out
    assert not (tmp_path / "runs").exists()  # nothing written


def test_text_vs_authors_report_reads_one_root_per_seed(tmp_path):
    """The report puts every finished lane of every root (one per seed) in one table, lanes in their
    fixed order, seeds then learning rates ascending within a lane, with each stage's figures as
    recorded; then each side's best over its rates and the seconds it needed to reach --target."""
    import json

    from text_vs_authors import main

    def lane(root, name, seed, stages, lr=None):
        root.mkdir(exist_ok=True)
        tag = "" if lr is None else f"-lr{lr:g}"
        (root / f"{name}{tag}.json").write_text(json.dumps({"lane": name, "seed": seed, "lr": lr, "stages": stages}))

    stage = lambda bits: {"updates": 10, "train_seconds": 5.0, "rnn_alone_bits": bits, "rnn_alone_first_bits": bits + 1}
    curve = [{**stage(6.0), "train_seconds": 2.0}, {**stage(2.9), "train_seconds": 4.0}, stage(2.8)]
    lane(tmp_path / "s1", "memtrain", 1, {"smt": stage(4.0), "dmt": {**stage(3.5), "teacher_bits": 3.0, "rnn_prompted_bits": 3.25}})
    lane(tmp_path / "s0", "bptt-lstm", 0, {"bptt": {**stage(2.8), "curve": curve}}, lr=3e-3)
    lane(tmp_path / "s0", "bptt-lstm", 0, {"bptt": stage(2.5)}, lr=1e-3)
    lane(tmp_path / "s0", "memtrain", 0, {"smt": stage(4.5), "dmt": stage(3.75)})
    (tmp_path / "s0" / "notes.json").write_text("{}")  # not a lane: ignored
    main(["report", "--root", str(tmp_path / "s0"), str(tmp_path / "s1"), "--results", str(tmp_path / "out"), "--target", "3.0", "2.6"])
    text = (tmp_path / "out" / "text_vs_authors.md").read_text()
    first, second = text.split("Each side's best")
    lines = [ln for ln in first.splitlines() if ln.startswith("| ")][1:]
    cells = [[c.strip() for c in ln.strip("|").split("|")] for ln in lines]
    assert [(c[0], c[1], c[2], c[3]) for c in cells] == [
        ("memtrain SMT -> DMT", "own default", "0", "smt"), ("memtrain SMT -> DMT", "own default", "0", "dmt"),
        ("memtrain SMT -> DMT", "own default", "1", "smt"), ("memtrain SMT -> DMT", "own default", "1", "dmt"),
        ("BPTT, torch's fused LSTM", "0.001", "0", "bptt"), ("BPTT, torch's fused LSTM", "0.003", "0", "bptt")]
    assert cells[3][6:] == ["3.000", "3.250", "3.500", "4.500"] and cells[4][6:8] == ["-", "-"]
    best = {c[0]: c for c in ([x.strip() for x in ln.strip("|").split("|")] for ln in second.splitlines()
                              if ln.startswith("| "))}
    assert best["memtrain"][1:4] == ["3.000 (lr own default)", "3.250 (lr own default)", "3.500 (lr own default)"]
    assert best["memtrain"][4:7] == ["10", "not reached", "not reached"]  # 5 s of SMT, then 5 of DMT
    assert best["memtrain"][7:] == ["not reached"] * 3 and best["BPTT, fused LSTM"][7:] == ["not reached", "not reached", "5"]
    lstm = best["BPTT, fused LSTM"]
    assert lstm[1:4] == ["-", "-", "2.500 (lr 0.001)"]
    assert lstm[4:7] == ["not reached", "not reached", "4"]  # lr 3e-3's curve passed 3.0 at 4 s
    assert (tmp_path / "out" / "text_vs_authors.png").is_file()


def test_text_vs_authors_checkpoints_and_timed_loop_probe(monkeypatch):
    """A stage is scored every --curve-every seconds and at its end; the authors' loop probes at each
    checkpoint it passes and its training seconds never include the probes."""
    import text_vs_authors
    from text_vs_authors import checkpoints, timed_loop

    assert checkpoints(300, 150) == [150, 300] and checkpoints(310, 150) == [150, 300, 310]
    assert checkpoints(100, 0) == [100] and checkpoints(100, None) == [100] and checkpoints(100, 150) == [100]
    now = [0.0]
    monkeypatch.setattr(text_vs_authors.time, "perf_counter", lambda: now[0])

    def update(i):
        now[0] += 1.0  # each update takes one second

    def probe():
        now[0] += 100.0  # scoring is slow, and must not count
        return {"bits": float(now[0])}

    out = timed_loop(update, 5.0, "t", probe=probe, every=2.0)
    assert out["updates"] == 5 and out["train_seconds"] == 5.0
    assert [(p["updates"], p["train_seconds"]) for p in out["curve"]] == [(2, 2.0), (4, 4.0), (5, 5.0)]
    assert out["bits"] == out["curve"][-1]["bits"]
    now[0] = 0.0
    slow = timed_loop(lambda i: now.__setitem__(0, now[0] + 3.0), 5.0, "t", probe=probe, every=1.0)
    assert [(p["updates"], p["train_seconds"]) for p in slow["curve"]] == [(1, 3.0), (2, 6.0)]  # marks 1-3 once, then 4-5
@pytest.mark.parametrize("solver", ["quasi", "jacobi"])
def test_solver_speed_workloads_update_like_stepping(solver):
    """The timed DMT and BPTT updates of benchmarks/solver_speed.py with a parallel solver leave the
    same (clipped) gradients and parameters as the stepped ones (float64): the benchmark times the
    same computation."""
    from solver_speed import workloads

    from memtrain.methods.rollout import Rollout, RolloutConfig
    from memtrain.models.cells import CellConfig, build_cell

    x = torch.randint(0, 16, (3, 12), generator=torch.Generator().manual_seed(0))
    for name in ("dmt", "bptt"):
        after = {}
        for s in ("sequential", solver):
            torch.manual_seed(0)
            cell = build_cell(CellConfig(kind="para-gru", vocab_size=16, d_mem=8, mem_tokens=2)).double()
            before = [p.detach().clone() for p in cell.parameters()]
            workloads(cell, x, Rollout(RolloutConfig(solver=s, atol=1e-12, rtol=0)))[name]()
            after[s] = [p.detach().clone() for p in cell.parameters()] + [p.grad.clone() for p in cell.parameters() if p.grad is not None]
        assert any(not torch.equal(b, a) for b, a in zip(before, after["sequential"]))
        assert len(after["sequential"]) == len(after[solver]) > len(before)
        for a, b in zip(after["sequential"], after[solver]):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_solver_speed_parts_times_the_pieces_each_cell_has():
    """--parts: stepping and the batched cell call for every cell; the diagonal / block Jacobian and
    scan only where the cell gives them in closed form (para-gru both, para-lstm blocks, mlp none)."""
    from argparse import Namespace

    from solver_speed import parts

    a = Namespace(batch=2, repeats=1)
    got = {kind: parts(kind, 8, a) for kind in ("para-gru", "para-lstm", "mlp")}
    base = {"stepped", "cell call (B*T rows)"}
    scans = lambda s: {f"{s} Jacobian", *(f"{s} scan, {scheme}" for scheme in ("loop", "Hillis-Steele", "odd-even"))}  # noqa: E731
    assert set(got["para-gru"]["seconds"]) == base | scans("diag") | scans("block")
    assert set(got["para-lstm"]["seconds"]) == base | scans("block")
    assert set(got["mlp"]["seconds"]) == base
    assert all(v > 0 for r in got.values() for v in r["seconds"].values())


def test_length_sweep_figure_is_a_grid_with_one_legend_off_the_data(tmp_path):
    """Thirteen (task, length) panels: four a row, each label one colour everywhere, its legend in no panel."""
    from length_sweep import draw

    from tests.helpers import assert_readable

    runs = [{"dir": f"r{i}", "task": task, "length": T, "method": "bptt", "cell": cell, "lr": 1e-3,
             "curve": [(10, 1.0, 0.1), (20, 2.0, 0.5)]}
            for i, (task, T, cell) in enumerate([(t, T, c) for t in ("retrieval", "copy", "kv", "stack") for T in (16, 64, 256)
                                                   for c in ("mlp", "torch-lstm")] + [("retrieval", 512, "mlp")])]
    fig = draw({"runs": runs})
    assert len(fig.axes) == 13 and {ax.get_subplotspec().get_geometry()[:2] for ax in fig.axes} == {(4, 4)}
    assert_readable(fig)
    colours = {line.get_label(): line.get_color() for ax in fig.axes for line in ax.lines if not line.get_label().startswith("_")}
    assert len(colours) == 2 and len(set(colours.values())) == 2
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["bptt mlp lr 0.001", "bptt torch-lstm lr 0.001"]


def test_every_stored_figure_redraws_readably(tmp_path):
    """Each stored result whose script has draw() is redrawn from its JSON alone (replot.py) into a
    figure of at most four panels a row with its legends off the data."""
    import importlib
    import shutil

    from replot import replot, script_of

    from tests.helpers import assert_readable

    import matplotlib.pyplot as plt

    stored = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
    drawn = []
    for f in sorted(stored.glob("*.json")):
        data = json.loads(f.read_text())
        module = importlib.import_module(script_of(data))
        if hasattr(module, "draw"):
            fig = module.draw(data)
            assert_readable(fig)
            plt.close(fig)  # (more than 20 open figures: matplotlib warns)
            drawn.append(f.stem)
    assert {"length_sweep", "step_time", "grad_profile", "memory_geometry", "drift", "copy_memory"} <= set(drawn)
    shutil.copy(stored / "length_sweep.json", tmp_path)
    assert replot("length_sweep", tmp_path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    plt.close("all")


def test_gpu_check_refuses_without_cuda(tmp_path):
    """No CUDA device: exit 2 with one line on stderr, nothing run and no JSON written."""
    import os
    import subprocess

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    root = Path(__file__).resolve().parents[1]
    p = subprocess.run(["bash", str(root / "benchmarks" / "gpu_check.sh")], capture_output=True, text=True,
                       env={**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable}, timeout=120)
    assert p.returncode == 2 and p.stdout == ""
    assert len(p.stderr.strip().splitlines()) == 1 and "no CUDA device" in p.stderr
    assert list(tmp_path.iterdir()) == []


def test_length_claim_reads_each_line_at_the_end_and_at_equal_updates(tmp_path):
    """--lines NAME=GLOB: each line's runs (any seed) at their end and at the fewest updates any
    chosen run of that length made; a pattern that matches nothing is an error naming it."""
    from length_sweep import claim_lines, claim_table, draw

    def row(name, T, seed, updates, curve):
        return {"dir": f"runs/{name}", "length": T, "seed": seed, "seconds": 100.0, "updates": updates,
                "rnn_acc": curve[-1][2], "curve": curve}

    found = [row("smt-dmt-T64-s0-x", 64, 0, 300, [(100, 10.0, 0.2), (300, 30.0, 1.0)]),
             row("smt-dmt-T64-s1-x", 64, 1, 300, [(100, 10.0, 0.4), (300, 30.0, 0.8)]),
             row("bptt-lstm-T64-s0", 64, 0, 900, [(100, 3.0, 0.1), (900, 30.0, 0.3)]),
             row("bptt-lstm-T128-s0", 128, 0, 500, [(500, 30.0, 0.15)])]
    claim = claim_lines(found, ["SMT=smt-dmt-T*-x", "LSTM=bptt-lstm-*"])
    assert claim["fewest_updates"] == {64: 300, 128: 500}
    smt = claim["lines"]["SMT"]
    assert [(r["seed"], r["at_end"], r["at_equal_updates"]) for r in smt] == [(0, 1.0, 1.0), (1, 0.8, 0.8)]
    lstm = {r["T"]: r for r in claim["lines"]["LSTM"]}
    assert lstm[64]["at_end"] == 0.3 and lstm[64]["at_equal_updates"] == 0.1  # read at 300 updates, not its 900
    assert "| SMT | 64 | 0 1 |" in claim_table(claim)
    assert draw(claim) is not None
    with pytest.raises(SystemExit, match="gru"):
        claim_lines(found, ["GRU=bptt-gru-*"])
    with pytest.raises(SystemExit, match="NAME=GLOB"):
        claim_lines(found, ["no-equals-sign"])
    import matplotlib.pyplot as plt

    plt.close("all")


def test_stream_benchmark_measures_each_checkpoint_from_the_steps_before_it():
    from stream import checkpoints, measure

    from conftest import tiny_cell

    assert checkpoints(100_000) == [10, 100, 1_000, 10_000, 100_000]
    assert checkpoints(250) == [10, 100, 250]
    res = measure(tiny_cell(), 120)
    assert [r["steps"] for r in res["rows"]] == [10, 100, 120]
    assert all(r["median_ms"] > 0 for r in res["rows"])
    assert all(r["resident_mib"] is None or r["resident_mib"] > 1 for r in res["rows"])
    assert res["memory_floats"] == tiny_cell().Z


def test_length_sweep_ends_quietly_when_a_run_is_stopped_by_a_signal(tmp_path, monkeypatch, capsys):
    """A SIGTERM stops the current run (which saves a checkpoint): the sweep says so and exits 0
    instead of failing on the missing evaluation or starting the next run."""
    import argparse

    import length_sweep

    stopped = {"method": "smt-dmt", "steps": 890, "train_seconds": 950.2, "eval_seconds": 3.0, "stopped": "SIGTERM",
               "checkpoint": "x"}
    monkeypatch.setattr(length_sweep, "train", lambda cfg, progress: stopped)
    a = argparse.Namespace(task="retrieval", threads=1, eval_every=100, eval_batch=16, overrides=[])
    with pytest.raises(SystemExit) as e:
        length_sweep._train(["method=smt-dmt"], tmp_path / "r", a, 60, 16, 0)
    assert e.value.code == 0
    assert "stopped by SIGTERM after 890 updates, 950 s; the same command resumes it" in capsys.readouterr().out


def test_forecast_benchmark_trains_each_method_for_its_seconds_and_scores_the_same_windows(tmp_path):
    import argparse
    import forecast
    from memtrain.data.prepare import prepare
    rows = ["load,dow"] + [f"{10 + (t % 24)},{t % 7}" for t in range(200)]
    (tmp_path / "s.csv").write_text("\n".join(rows) + "\n")
    prepare("series", "csv", tmp_path / "prep", progress=False, path=str(tmp_path / "s.csv"), target="load", covariates="dow",
            seasonality="24")
    a = argparse.Namespace(methods=["smt-dmt", "bptt"], data=str(tmp_path / "prep"), context=30, horizon=6, val_steps=None, test_steps=None, lags=[24], seeds=[0], seconds=2.0,
                           eval_every=5, threads=1, root=str(tmp_path / "runs"), tag="",
                           overrides=["teacher.d_model=16", "teacher.mem_tokens=2", "teacher.n_heads=2", "train.batch_size=4",
                                      "smt.future=4", "train.eval_batch=4"])
    forecast.run(a)
    # a peer's paths (as benchmarks/deepar_peer.py writes them): the truth itself as every path scores CRPS 0
    import numpy as np
    peer = tmp_path / "runs" / "deepar-s0"
    peer.mkdir()
    truth = np.arange(24, dtype=np.float64).reshape(4, 6)
    np.savez(peer / "paths.npz", paths=np.stack([truth] * 3), truth=truth, history=np.ones((4, 30)))
    (peer / "peer.json").write_text(json.dumps({"peer": "gluonts DeepAR", "seconds": 2.0, "horizon": 6, "season": 24}))
    forecast.report(argparse.Namespace(root=str(tmp_path / "runs"), samples=4, results=str(tmp_path / "res"), season=None, horizons=None))
    data = json.loads((tmp_path / "res" / "forecast.json").read_text())
    assert sorted(data["runs"]) == ["bptt-s0", "deepar-s0", "smt-dmt-s0"]
    assert data["runs"]["deepar-s0"]["rnn"][-1]["crps"] == pytest.approx(0.0) and data["runs"]["deepar-s0"]["season"] == 24
    data["runs"].pop("deepar-s0")
    assert json.loads((tmp_path / "runs" / "bptt-s0" / "run.json").read_text())["config"]["task_args"]["lags"] == [24]
    for run in data["runs"].values():
        assert run["season"] == 24 and run["windows"] == 4 and [r["horizon"] for r in run["rnn"]] == [1, 6]
        assert run["summary"]["train_seconds"] == pytest.approx(2.0, abs=1.0)
    # the series repeats every 24 steps exactly: seasonal naive is perfect
    assert data["runs"]["bptt-s0"]["seasonal_naive"][1]["crps"] == pytest.approx(0.0, abs=1e-4)


def test_forecast_select_chooses_each_rate_on_validation_windows_and_reports_its_test_scores(tmp_path):
    import argparse
    import forecast
    import numpy as np
    from memtrain.data.prepare import prepare
    from memtrain.forecast import evaluate_forecasts
    assert forecast.family_of("smt-dmt-early-s1-lags-lr3e-3") == ("smt-dmt-early-lags", 1, "3e-3")
    assert forecast.family_of("deepar-s0-lr1e-3") == ("deepar", 0, "1e-3")
    assert forecast.family_of("bptt-s0") is None and forecast.family_of("bptt-lr1e-3") is None
    rows = ["load"] + [f"{10 + (t % 24) + 0.1 * (t % 5)}" for t in range(200)]
    (tmp_path / "s.csv").write_text("\n".join(rows) + "\n")
    prepare("series", "csv", tmp_path / "prep", progress=False, path=str(tmp_path / "s.csv"), target="load", seasonality="24")
    root = tmp_path / "runs"
    for lr in ("1e-3", "3e-2"):
        a = argparse.Namespace(methods=["bptt"], data=str(tmp_path / "prep"), context=30, horizon=6, val_steps=12, test_steps=12,
                               lags=None, seeds=[0, 1], seconds=1.0, eval_every=5, threads=1, root=str(root), tag=f"-lr{lr}",
                               overrides=["train.batch_size=4", "train.eval_batch=4", f"train.lr={lr}"])
        forecast.run(a)
    # a peer at two rates: the first forecasts the validation windows exactly, the second 5 off; the
    # first's test paths are the truth + 1 everywhere, so its chosen test CRPS is 1
    for lr, off in (("1e-3", 0.0), ("3e-3", 5.0)):
        d = root / f"deepar-s0-lr{lr}"
        d.mkdir()
        truth = np.arange(12, dtype=np.float64).reshape(2, 6)
        np.savez(d / "paths_val.npz", paths=np.stack([truth + off] * 3), truth=truth, history=np.ones((2, 30)))
        np.savez(d / "paths.npz", paths=np.stack([truth + 1.0] * 3), truth=truth, history=np.ones((2, 30)))
        (d / "peer.json").write_text(json.dumps({"peer": "gluonts DeepAR", "seconds": 1.0, "horizon": 6, "season": 24, "val_every": 3}))
    (root / "deepar-s0-lr1e-2").mkdir()  # a peer without validation paths (an older deepar_peer.py): left out
    (root / "deepar-s0-lr1e-2" / "peer.json").write_text(json.dumps({"peer": "gluonts DeepAR", "seconds": 1.0, "horizon": 6}))
    np.savez(root / "deepar-s0-lr1e-2" / "paths.npz", paths=np.zeros((3, 2, 6)), truth=np.zeros((2, 6)), history=np.ones((2, 30)))
    forecast.select(argparse.Namespace(root=str(root), samples=4, results=str(tmp_path / "res"), season=None, horizons=None,
                                       val_every=3))
    fams = json.loads((tmp_path / "res" / "forecast_select.json").read_text())["families"]
    assert sorted(fams) == ["bptt", "deepar"]
    assert fams["deepar"]["chosen"] == "1e-3" and fams["deepar"]["val_crps"] == {"1e-3": 0.0, "3e-3": pytest.approx(5.0)}
    assert fams["deepar"]["test"]["deepar-s0-lr1e-3"][-1]["crps"] == pytest.approx(1.0)
    # ours: each rate's validation CRPS is its two seeds' mean over the whole horizon, on every 3rd origin
    b = fams["bptt"]
    for lr in ("1e-3", "3e-2"):
        got = [evaluate_forecasts(str(root / f"bptt-s{s}-lr{lr}"), "val", samples=4, seed=0, every=3) for s in (0, 1)]
        assert got[0]["windows"] == 3 == b["val_windows"]
        assert b["val_crps"][lr] == pytest.approx(np.mean([g["rnn"][-1]["crps"] for g in got]))
    assert b["chosen"] == min(b["val_crps"], key=b["val_crps"].get)
    assert b["runs"] == [f"bptt-s0-lr{b['chosen']}", f"bptt-s1-lr{b['chosen']}"]


def test_clone_benchmark_collects_seeded_demonstrations_and_scores_each_policy_in_the_environment(tmp_path):
    pytest.importorskip("popgym")
    import argparse
    import clone
    import numpy as np
    info = clone.write_demos("repeat-previous", 6, 2, tmp_path / "demos")
    assert info["demo_return"] == pytest.approx(1.0) and info["steps"] == 6 * 51
    z = np.load(tmp_path / "demos" / "train.npz")
    assert z["x"].shape == (6, 51, 8) and z["x"].dtype == np.float32 and z["lengths"].tolist() == [51] * 6
    assert z["y"].max() < 4, "the expert's actions are the suits"
    a = argparse.Namespace(env="repeat-previous", methods=["smt-dmt", "bptt"], data=str(tmp_path / "demos"), seeds=[0], seconds=1.0,
                           eval_every=5, threads=1, root=str(tmp_path / "runs"), tag="", curve_episodes=2,
                           overrides=["teacher.d_model=16", "teacher.mem_tokens=2", "teacher.n_heads=2", "train.batch_size=4",
                                      "smt.future=4"])
    clone.run(a)
    clone.report(argparse.Namespace(env="repeat-previous", root=str(tmp_path / "runs"), episodes=3, results=str(tmp_path / "res")))
    data = json.loads((tmp_path / "res" / "clone-repeat-previous.json").read_text())
    assert data["expert"] == pytest.approx(1.0) and sorted(data["runs"]) == ["bptt-s0", "smt-dmt-s0"]
    for run in data["runs"].values():
        assert len(run["returns"]) == 3 and all(-1.0 - 1e-9 <= r <= 1.0 + 1e-9 for r in run["returns"])
        assert run["ratio"] == pytest.approx(run["mean"]) and run["train_seconds"] == pytest.approx(1.0, abs=1.0)
    for name in ("bptt-s0", "smt-dmt-s0"):  # task=control: a return at every evaluation, the return curve
        rows = [json.loads(line) for line in (tmp_path / "runs" / "repeat-previous" / name / "metrics.jsonl").read_text().splitlines()]
        assert all(-1.0 - 1e-9 <= r["rnn_return"] <= 1.0 + 1e-9 for r in rows if "rnn_acc" in r)


def test_clone_benchmark_with_continuous_actions_scores_the_likelihood_and_the_return(tmp_path, capsys):
    """position-only-pendulum: real-valued demonstrations (the torque), a run that reports its held-out
    loss per action value (there is no accuracy), and a report over the same seeded episodes."""
    pytest.importorskip("popgym")
    import argparse
    import clone
    import numpy as np
    info = clone.write_demos("position-only-pendulum", 3, 1, tmp_path / "demos")
    z = np.load(tmp_path / "demos" / "train.npz")
    assert z["y"].dtype == np.float32 and z["y"].shape == (3, 200, 1) and z["x"].shape == (3, 200, 3)
    assert 0.75 < info["demo_return"] <= 1.0
    a = argparse.Namespace(env="position-only-pendulum", methods=["bptt"], data=str(tmp_path / "demos"), seeds=[0], seconds=1.0,
                           eval_every=5, threads=1, root=str(tmp_path / "runs"), tag="", curve_episodes=1,
                           overrides=["teacher.d_model=16", "teacher.mem_tokens=2", "teacher.n_heads=2", "train.batch_size=4"])
    clone.run(a)
    assert "held-out loss per action value" in capsys.readouterr().out
    clone.report(argparse.Namespace(env="position-only-pendulum", root=str(tmp_path / "runs"), episodes=2, results=str(tmp_path / "res")))
    data = json.loads((tmp_path / "res" / "clone-position-only-pendulum.json").read_text())
    run = data["runs"]["bptt-s0"]
    assert run["rnn_acc"] is None and math.isfinite(run["rnn_ce"]) and len(run["returns"]) == 2
    assert data["expert"] == pytest.approx(np.mean(clone.collect("position-only-pendulum", 2, seed=clone.EVAL_SEED)[2]))


def test_length_generalise_reads_each_run_alone_and_keeps_its_figures(tmp_path, monkeypatch):
    """generalise: each matching run's RNN alone at lengths it was not trained at, equal to
    evaluate_run(rnn_only=True); the figures are cached in the run's folder and reused."""
    from argparse import Namespace

    import length_sweep

    from memtrain.presets import preset_config
    from memtrain.runs import evaluate_run
    from memtrain.training.trainer import train

    run = tmp_path / "runs" / "smt-dmt-T12-s0"
    train(preset_config("tiny", [f"out_dir={run}"]), progress=False)
    a = Namespace(root=str(tmp_path / "runs"), results=str(tmp_path / "out"), lengths=[12, 30], batch=16,
                  lines=["SMT->DMT=smt-dmt-T*"])
    length_sweep.generalise(a)
    want = [r["rnn_acc"] for r in evaluate_run(str(run), lengths=[12, 30], batch_size=16, rnn_only=True)]
    data = json.loads((tmp_path / "out" / "length_generalise.json").read_text())
    (got,) = data["lines"]["SMT->DMT"]
    assert [got["acc"]["12"], got["acc"]["30"]] == want and got["trained_T"] == 12 and got["seed"] == 0
    assert (tmp_path / "out" / "length_generalise.png").is_file()

    def refuse(*args, **kw):
        raise AssertionError("a cached length was evaluated again")
    monkeypatch.setattr(length_sweep, "evaluate_run", refuse)
    length_sweep.generalise(a)  # every length cached
    with pytest.raises(SystemExit, match="no finished run"):
        length_sweep.generalise(Namespace(**{**vars(a), "lines": ["GRU=bptt-gru-*"]}))
