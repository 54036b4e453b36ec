"""Behaviour cloning under partial observability: seeded expert demonstrations from popgym's memory
environments, and the return of a trained RNN policy in the environment itself.

An episode is a sequence of steps; step t reads x_t = [the observation (one-hot for discrete ones,
the values for boxes), the previous action (one-hot for discrete actions, its values over the action
bound for continuous ones; zeros at t = 0)] and is labelled with the expert's action a_t: a token
target for discrete actions, a real target (the RNN predicts a Gaussian, `task_args.output`; it acts
with the mean, clipped to the bounds) for continuous ones. Episodes have different lengths, so demonstrations are saved
as a ragged `.npz` (right-padded x, y and `lengths`, read by task=npz), and an RNN trained on them
(any method) is run in the environment step by step from its empty memory, one memory per episode.
`task=control` (`ControlTask`) is task=npz on such demonstrations that also scores the RNN policy in
its environment at every evaluation (`rnn_return`: the return curve that `memtrain plot` draws):

    repeat-previous          the suit of the card k = 4 steps back (popgym RepeatPreviousEasy); the
                             expert remembers it (the environment's own hand)
    repeat-first             the suit of the episode's first card, at each of 415 steps (popgym
                             RepeatFirstMedium); the expert reads the environment's first card. The
                             one observation to hold is at step 0: memory over the whole episode
    count-recall             how many times the queried colour has been dealt so far (CountRecallEasy);
                             the expert reads the environment's counts
    position-only-cartpole   CartPole with the velocities hidden (PositionOnlyCartPoleEasy); the expert
                             is a linear controller on the full state (positions and velocities)
    position-only-pendulum   Pendulum swing-up with the angular velocity hidden (PositionOnlyPendulumEasy,
                             200 steps, a continuous torque in [-2, 2]); the expert pumps energy until the
                             pendulum nears the top, then holds it there with a PD law on the full state

popgym normalises each environment's return to at most 1 per episode. Needs `pip install
'memtrain[control]'` (popgym and gymnasium, pure Python).
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass

import numpy as np
import torch

from ..lengths import pad
from .files import NpzTask

ENVS = {
    "repeat-previous": ("popgym.envs.repeat_previous", "RepeatPreviousEasy"),
    "count-recall": ("popgym.envs.count_recall", "CountRecallEasy"),
    "repeat-first": ("popgym.envs.repeat_first", "RepeatFirstMedium"),
    "position-only-cartpole": ("popgym.envs.position_only_cartpole", "PositionOnlyCartPoleEasy"),
    "position-only-pendulum": ("popgym.envs.position_only_pendulum", "PositionOnlyPendulumEasy"),
}
NO_PREVIOUS_ACTION = {"repeat-first"}  # environments whose steps do not read the previous action
CARTPOLE_GAINS = np.array([1.0, 1.5, 18.0, 3.0])  # the expert's force sign: gains . (x, x', theta, theta')
# the pendulum expert (gymnasium's Pendulum: theta'' = 15 sin(theta) + 3 u, theta = 0 upright): within
# PENDULUM_ZONE radians of the top a PD law (gains on theta, theta'); elsewhere it pumps energy towards
# the upright's, E = theta'^2 / 2 + 15 cos(theta) -> 15 (dE/dt = 3 u theta'), at gain PENDULUM_PUMP
PENDULUM_PD, PENDULUM_ZONE, PENDULUM_PUMP = (20.0, 4.0), 1.0, 1.0


def make_env(name: str):
    if name not in ENVS:
        raise ValueError(f"environment must be one of {sorted(ENVS)}, got {name!r}")
    try:
        import importlib
        module = importlib.import_module(ENVS[name][0])
    except ModuleNotFoundError:
        raise ValueError(f"environment {name!r} needs popgym: pip install 'memtrain[control]'") from None
    return getattr(module, ENVS[name][1])()


def continuous(env) -> bool:
    """Whether the environment's actions are real vectors (a Box) rather than one of n."""
    return not hasattr(env.action_space, "n")


def n_actions(env) -> int:
    """Discrete actions: how many; continuous ones: the action's width."""
    return int(np.prod(env.action_space.shape)) if continuous(env) else int(env.action_space.n)


