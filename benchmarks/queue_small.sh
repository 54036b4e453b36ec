#!/usr/bin/env bash
# The small SMT -> DMT runs behind benchmarks/memory_geometry.py and benchmarks/length_generalisation.py
# (one thread each, about 7 minutes per run on this project's CPU). Usage: bash benchmarks/queue_small.sh [ROOT]
set -euo pipefail
ROOT=${1:-runs/bench/small}
M=${MEMTRAIN:-memtrain}
pair() {  # NAME overrides... : 900 SMT steps, then 600 DMT steps at lr 1e-4 (the main job's schedule)
  name=$1; shift
  [ -f "$ROOT/$name/dmt/run.json" ] && { echo "$name: done already"; return; }
  $M train --preset retrieval-smt --quiet train.threads=1 train.steps=900 train.eval_every=300 "$@" out_dir="$ROOT/$name/smt"
  $M train --preset retrieval-smt --quiet method=dmt train.threads=1 train.steps=600 train.lr=1e-4 train.warmup=0 \
     train.eval_every=300 init_from="$ROOT/$name/smt" "$@" out_dir="$ROOT/$name/dmt"
  echo "$name: done"
}
pair unif-default 'task_args={"length": 32}'
pair unif-0 'task_args={"length": 32}' smt.coef_unif=0
pair gru 'task_args={"length": 32}' cell.kind=gru
pair stack-mlp task=stack 'task_args={"length": 32}'
pair stack-memtok task=stack 'task_args={"length": 32}' cell.kind=memtok
