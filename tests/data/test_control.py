"""Behaviour cloning (memtrain/data/control.py): experts that solve the environments, demonstrations
saved as ragged .npz of real inputs and token (or, for continuous actions, real) targets, and an RNN
policy run in the environment."""
import numpy as np
import pytest
import torch

pytest.importorskip("popgym")

from memtrain.data.control import (ENVS, collect, continuous, encode, expert_action, input_width, make_env, n_actions,  # noqa: E402
                                   policy_returns, reads_previous_action)
from memtrain.lengths import pad  # noqa: E402


@pytest.mark.parametrize("name", sorted(ENVS))
def test_the_experts_reach_the_best_return(name):
    xs, ys, returns = collect(name, 3, seed=0)
    if name == "position-only-pendulum":  # the swing-up's steps below the top cost reward: about 0.92 on average
        assert min(returns) > 0.75 and max(returns) <= 1.0
    else:
        assert returns == pytest.approx([1.0] * 3, abs=1e-9), "popgym's returns are at most 1 per episode"
    env = make_env(name)
    assert all(x.shape[1] == input_width(name, env) for x in xs) and all(len(x) == len(y) for x, y in zip(xs, ys))
    if not reads_previous_action(name):
        return
    k = n_actions(env)
    assert (xs[0][0, -k:] == 0).all(), "no previous action at the first step"
    if continuous(env):
        assert ys[0].dtype == np.float32 and ys[0].shape == (200, 1) and np.abs(ys[0]).max() <= 2.0
        assert xs[0][1, -1] == pytest.approx(ys[0][0, 0] / 2.0), "step 1 reads the expert's step-0 torque over its bound"
        return
    a = int(ys[0][0])
    assert xs[0][1, -k + a] == 1.0, "step 1 reads the expert's step-0 action"


def test_the_pendulum_expert_holds_the_top_and_pumps_energy_below():
    """PD within a radian of the top (theta = 0): u = -20 theta - 4 theta'; below, the torque pushes
    along the motion while the energy is short of the upright's; clipped to [-2, 2]."""
    env = make_env("position-only-pendulum")
    env.reset(seed=0)
    for state, want in (([0.05, 0.1], -1.4), ([0.1, 0.0], -2.0), ([2 * np.pi - 0.05, 0.0], 1.0),
                        ([np.pi, 0.5], 2.0), ([np.pi, -0.01], -(15 + 15 - 0.00005) * 0.01)):
        env.unwrapped.state = np.array(state)
        got = expert_action("position-only-pendulum", env)
        assert got.dtype == np.float32 and got.shape == (1,) and got[0] == pytest.approx(want, rel=1e-5)


def test_a_continuous_policy_acts_with_its_mean_clipped_to_the_bounds():
    """policy_returns for continuous actions: the readout's mean, clipped; a cell whose mean is +5
    everywhere plays the torque +2 at every step, whose returns are computed here directly."""
    from memtrain.models.heads import make_output

    class Constant(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))
            self.output = make_output("gaussian", None, 1)

        def init_memory(self, batch):
            return torch.zeros(batch, 1, dtype=torch.float64)

        def update(self, m, x):
            assert x.shape[1] == 3, "cos, sin and the previous torque"
            return m

        def readout(self, m):
            return torch.cat([torch.full_like(m, 5.0), torch.zeros_like(m)], dim=-1)  # (mean, raw scale)

    want = []
    for i in range(2):
        env = make_env("position-only-pendulum")
        env.reset(seed=7 + i)
        total, done = 0.0, False
        while not done:
            _, r, term, trunc, _ = env.step(np.array([2.0], dtype=np.float32))
            total, done = total + float(r), term or trunc
        want.append(total)
    assert policy_returns(Constant(), "position-only-pendulum", episodes=2, seed=7) == pytest.approx(want, abs=1e-12)


def test_repeat_first_holds_the_first_card_and_does_not_read_the_previous_action():
    """The expert's previous action would be the answer (a copy needs no memory), so repeat-first steps
    read the dealt card alone, and the label at every step is the suit of the card read at step 0."""
    xs, ys, _ = collect("repeat-first", 4, seed=3)
    for x, y in zip(xs, ys):
        assert x.shape == (415, 4) and (x.sum(1) == 1).all(), "one-hot suits only"
        assert (y == x[0].argmax()).all()
        assert (x[1:].argmax(1) != y[0]).any(), "later cards are not the answer"
    assert len({int(y[0]) for y in collect("repeat-first", 12, seed=0)[1]}) > 1, "the answer varies by episode"
    env = make_env("repeat-first")
    assert encode(env, 2, 1, with_action=False).tolist() == [0, 0, 1, 0] and len(encode(env, 2, 1)) == 8