def obs_width(env) -> int:
    space = env.observation_space
    if hasattr(space, "nvec"):
        return int(np.sum(space.nvec))
    if hasattr(space, "n"):
        return int(space.n)
    return int(np.prod(space.shape))


def reads_previous_action(name: str) -> bool:
    return name not in NO_PREVIOUS_ACTION


def input_width(name: str, env) -> int:
    """The features of one step x_t in environment `name`."""
    return obs_width(env) + (n_actions(env) if reads_previous_action(name) else 0)


def encode(env, obs, prev_action, with_action: bool = True) -> np.ndarray:
    """x_t: the observation (one-hot where discrete) and, with `with_action`, the previous action
    (one-hot; continuous: its values over the action bound; zeros: none)."""
    space = env.observation_space
    if hasattr(space, "nvec"):
        parts = [np.eye(n)[int(o)] for n, o in zip(space.nvec, np.asarray(obs).reshape(-1))]
        o = np.concatenate(parts)
    elif hasattr(space, "n"):
        o = np.eye(space.n)[int(obs)]
    else:
        o = np.asarray(obs, dtype=np.float64).reshape(-1)
    if not with_action:
        return o.astype(np.float32)
    a = np.zeros(n_actions(env))
    if prev_action is not None and continuous(env):
        a = np.asarray(prev_action, dtype=np.float64).reshape(-1) / np.abs(env.action_space.high).reshape(-1)
    elif prev_action is not None:
        a[prev_action] = 1.0
    return np.concatenate([o, a]).astype(np.float32)


def expert_action(name: str, env):
    """The expert's action now, from the environment's full state (what the policy cannot see): an
    int, or for continuous actions a float32 array."""
    e = env.unwrapped
    if name == "repeat-previous":
        hand = e.deck["player"]
        return int(e.deck.suits_idx[hand[-e.k]]) if len(hand) >= e.k else 0
    if name == "count-recall":
        return int(e.counts[e.query])
    if name == "repeat-first":
        return int(e.card)
    if name == "position-only-pendulum":
        theta, speed = (float(v) for v in e.state)
        theta = (theta + np.pi) % (2 * np.pi) - np.pi
        if abs(theta) < PENDULUM_ZONE:
            u = -PENDULUM_PD[0] * theta - PENDULUM_PD[1] * speed
        else:
            u = PENDULUM_PUMP * (15.0 - (speed ** 2 / 2 + 15.0 * np.cos(theta))) * speed
        return np.clip(np.array([u], dtype=np.float32), e.action_space.low, e.action_space.high)
    return int(float(CARTPOLE_GAINS @ np.asarray(e.state, dtype=np.float64)) > 0)


def collect(name: str, episodes: int, seed: int = 0) -> tuple[list[np.ndarray], list[np.ndarray], list[float]]:
    """Expert demonstrations: per episode x (L, F) and the expert's actions y (L,), and its return.
    Episode i is reset with seed + i."""
    env = make_env(name)
    with_action = reads_previous_action(name)
    xs, ys, returns = [], [], []
    for i in range(episodes):
        obs, _ = env.reset(seed=seed + i)
        prev, x, y, total, done = None, [], [], 0.0, False
        while not done:
            a = expert_action(name, env)
            x.append(encode(env, obs, prev, with_action))
            y.append(a)
            obs, r, terminated, truncated, _ = env.step(a)
            total += float(r)
            prev, done = a, terminated or truncated
        xs.append(np.stack(x))
        ys.append(np.stack(y).astype(np.float32) if continuous(env) else np.array(y, dtype=np.int64))
        returns.append(total)
    return xs, ys, returns


def demo_rows(name: str, episodes: int, val: int, seed: int = 0) -> tuple[tuple, tuple, list[float]]:
    """Expert demonstrations as right-padded arrays: (x, y, lengths) for `episodes` training episodes
    (seeds seed ...) and for `val` held-out ones (the seeds after them; padding: x 0, y -1, continuous
    actions NaN), and the expert's returns on all of them."""
    xs, ys, returns = collect(name, episodes + val, seed=seed)
    splits = []
    for part in (slice(0, episodes), slice(episodes, episodes + val)):
        x, lengths = pad(xs[part], pad_value=0.0)
        y, _ = pad(ys[part], pad_value=np.nan if ys[0].dtype == np.float32 else -1)
        splits.append((x.astype(np.float32), y, lengths))
    return splits[0], splits[1], returns


