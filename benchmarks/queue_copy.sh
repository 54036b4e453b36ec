#!/usr/bin/env bash
# String copy (T=33: 16 symbols to copy) against memory size K x 64 (teacher and cell alike), the runs
# behind benchmarks/copy_memory.py: 900 SMT steps, then 600 DMT steps at lr 1e-4, one thread each.
# Usage: bash benchmarks/queue_copy.sh [ROOT]
set -euo pipefail
ROOT=${1:-runs/bench/copy}
M=${MEMTRAIN:-memtrain}
for K in 1 2 4 8; do
  out="$ROOT/K$K"
  [ -f "$out/dmt/run.json" ] && { echo "K=$K: done already"; continue; }
  common=(task=copy 'task_args={"length": 33}' teacher.mem_tokens=$K cell.mem_tokens=$K train.threads=1 train.eval_every=300)
  $M train --preset retrieval-smt --quiet "${common[@]}" train.steps=900 out_dir="$out/smt"
  $M train --preset retrieval-smt --quiet "${common[@]}" method=dmt train.steps=600 train.lr=1e-4 train.warmup=0 \
     init_from="$out/smt" out_dir="$out/dmt"
  echo "K=$K: done"
done
