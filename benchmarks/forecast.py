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
    python benchmarks/forecast.py select   # each method's rate chosen on the validation windows

GluonTS's own DeepAR, the real peer (issue 27), runs in a virtual environment of its own
(`benchmarks/deepar_peer.py` writes its sample paths under --root; `report` scores them with the
same code).
"""
from __future__ import annotations

import argparse
import json
import re
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


def score_root(root: str, split: str, samples: int, horizons: list[int] | None, season: int | None,
               every: int = 1) -> tuple[dict, list[dict]]:
    """Score every run under `root` on the windows of `split` (validation: every `every`-th origin) ->
    ({run: {"label", "seconds", "summary", "windows", "samples", "season", "rnn": [rows]}}, seasonal naive's
    {"season", "rows"}). A peer's paths (benchmarks/deepar_peer.py: paths.npz, paths_val.npz) are scored by the same code."""
    runs, naive = {}, None
    for d in sorted(Path(root).iterdir()):
        if (d / "peer.json").is_file():
            peer = json.loads((d / "peer.json").read_text())
            f = d / ("paths.npz" if split == "test" else "paths_val.npz")
            if split == "val" and peer.get("val_every") != every:
                print(f"{d.name}: no validation paths with origins every {every} steps (rerun deepar_peer.py --val-every {every}); left out")
                continue
            z = np.load(f)
            ssn = season or peer.get("season") or 1
            rows = scores(torch.from_numpy(z["paths"]).double(), torch.from_numpy(z["truth"]).double(),
                          torch.from_numpy(z["history"]).double(), ssn,
                          horizons or sorted({1, min(ssn, peer["horizon"]), peer["horizon"]}))
            runs[d.name] = {"label": f"{d.name} ({peer['peer']})", "seconds": peer["seconds"],
                            "summary": {"train_seconds": peer["seconds"]}, "windows": int(z["truth"].shape[0]),
                            "samples": int(z["paths"].shape[0]), "season": ssn, "rnn": rows}
            continue
        if not (d / "run.json").is_file():
            continue
        summary = json.loads((d / "run.json").read_text()).get("summary") or {}
        got = evaluate_forecasts(str(d), split=split, samples=samples, seed=0, horizons=horizons, season=season, every=every)
        naive = {"season": got["season"], "rows": got["seasonal_naive"]}  # (the same windows for every run)
        runs[d.name] = {"label": d.name, "seconds": summary.get("train_seconds"),
                        "summary": {k: summary.get(k) for k in ("steps", "train_seconds", "rnn_ce")}, **got}
    if naive is None:
        raise SystemExit(f"no memtrain series run under {root}: seasonal naive needs one to read the windows from")
    return runs, naive


def report(a) -> None:
    runs, naive = score_root(a.root, "test", a.samples, a.horizons, a.season)
    rows = [{"run": r["label"], "seconds": r["seconds"], **x} for r in runs.values() for x in r["rnn"]]
    rows += [{"run": f"seasonal naive (season {naive['season']})", **x} for x in naive["rows"]]
    data = {"runs": {k: {c: v for c, v in r.items() if c not in ("label", "seconds")} for k, r in runs.items()}}
    cols = ["run", "seconds", "horizon", "crps", "mase", "smape", "coverage80"]
    table = md_table(cols, [[r.get(c) for c in cols] for r in rows])
    print(table)
    write_results("forecast", data, table, results=a.results)


RUN_NAME = re.compile(r"^(?P<method>.+?)-s(?P<seed>\d+)(?P<tag>.*)$")
RATE = re.compile(r"-lr(?P<lr>\d+(?:\.\d+)?(?:e-?\d+)?)")


def family_of(name: str) -> tuple[str, int, str] | None:
    """A run's name `METHOD-sSEED[TAG]` -> (family: the method with the tag less its `-lrRATE`, seed, rate);
    None for a name without a seed or a rate."""
    m = RUN_NAME.match(name)
    r = RATE.search(m["tag"]) if m else None
    if r is None:
        return None
    return m["method"] + RATE.sub("", m["tag"]), int(m["seed"]), r["lr"]


def select(a) -> None:
    """Each method's learning rate chosen on the validation windows (mean CRPS over the whole horizon,
    averaged over its seeds), then the chosen rate's test scores: one rule for every method, ours and
    the peers'. Runs are grouped by name: `METHOD-sSEED...-lrRATE...`, the family being the name less
    its seed and rate."""
    val, _ = score_root(a.root, "val", a.samples, a.horizons, a.season, a.val_every)
    test, naive = score_root(a.root, "test", a.samples, a.horizons, a.season)
    fams: dict[str, dict[str, list[tuple[int, str]]]] = {}  # family -> rate -> [(seed, run)]
    for name in val:
        got = family_of(name)
        if got is None:
            print(f"{name}: no -sSEED or -lrRATE in its name; left out")
            continue
        fams.setdefault(got[0], {}).setdefault(got[2], []).append((got[1], name))
    horizons = [x["horizon"] for x in next(iter(test.values()))["rnn"]]
    rows, data = [], {"val_every": a.val_every, "families": {}}
    for fam, rates in sorted(fams.items()):
        val_crps = {lr: float(np.mean([val[n]["rnn"][-1]["crps"] for _, n in runs])) for lr, runs in rates.items()}
        best = min(val_crps, key=val_crps.get)
        chosen = [n for _, n in sorted(rates[best])]
        per_h = {h: [next(x for x in test[n]["rnn"] if x["horizon"] == h) for n in chosen] for h in horizons}
        data["families"][fam] = {"val_crps": val_crps, "val_windows": val[chosen[0]]["windows"], "chosen": best,
                                 "runs": chosen, "test": {n: test[n]["rnn"] for n in chosen}}
        rows.append([fam, ", ".join(f"{lr}: {c:.3f}" for lr, c in sorted(val_crps.items())), best, len(chosen),
                     *[f"{np.mean([x['crps'] for x in per_h[h]]):.3f} ({min(x['crps'] for x in per_h[h]):.3f}-"
                       f"{max(x['crps'] for x in per_h[h]):.3f})" for h in horizons],
                     f"{np.mean([x['coverage80'] for x in per_h[horizons[-1]]]):.2f}"])
    rows.append([f"seasonal naive (season {naive['season']})", "-", "-", "-", *[f"{x['crps']:.3f}" for x in naive["rows"]], "-"])
    cols = ["method", "validation CRPS by rate", "chosen", "seeds", *[f"test CRPS 1..{h}: mean (range)" for h in horizons],
            f"coverage80 1..{horizons[-1]}"]
    table = md_table(cols, rows)
    print(table)
    write_results("forecast_select", data, table, results=a.results)


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
    q = sub.add_parser("report", help="score every run under --root on the test windows")
    v = sub.add_parser("select", help="choose each method's rate on the validation windows, report its test scores")
    for x in (q, v):
        x.add_argument("--root", default="runs/forecast")
        x.add_argument("--samples", type=int, default=100)
        x.add_argument("--results", default=None)
        x.add_argument("--season", type=int, default=None,
                       help="seasonal naive's and MASE's period (default: the longest within the context)")
        x.add_argument("--horizons", type=int, nargs="*", default=None)
    v.add_argument("--val-every", type=int, default=48, help="validation forecast origins every this many steps (as deepar_peer.py)")
    a = p.parse_args()
    {"run": run, "report": report, "select": select}[a.cmd](a)


if __name__ == "__main__":
    main()
