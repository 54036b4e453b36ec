"""One experiment behind EXPERIMENTS.md: an SMT run from the retrieval-smt preset plus overrides,
optionally followed by DMT from it, printing the evaluation rows (RNN alone, teacher, drift).

    python experiments/sweep.py NAME [--dmt-steps 200] [--root /tmp/exp] key=value ...
"""
import argparse
import json
import time
from pathlib import Path

from memtrain.training.config import apply_overrides
from memtrain.presets import preset_config
from memtrain.training.trainer import train


def show(name: str, path: Path) -> None:
    for line in open(path / "metrics.jsonl"):
        r = json.loads(line)
        if "rnn_acc" in r:
            drift = {k: r[k] for k in r if k.startswith("drift@")}
            print(f"{name} step {r['step']:5d} t={r['time']:6.0f}s rnn {r['rnn_acc']:.3f} teacher {r['teacher_acc']:.3f} {drift}", flush=True)


p = argparse.ArgumentParser()
p.add_argument("name")
p.add_argument("--dmt-steps", type=int, default=0)
p.add_argument("--dmt", nargs="*", default=[], help="extra overrides for the DMT stage")
p.add_argument("--root", default="/tmp/exp")
p.add_argument("overrides", nargs="*")
a = p.parse_intermixed_args()
root = Path(a.root) / a.name
cfg = preset_config("retrieval-smt", a.overrides + [f"out_dir={root}/smt"])
t0 = time.time()
train(cfg, progress=False)
show(a.name + "/smt", root / "smt")
if a.dmt_steps:
    d = apply_overrides(cfg, ["method=dmt", f"train.steps={a.dmt_steps}", f"init_from={root}/smt", f"out_dir={root}/dmt",
                              "train.lr=0.0003", "train.warmup=0", "train.eval_every=50"] + a.dmt)
    train(d, progress=False)
    show(a.name + "/dmt", root / "dmt")
print(a.name, "total seconds", round(time.time() - t0))
