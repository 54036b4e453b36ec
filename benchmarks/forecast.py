"""Forecasting a real series at an equal CPU budget: SMT -> DMT against BPTT on the same cell
(DeepAR-style: an RNN trained by teacher forcing on the likelihood), torch's fused LSTM by BPTT, and
seasonal naive, on the same windows of a prepared series set (default: half-hourly electricity demand,
`memtrain prepare series elecdemand data/elec`). Each method is one ordinary run with the same
`train.time_limit` (one thread each, kept under --root and skipped when finished, so lanes can run
side by side); each is then scored on every test window by sampling paths from its RNN alone
(`memtrain.forecast`): CRPS, MASE, sMAPE and 80% coverage at horizons 1, the season and the whole
horizon, in the data's units.

    python benchmarks/forecast.py run --methods smt-dmt bptt --seconds 1200 --seeds 0
    python benchmarks/forecast.py run --methods bptt-lstm --seconds 1200 --seeds 0
    python benchmarks/forecast.py report

GluonTS's own DeepAR, the real peer (issue 27), runs in a virtual environment of its own
(`benchmarks/deepar_peer.py` writes its sample paths under --root; `report` scores them with the
same code).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from common import add_lane_args, md_table, train_for_seconds, write_results

from memtrain.forecast import evaluate_forecasts, scores
from memtrain.presets import PRESETS

METHODS = {  # label -> settings on top of the defaults
    "smt-dmt": ["method=smt-dmt", "handover.teacher_acc=null", "handover.teacher_plateau=3"],
    # the forecast-cpu preset's method and handover (0.17): DMT on 32-step rollouts from the teacher's
    # memories after 250 SMT updates, once the teacher's loss has stalled for one evaluation
    "smt-dmt-early": [o for o in PRESETS["forecast-cpu"][1] if o.startswith(("method=", "handover.", "dmt."))],
    "bptt": ["method=bptt"],
    "bptt-lstm": ["method=bptt", "cell.kind=torch-lstm"],
}


def run(a) -> None:
    for seed in a.seeds:
        for name in a.methods:
            out = Path(a.root) / f"{name}-s{seed}{a.tag}"
            task = {"path": a.data, "context": a.context, "horizon": a.horizon,
                    **{k: v for k, v in (("val_steps", a.val_steps), ("test_steps", a.test_steps)) if v is not None},
                    **({"lags": a.lags} if a.lags else {})}
            s = train_for_seconds([*METHODS[name], "task=series", f"task_args={json.dumps(task)}"], out, seed, a)
            print(f"{out.name}: {s['steps']} updates, {s['train_seconds']:.0f} s, held-out loss per value {s['rnn_ce']:.3f}",
                  flush=True)


def report(a) -> None:
    rows, data = [], {"runs": {}}
    for d in sorted(Path(a.root).iterdir()):
        if (d / "peer.json").is_file():  # a peer's paths (benchmarks/deepar_peer.py), scored by the same code
            peer = json.loads((d / "peer.json").read_text())
            z = np.load(d / "paths.npz")
            season = a.season or peer.get("season") or 1
            got = {"windows": int(z["truth"].shape[0]), "samples": int(z["paths"].shape[0]), "season": season,
                   "rnn": scores(torch.from_numpy(z["paths"]).double(), torch.from_numpy(z["truth"]).double(),
                                 torch.from_numpy(z["history"]).double(), season,
                                 a.horizons or sorted({1, min(season, peer["horizon"]), peer["horizon"]}))}
            data["runs"][d.name] = {"summary": {"train_seconds": peer["seconds"]}, **got}
            rows += [{"run": f"{d.name} ({peer['peer']})", "seconds": peer["seconds"], **r} for r in got["rnn"]]
            continue
        if not (d / "run.json").is_file():
            continue
        summary = json.loads((d / "run.json").read_text()).get("summary") or {}
        got = evaluate_forecasts(str(d), split="test", samples=a.samples, seed=0, horizons=a.horizons, season=a.season)
        data["runs"][d.name] = {"summary": {k: summary.get(k) for k in ("steps", "train_seconds", "rnn_ce")}, **got}
        rows += [{"run": d.name, "seconds": summary.get("train_seconds"), **r} for r in got["rnn"]]
        naive = got["seasonal_naive"]  # (the same test windows for every run)
    rows += [{"run": f"seasonal naive (season {data['runs'][d.name]['season']})", **r} for r in naive]
    cols = ["run", "seconds", "horizon", "crps", "mase", "smape", "coverage80"]
    table = md_table(cols, [[r.get(c) for c in cols] for r in rows])
    print(table)
    write_results("forecast", data, table, results=a.results)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--methods", nargs="+", choices=sorted(METHODS), default=["smt-dmt", "bptt"])
    r.add_argument("--data", default="data/elec")
    r.add_argument("--context", type=int, default=336)
    r.add_argument("--horizon", type=int, default=48)
    r.add_argument("--val-steps", type=int, default=None, help="task_args.val_steps (None: 4 x horizon)")
    r.add_argument("--test-steps", type=int, default=None, help="task_args.test_steps (None: 4 x horizon)")
    r.add_argument("--lags", type=int, nargs="*", default=None,
                   help="task_args.lags: targets read a season back beside y_{t-1}, e.g. 48 336 (DeepAR reads its own lags)")
    add_lane_args(r, root="runs/forecast", seconds=1200)
    q = sub.add_parser("report")
    q.add_argument("--root", default="runs/forecast")
    q.add_argument("--samples", type=int, default=100)
    q.add_argument("--results", default=None)
    q.add_argument("--season", type=int, default=None, help="seasonal naive's and MASE's period (default: the longest within the context)")
    q.add_argument("--horizons", type=int, nargs="*", default=None)
    a = p.parse_args()
    (run if a.cmd == "run" else report)(a)


if __name__ == "__main__":
    main()
