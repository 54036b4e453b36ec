"""Behaviour cloning (memtrain/data/control.py): experts that solve the environments, demonstrations
saved as ragged .npz of real inputs and token targets, and an RNN policy run in the environment."""
import numpy as np
import pytest
import torch

pytest.importorskip("popgym")

from memtrain.data.control import ENVS, collect, encode, make_env, policy_returns  # noqa: E402
from memtrain.lengths import pad  # noqa: E402


@pytest.mark.parametrize("name", sorted(ENVS))
def test_the_experts_reach_the_best_return(name):
    xs, ys, returns = collect(name, 3, seed=0)
    assert returns == pytest.approx([1.0] * 3, abs=1e-9), "popgym's returns are at most 1 per episode"
    env = make_env(name)
    assert all(x.shape[1] == xs[0].shape[1] for x in xs) and all(len(x) == len(y) for x, y in zip(xs, ys))
    assert (xs[0][0, -env.action_space.n:] == 0).all(), "no previous action at the first step"
    a = int(ys[0][0])
    assert xs[0][1, -env.action_space.n + a] == 1.0, "step 1 reads the expert's step-0 action"


def test_encoding_of_discrete_and_box_observations():
    env = make_env("count-recall")  # MultiDiscrete([2, 2]) observations, 27 actions
    x = encode(env, np.array([1, 0]), 3)
    assert x.tolist()[:4] == [0, 1, 1, 0] and x[4 + 3] == 1 and x.sum() == 3 and len(x) == 4 + 27
    cart = make_env("position-only-cartpole")
    assert encode(cart, np.array([0.5, -0.1]), None).tolist() == pytest.approx([0.5, -0.1, 0, 0])


def test_a_cloned_policy_trains_from_a_ragged_npz_and_runs_in_the_environment(tmp_path):
    from memtrain.presets import preset_config
    from memtrain.runs import load_run
    from memtrain.training.trainer import train
    xs, ys, _ = collect("repeat-previous", 12, seed=0)
    xs[3], ys[3] = xs[3][:20], ys[3][:20]  # one shorter episode
    x, lengths = pad(xs, pad_value=np.nan)
    y, _ = pad(ys, pad_value=-1)
    np.savez(tmp_path / "demos.npz", x=x, y=y, lengths=lengths)
    cfg = preset_config("tiny", ["method=bptt", "cell.kind=torch-lstm", "task=npz", f'task_args={{"path": "{tmp_path / "demos.npz"}"}}',
                                 "train.steps=4", f"out_dir={tmp_path / 'run'}"])
    train(cfg, progress=False)
    saved, task, _, cell = load_run(str(tmp_path / "run"))
    assert saved.cell.features == 8 and saved.cell.vocab_size == 4 and task.features == 8
    returns = policy_returns(cell, "repeat-previous", episodes=3)
    assert len(returns) == 3 and all(-1.0 - 1e-9 <= r <= 1.0 + 1e-9 for r in returns)
    with pytest.raises(ValueError, match="environment must be one of"):
        make_env("pong")


def _demos(tmp_path, name="repeat-previous", episodes=8):
    xs, ys, _ = collect(name, episodes, seed=0)
    x, lengths = pad(xs, pad_value=0.0)
    y, _ = pad(ys, pad_value=-1)
    path = tmp_path / f"{name}.npz"
    np.savez(path, x=x.astype(np.float32), y=y, lengths=lengths)
    return str(path)


def test_task_control_logs_the_policys_return_at_every_evaluation(tmp_path):
    """task=control: task=npz whose evaluations also run the RNN policy in its environment; the logged
    rnn_return is the mean of policy_returns for the cell at that moment (here: the final one)."""
    import json

    from memtrain.presets import preset_config
    from memtrain.runs import load_run
    from memtrain.training.trainer import train
    args = json.dumps({"env": "repeat-previous", "path": _demos(tmp_path), "episodes": 5, "eval_seed": 500})
    cfg = preset_config("tiny", ["method=bptt", "cell.kind=torch-lstm", "task=control", f"task_args={args}",
                                 "train.steps=4", "train.eval_every=2", f"out_dir={tmp_path / 'run'}"])
    summary = train(cfg, progress=False)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if "rnn_acc" in r]
    assert len(evals) >= 2 and all("rnn_return" in r for r in evals), "a return at every evaluation"
    *_, cell = load_run(str(tmp_path / "run"))
    want = float(np.mean(policy_returns(cell, "repeat-previous", episodes=5, seed=500)))
    assert evals[-1]["rnn_return"] == pytest.approx(want, abs=1e-9) and summary["rnn_return"] == pytest.approx(want, abs=1e-9)


@pytest.mark.parametrize("args, match", [
    ({"env": "pong"}, "needs env= one of"),
    ({"env": "count-recall"}, "but 'count-recall' steps read 31 features and take 27 actions: demonstrations of another"),
    ({"env": "repeat-previous", "episodes": -1}, "episodes must be >= 0"),
])
def test_task_control_refuses_a_wrong_environment(tmp_path, args, match):
    from memtrain.data.tasks import build_task
    with pytest.raises(ValueError, match=match):
        build_task("control", path=_demos(tmp_path), **args)
