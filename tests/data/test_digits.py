"""Digit classifier: learns a separable synthetic set, is deterministic for a seed, `quality` counts a
hand-made case exactly, and a checkpoint comes back with identical predictions or is refused."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from memtrain.training.checkpoint import save_run
from memtrain.data.digits import (scramble, META, WEIGHTS, DigitClassifier, accuracy, load_classifier, predict_proba, quality,
                             save_classifier, train_classifier)


def synthetic(n: int, seed: int, levels: int = 2, side: int = 8):
    """10 fixed random binary templates (one per class), 5% of pixels flipped: separable, not trivial."""
    templates = np.random.default_rng(123).integers(0, 2, size=(10, side, side))
    r = np.random.default_rng(seed)
    labels = r.integers(0, 10, size=n)
    flip = r.random((n, side, side)) < 0.05
    tokens = (templates[labels] ^ flip).astype(np.uint8) * (levels - 1)
    return tokens, labels


@pytest.fixture(scope="module")
def trained():
    x, y = synthetic(400, seed=0)
    return train_classifier(x, y, levels=2, steps=60, batch_size=64, seed=0)


def test_learns_separable_set(trained):
    x, y = synthetic(300, seed=1)
    assert accuracy(trained, x, y) > 0.9
    assert not trained.training


def test_same_seed_same_weights():
    x, y = synthetic(100, seed=0, levels=4)
    a = train_classifier(x, y, levels=4, steps=5, batch_size=16, seed=3)
    b = train_classifier(x, y, levels=4, steps=5, batch_size=16, seed=3)
    c = train_classifier(x, y, levels=4, steps=5, batch_size=16, seed=4)
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    assert not torch.equal(a.fc2.weight, c.fc2.weight)


def fixed_logits(monkeypatch, clf: DigitClassifier, logits: list[list[float]]):
    table = torch.tensor(logits, dtype=torch.float32)
    monkeypatch.setattr(clf, "forward", lambda tokens: table[: len(tokens)])


def test_quality_counts_confident_images_only(monkeypatch):
    clf = DigitClassifier(levels=2, size=(4, 4))
    ninf = float("-inf")
    logits = [[10] + [0] * 9,  # class 0, p = e^10 / (e^10 + 9) = 0.9996: confident
              [0] * 10,  # uniform, p = 0.1
              [0, 0, 3] + [0] * 7,  # class 2, p = e^3 / (e^3 + 9) = 0.69
              [0] * 7 + [12, 0, 0],  # class 7, confident
              [0, 0] + [ninf] * 8]  # p = 0.5 exactly: not > 0.5
    fixed_logits(monkeypatch, clf, logits)
    probs = torch.softmax(torch.tensor(logits, dtype=torch.float64), -1).max(-1).values
    q = quality(clf, np.zeros((5, 4, 4), dtype=np.uint8))
    assert q["n"] == 5 and q["threshold"] == 0.9 and q["confident"] == pytest.approx(0.4)
    assert q["histogram"] == [1, 0, 0, 0, 0, 0, 0, 1, 0, 0]
    assert q["mean_max_prob"] == pytest.approx(float(probs.mean()))
    q = quality(clf, np.zeros((5, 4, 4), dtype=np.uint8), threshold=0.5)  # strictly greater
    assert q["confident"] == pytest.approx(0.6) and q["histogram"] == [1, 0, 1, 0, 0, 0, 0, 1, 0, 0]
    assert accuracy(clf, np.zeros((5, 4, 4), dtype=np.uint8), np.array([0, 3, 2, 7, 1])) == pytest.approx(0.6)


def test_inputs_are_checked(trained):
    with pytest.raises(ValueError, match="reads 8x8 images, got 4x4"):
        predict_proba(trained, np.zeros((2, 4, 4), dtype=np.uint8))
    with pytest.raises(ValueError, match=r"0..1 \(levels=2\)"):
        quality(trained, np.full((2, 8, 8), 2, dtype=np.uint8))
    with pytest.raises(ValueError, match="labels must be in 0..9"):
        train_classifier(np.zeros((3, 8, 8), dtype=np.uint8), np.array([0, 1, 10]), levels=2, steps=1)
    with pytest.raises(ValueError, match="labels must be 3 integers"):
        train_classifier(np.zeros((3, 8, 8), dtype=np.uint8), np.array([0, 1]), levels=2, steps=1)


def test_save_load_round_trip(trained, tmp_path):
    out = save_classifier(trained, tmp_path / "clf", extra={"val_accuracy": 0.97})
    assert sorted(p.name for p in out.iterdir()) == sorted([META, WEIGHTS])  # no temporary files
    meta = json.loads((out / META).read_text())
    assert meta["format"] == "memtrain-digits" and meta["version"] == 1 and meta["val_accuracy"] == 0.97
    assert meta["config"] == {"levels": 2, "size": [8, 8], "channels": [16, 32], "hidden": 64, "n_classes": 11}
    back = load_classifier(out)
    x, _ = synthetic(50, seed=2)
    assert np.array_equal(predict_proba(back, x), predict_proba(trained, x))
    assert not back.training


def test_load_refuses(trained, tmp_path):
    with pytest.raises(ValueError, match="is not a directory"):
        load_classifier(tmp_path / "none")
    good = save_classifier(trained, tmp_path / "good")

    def broken(name, edit):
        d = tmp_path / name
        d.mkdir()
        for f in (META, WEIGHTS):
            (d / f).write_bytes((good / f).read_bytes())
        edit(d)
        return d

    def meta_edit(**kw):
        def edit(d):
            meta = json.loads((d / META).read_text())
            meta.update(kw)
            (d / META).write_text(json.dumps(meta))
        return edit

    cases = [
        (broken("nofile", lambda d: (d / WEIGHTS).unlink()), "needs digits.json and digits.safetensors"),
        (broken("badjson", lambda d: (d / META).write_text("{oops")), "not valid JSON"),
        (broken("foreign", meta_edit(format="memtrain-run")), "not a memtrain digit classifier"),
        (broken("version", meta_edit(version=2)), "format version 2"),
        (broken("config", meta_edit(config={"levels": 2})), "bad 'config'"),
        (broken("shapes", meta_edit(config={**json.loads((good / META).read_text())["config"], "hidden": 32})),
         "does not fit"),
        (broken("corrupt", lambda d: (d / WEIGHTS).write_bytes((good / WEIGHTS).read_bytes()[:100])), "is corrupt"),
    ]
    for d, match in cases:
        with pytest.raises(ValueError, match=match):
            load_classifier(d)
    run = save_run(tmp_path / "run", {"cell": torch.nn.Linear(2, 2)}, {})
    with pytest.raises(ValueError, match="needs digits.json"):
        load_classifier(run)


def test_scramble_keeps_each_images_pixels():
    x = torch.from_numpy(synthetic(6, seed=3, levels=4)[0]).long()
    sx = scramble(x, torch.Generator().manual_seed(0))
    assert torch.equal(sx.flatten(1).sort(1).values, x.flatten(1).sort(1).values)
    assert not torch.equal(sx, x)


def test_reject_class_catches_scrambled_images_and_is_never_confident_digit(trained, monkeypatch):
    x, _ = synthetic(200, seed=4)
    noise = scramble(torch.from_numpy(x), torch.Generator().manual_seed(1)).numpy()
    q = quality(trained, noise)
    assert trained.n_classes == 11 and q["not_a_digit"] > 0.8 and q["confident"] < 0.2
    clf = DigitClassifier(levels=2, size=(4, 4), n_classes=11)
    fixed_logits(monkeypatch, clf, [[0] * 10 + [20], [20] + [0] * 10])  # sure it is not a digit; sure it is a 0
    q = quality(clf, np.zeros((2, 4, 4), dtype=np.uint8))
    assert q["not_a_digit"] == 0.5 and q["confident"] == 0.5 and q["histogram"] == [1] + [0] * 9
