"""A training method added from outside the package: one class and one registry entry, trained by the
ordinary loop and the command line, with checkpoints and an exact resume; the trainer is untouched."""
from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from memtrain.cli import main
from memtrain.methods import METHODS, Method, method_class, register
from memtrain.methods.rollout import rollout
from memtrain.presets import preset_config
from memtrain.training.trainer import train


@dataclass
class RegressConfig:
    scale: float = 1.0  # size of the target trajectory
    horizon: int | None = 1  # gradient horizon of the rollout

    def validate(self) -> None:
        if self.scale <= 0:
            raise ValueError(f"method_args.scale must be > 0, got {self.scale}")


class Regress(Method):
    """Teacher-free regression of the cell's rollout onto a fixed random trajectory."""

    name, config_class = "regress", RegressConfig

    def __init__(self, teacher, cell, cfg: RegressConfig, rollout=None):
        super().__init__(teacher, cell, cfg, rollout)
        target = cfg.scale * torch.randn(64, cell.Z, generator=torch.Generator().manual_seed(0))
        self.register_buffer("target", target)  # the method's own tensor: saved in training checkpoints

    def loss(self, x, y, gen=None):
        B, T = x.shape
        M = rollout(self.cell, self.cell.init_memory(B), x, self.cfg.horizon, self.rollout)  # (B, T+1, Z)
        loss = F.mse_loss(M[:, 1:], self.target[:T].expand(B, -1, -1))
        return loss, {"loss_regress": loss.detach()}


@pytest.fixture
def registered(monkeypatch):
    monkeypatch.setitem(METHODS, "regress", Regress)  # what register() does, undone after the test
    return Regress


SETTINGS = ["method=regress", 'method_args={"scale": 0.5}', "train.log_every=1", "train.ckpt_every=4", "train.lr=3e-3"]


def _losses(out):
    return [r["loss"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


def test_register_adds_a_method_by_name():
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("memtrain.methods.METHODS", dict(METHODS))
        import memtrain.methods as methods

        assert register(Regress) is Regress and methods.METHODS["regress"] is Regress
        assert methods.method_class("regress") is Regress
    with pytest.raises(ValueError, match="method must be one of"):
        method_class("regress")
    with pytest.raises(ValueError, match="Method subclass"):
        register(int)


def test_a_registered_method_trains_through_the_loop(registered, tmp_path):
    summary = train(preset_config("tiny", SETTINGS + ["train.steps=40", f"out_dir={tmp_path / 'r'}"]), progress=False)
    losses = _losses(tmp_path / "r")
    assert summary["method"] == "regress" and summary["steps"] == 40
    assert summary["sequential_steps"] == 12, "the default: one cell step per input"
    assert len(losses) == 40 and losses[-1] < 0.8 * losses[0], "the regression is learned"
    assert "teacher_acc" not in summary, "no teacher was built"
    tensors = load_file(str(tmp_path / "r" / "checkpoints" / "step-00000040" / "model.safetensors"))
    assert "method.target" in tensors and not any(k.startswith("teacher.") for k in tensors)


def test_a_registered_method_resumes_exactly_from_the_command_line(registered, tmp_path, capsys):
    straight, parts = tmp_path / "straight", tmp_path / "parts"
    assert main(["train", "--preset", "tiny", "--quiet", *SETTINGS, "train.steps=12", f"out_dir={straight}"]) == 0
    assert main(["train", "--preset", "tiny", "--quiet", *SETTINGS, "train.steps=6", f"out_dir={parts}"]) == 0
    capsys.readouterr()
    assert main(["train", "--preset", "tiny", "--quiet", *SETTINGS, "train.steps=12", f"out_dir={parts}"]) == 0
    assert "resuming" in capsys.readouterr().err
    assert _losses(parts) == _losses(straight)
    a, b = load_file(str(parts / "model.safetensors")), load_file(str(straight / "model.safetensors"))
    assert sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("bad,named", [('method_args={"scale": -1}', "method_args.scale"),
                                       ('method_args={"colour": 1}', "method_args.colour"),
                                       ("smt.future=3", None)])
def test_bad_method_args_are_one_clear_error(registered, tmp_path, capsys, bad, named):
    rc = main(["train", "--preset", "tiny", "--quiet", "method=regress", bad, "train.steps=2", f"out_dir={tmp_path / 'x'}"])
    if named is None:  # another method's section may be set: it is simply not used
        assert rc == 0
        return
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and named in err[0]
    assert not (tmp_path / "x").exists()


def test_method_args_are_refused_for_a_method_with_its_own_section(tmp_path, capsys):
    rc = main(["train", "--preset", "tiny", "--quiet", 'method_args={"future": 3}', f"out_dir={tmp_path / 'x'}"])
    err = capsys.readouterr().err
    assert rc == 2 and "smt.<name>" in err