def test_encoding_of_discrete_and_box_observations():
    env = make_env("count-recall")  # MultiDiscrete([2, 2]) observations, 27 actions
    x = encode(env, np.array([1, 0]), 3)
    assert x.tolist()[:4] == [0, 1, 1, 0] and x[4 + 3] == 1 and x.sum() == 3 and len(x) == 4 + 27
    cart = make_env("position-only-cartpole")
    assert encode(cart, np.array([0.5, -0.1]), None).tolist() == pytest.approx([0.5, -0.1, 0, 0])
    pend = make_env("position-only-pendulum")  # a torque in [-2, 2]: read over its bound
    assert encode(pend, np.array([0.6, 0.8]), np.array([-1.5], dtype=np.float32)).tolist() == pytest.approx([0.6, 0.8, -0.75])
    assert encode(pend, np.array([0.6, 0.8]), None).tolist() == pytest.approx([0.6, 0.8, 0.0])


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


def test_task_control_collects_its_demonstrations_with_demos(tmp_path):
    """demos=N: the rows are exactly the N expert episodes `collect` gives (seeds 0..N-1), and the
    held-out rows the N // 5 after them, as the files `benchmarks/clone.py collect` writes would be."""
    from memtrain.data.tasks import build_task
    task = build_task("control", env="repeat-previous", demos=10, episodes=0)
    xs, ys, _ = collect("repeat-previous", 12, seed=0)
    x, y, lengths = task.rows("train")
    assert x.shape == (10, max(map(len, xs[:10])), 8) and lengths.tolist() == [len(e) for e in xs[:10]]
    for i in range(10):
        n = len(xs[i])
        assert torch.equal(x[i, :n], torch.from_numpy(xs[i])) and torch.equal(y[i, :n], torch.from_numpy(ys[i]))
        assert (y[i, n:] == -1).all() and (x[i, n:] == 0).all(), "padding is zero and unsupervised"
    vx, vy, vl = task.rows("val")
    assert len(vx) == 2 and vl.tolist() == [len(e) for e in xs[10:]] and torch.equal(vy[1, :len(ys[11])], torch.from_numpy(ys[11]))
    assert task.features == 8 and task.vocab == 4
    with pytest.raises(ValueError, match=r"demos=5 must be >= 0, and > 0 only without path="):
        build_task("control", env="repeat-previous", demos=5, path=_demos(tmp_path))
    with pytest.raises(ValueError, match=r"demos=-1 must be >= 0"):
        build_task("control", env="repeat-previous", demos=-1)


@pytest.mark.parametrize("args, match", [
    ({"env": "pong"}, "needs env= one of"),
    ({"env": "count-recall"}, "but 'count-recall' steps read 31 features and take 27 actions: demonstrations of another"),
    ({"env": "repeat-previous", "episodes": -1}, "episodes must be >= 0"),
    ({"env": "position-only-pendulum"}, "holds 8 features per step and 4 action ids, but 'position-only-pendulum' steps read 3 "
                                        "features and take 1 real action values"),
])
def test_task_control_refuses_a_wrong_environment(tmp_path, args, match):
    from memtrain.data.tasks import build_task
    with pytest.raises(ValueError, match=match):
        build_task("control", path=_demos(tmp_path), **args)


def test_task_control_reads_continuous_demonstrations_and_refuses_them_for_a_discrete_environment(tmp_path):
    from memtrain.data.tasks import build_task
    task = build_task("control", env="position-only-pendulum", demos=5, episodes=0)
    x, y, lengths = task.rows("train")
    assert task.targets == 1 and task.output == "gaussian" and task.features == 3 and y.shape == (5, 200, 1)
    assert torch.equal(y[2, :, 0], torch.from_numpy(collect("position-only-pendulum", 3, seed=0)[1][2][:, 0]))
    xs, ys, _ = collect("position-only-pendulum", 4, seed=0)
    x, L = pad(xs, pad_value=0.0)
    y, _ = pad(ys, pad_value=np.nan)
    np.savez(tmp_path / "p.npz", x=x.astype(np.float32), y=y, lengths=L)
    with pytest.raises(ValueError, match="holds 3 features per step and 1 real action values, but 'position-only-cartpole'"):
        build_task("control", env="position-only-cartpole", path=str(tmp_path / "p.npz"))
