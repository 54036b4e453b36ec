"""The README is read in ten minutes and what it shows works: its two commands are the ones CI runs,
it stays short, its one Python block runs as written, and RESULTS.md opens with the same scorecard."""
import math
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")

COMMANDS = """```bash
# 1. install (CPU build of PyTorch first) and run the main job: SMT->DMT vs BPTT (same cell, torch LSTM) on retrieval
pip install torch==2.13.0 && pip install -e ".[test]" && memtrain demo

# 2. run the tests
python -m pytest -q
```"""


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```$", text, flags=re.S | re.M)


def scorecard(text: str) -> list[str]:
    """The table whose header starts with '| claim of the paper |', line by line."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| claim of the paper |"))
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
    return lines[start:end]


def test_the_two_commands_come_first_verbatim():
    assert COMMANDS in README
    assert README.index(COMMANDS) < README.index("\n## ")  # before any section
    ci = (ROOT / ".ci" / "run").read_text()
    assert "\npython -m pytest -q\n" in ci  # CI runs exactly the README's test command


def test_the_readme_is_short():
    assert len(README.splitlines()) <= 300


def test_the_scorecard_is_the_same_in_readme_and_results():
    table = scorecard(README)
    assert len(table) >= 10 and all(line.count("|") >= 6 for line in table)
    assert not any("<!--" in line for line in table), "no placeholder left in the scorecard"
    assert any(line.startswith("| Against the authors' code") for line in table)
    assert scorecard((ROOT / "RESULTS.md").read_text(encoding="utf-8")) == table


def test_the_python_snippet_runs_as_written(tmp_path, monkeypatch):
    blocks = python_blocks(README)
    assert len(blocks) == 1, "the README has exactly one ```python block, the one this test runs"
    monkeypatch.chdir(tmp_path)
    scope: dict = {"__name__": "__readme__"}
    exec(compile(blocks[0], "README.md", "exec"), scope)  # verbatim

    summary = scope["summary"]
    assert summary["method"] == "smt-dmt" and summary["steps"] == 60
    for key in ("rnn_acc", "rnn_ce", "rnn_bits", "teacher_acc", "train_seconds"):
        assert math.isfinite(summary[key]), key
    assert 0.0 <= summary["rnn_acc"] <= 1.0 and 0.0 <= summary["teacher_acc"] <= 1.0
    assert summary["drift"] and all(math.isfinite(d) for d in summary["drift"])
    out = tmp_path / scope["cfg"].out_dir
    assert (out / "run.json").is_file() and (out / "model.safetensors").is_file()
    assert scope["cell"] is not None and scope["teacher"] is not None
    assert scope["row"]["length"] == 32 and math.isfinite(scope["row"]["rnn_bits"])
    stream, logits = scope["stream"], scope["logits"]
    assert logits.shape == (2, scope["cell"].cfg.vocab_size) and stream.steps.tolist() == [0, 1]
    assert scope["saved"]["steps"].tolist() == [1, 1] and not scope["saved"]["memory"].equal(stream.memory)