@torch.no_grad()
def policy_returns(cell, name: str, episodes: int, seed: int = 10_000, greedy: bool = True) -> list[float]:
    """The return of the RNN policy (argmax of its readout at each step; continuous actions: its
    predicted mean, clipped to the action bounds) in each of `episodes` seeded episodes (seeds seed,
    seed + 1, ...: other than the demonstrations' by default), all run as one batch of streams, one
    memory each."""
    envs = [make_env(name) for _ in range(episodes)]
    obs = [env.reset(seed=seed + i)[0] for i, env in enumerate(envs)]
    dtype = next(cell.parameters()).dtype
    m = cell.init_memory(episodes)
    prev = [None] * episodes
    with_action = reads_previous_action(name)
    done = [False] * episodes
    totals = [0.0] * episodes
    space = envs[0].action_space
    if continuous(envs[0]):  # the predicted mean, clipped to the bounds
        def act(out):
            return list(np.clip(cell.output.mean(out).double().numpy(), space.low, space.high).astype(np.float32))
    else:
        def act(out):
            return out.argmax(-1).tolist()
    while not all(done):
        x = torch.from_numpy(np.stack([encode(env, o, p, with_action) for env, o, p in zip(envs, obs, prev)])).to(dtype)
        m = cell.update(m, x)
        actions = act(cell.readout(m))
        for i, env in enumerate(envs):
            if done[i]:
                continue
            obs[i], r, terminated, truncated, _ = env.step(actions[i])
            totals[i] += float(r)
            prev[i], done[i] = actions[i], terminated or truncated
    return totals


@dataclass
class ControlTask(NpzTask):
    """task=control: behaviour cloning on an environment's demonstrations (the train.npz / val.npz that
    `benchmarks/clone.py collect` writes; task=npz's settings), and at every evaluation the RNN policy
    run in the environment itself: `rnn_return`, its mean return over `episodes` seeded episodes
    (seeds eval_seed, eval_seed + 1, ...: none of them a demonstration's by default), logged beside
    the held-out accuracy. It counts as evaluation time, not training time."""
    env: str | None = None  # one of ENVS
    episodes: int = 20  # episodes per evaluation (0: none, the return is not measured)
    eval_seed: int = 10_000
    demos: int = 0  # > 0: collect this many expert episodes here (seeds 0 ...) instead of reading path, and a fifth as many more (the seeds after them) as the held-out rows

    def __post_init__(self):
        if self.env not in ENVS:
            raise ValueError(f"task 'control' needs env= one of {sorted(ENVS)}, got {self.env!r}")
        if self.episodes < 0:
            raise ValueError(f"task 'control': episodes must be >= 0, got {self.episodes}")
        if self.demos < 0 or (self.demos and (self.path or self.val_path)):
            raise ValueError(f"task 'control': demos={self.demos} must be >= 0, and > 0 only without path= / val_path= "
                             "(demos= collects the demonstrations here, path= reads them from a file)")
        super().__post_init__()
        env = make_env(self.env)
        width = input_width(self.env, env)
        holds = f"{self.targets} real action values" if self.targets else f"{self.vocab} action ids"
        takes = f"{n_actions(env)} real action values" if continuous(env) else f"{n_actions(env)} actions"
        fits = (self.targets == n_actions(env)) if continuous(env) else (not self.targets and self.vocab >= n_actions(env))
        if self.features != width or not fits:
            raise ValueError(f"task 'control': {self.path!r} holds {self.features or 'token'} features per step and "
                             f"{holds}, but {self.env!r} steps read {width} features and take {takes}: "
                             "demonstrations of another environment?")

    def _read(self):
        if not self.demos:
            return super()._read()
        train, val, _ = demo_rows(self.env, self.demos, max(1, self.demos // 5))
        return self._arrays("task 'control': demos", *train), self._arrays("task 'control': the held-out demos", *val), True

    def evaluate_policy(self, cell) -> dict:
        """The RNN policy's mean return in the environment (`policy_returns`)."""
        if not self.episodes:
            return {}
        return {"rnn_return": statistics.fmean(policy_returns(cell, self.env, self.episodes, seed=self.eval_seed))}
