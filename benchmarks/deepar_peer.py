"""GluonTS's own DeepAR, the peer of issue 27, trained and asked for forecasts through its own estimator
on exactly the windows `benchmarks/forecast.py` scores (task=series: the same prepared folder,
context, horizon and split by time). It runs in a virtual environment of its own, where GluonTS and
Lightning are installed beside the same CPU build of torch (they are not memtrain's dependencies):

    python -m venv .gluonts && .gluonts/bin/pip install torch==2.13.0
    .gluonts/bin/pip install "gluonts[torch]" -c <(echo torch==2.13.0) && .gluonts/bin/pip install --no-deps -e . safetensors
    .gluonts/bin/python benchmarks/deepar_peer.py --data data/elec --context 336 --horizon 48 --seconds 1200 --out runs/forecast/deepar-s0

It trains on each series up to the validation period (as our training windows), for `--seconds` of
wall-clock (Lightning's max_time) at one thread, then samples --samples paths for every test window
from the window's own context and writes them, with the truth, to OUT/paths.npz (the validation
windows' to OUT/paths_val.npz); `forecast.py report` and `select` score them with the same code as ours. Learning rates: --lr (sweep them as ours are swept).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="data/elec")
    p.add_argument("--context", type=int, default=336)
    p.add_argument("--horizon", type=int, default=48)
    p.add_argument("--val-steps", type=int, default=None, help="as task_args.val_steps of our runs (None: 4 x horizon)")
    p.add_argument("--test-steps", type=int, default=None, help="as task_args.test_steps of our runs (None: 4 x horizon)")
    p.add_argument("--seconds", type=float, default=1200)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--samples", type=int, default=100)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--val-every", type=int, default=48,
                   help="validation windows: forecast origins every this many steps (as `forecast.py select --val-every`)")
    p.add_argument("--out", required=True)
    a = p.parse_args()

    import lightning.pytorch as pl
    import pandas as pd
    from gluonts.dataset.common import ListDataset
    from gluonts.torch.model.deepar import DeepAREstimator

    from memtrain.data.series import SeriesTask

    torch.set_num_threads(a.threads)
    pl.seed_everything(a.seed)
    task = SeriesTask(path=a.data, context=a.context, horizon=a.horizon, val_steps=a.val_steps, test_steps=a.test_steps)
    values, lengths = task._values, task._lengths
    freq = task.meta.get("freq") or "D"
    start = pd.Period("2014-01-01 00:00", freq=freq)  # GluonTS needs a start; the step size is what matters

    def entry(i: int, end: int, future: int) -> dict:
        """Series i's target up to `end` and its covariates up to end + future (GluonTS reads the future ones)."""
        e = {"start": start, "target": values[i, :end, task._t[0]].astype(np.float32)}
        if task.K:
            e["feat_dynamic_real"] = task.covariates(values[i][: end + future]).T.astype(np.float32)  # categorical: one-hot
        return e

    train_end = lengths - task.val_steps - task.test_steps
    train = ListDataset([entry(i, int(train_end[i]), 0) for i in range(len(lengths))], freq=freq)
    est = DeepAREstimator(freq=freq, prediction_length=a.horizon, context_length=a.context, num_feat_dynamic_real=task.K,
                          lr=a.lr, scaling=True, num_parallel_samples=a.samples,
                          trainer_kwargs={"max_time": {"seconds": int(a.seconds)}, "max_epochs": 100000, "enable_progress_bar": False,
                                          "logger": False, "default_root_dir": a.out})
    t0 = time.perf_counter()
    predictor = est.train(train)
    seconds = time.perf_counter() - t0
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    ends_of = {}
    for split, name in (("test", "paths.npz"), ("val", "paths_val.npz")):  # validation windows: to choose a rate by
        ends = ends_of[split] = task.split_ends(split, a.val_every if split == "val" else 1)
        windows = ListDataset([entry(i, e - a.horizon, a.horizon) for i, e in ends], freq=freq)
        paths = np.stack([f.samples for f in predictor.predict(windows)], axis=1)  # (S, N, H)
        truth = np.stack([values[i, e - a.horizon: e, task._t[0]] for i, e in ends])
        history = np.stack([values[i, e - a.horizon - a.context: e - a.horizon, task._t[0]] for i, e in ends])
        np.savez(out / name, paths=paths, truth=truth, history=history)
    season = max([s for s in task.seasonality(0) if s < a.context] or [1])  # as memtrain.forecast picks it
    (out / "peer.json").write_text(json.dumps({"peer": "gluonts DeepAR", "seconds": seconds, "lr": a.lr, "seed": a.seed,
                                               "context": a.context, "horizon": a.horizon, "val_steps": task.val_steps,
                                               "test_steps": task.test_steps, "samples": a.samples,
                                               "season": season, "val_every": a.val_every}, indent=1))
    print(f"wrote {out}: {len(ends_of['test'])} test and {len(ends_of['val'])} validation windows, "
          f"{seconds:.0f} s of training")


if __name__ == "__main__":
    main()
