#!/usr/bin/env bash
# The GPU check (issue 25), one script within 10 minutes on a machine with CUDA:
#   1. tests/test_device.py on the GPU (every method x cell, the training loop, bf16 autocast)
#   2. SMT, DMT and BPTT updates at the paper's sizes, bf16, with MFU (benchmarks/paper_step.py)
#   3. benchmarks/step_time.py on the GPU in bf16, with MFU
#   4. retrieval at T=256, 2 minutes of training each: SMT -> DMT, BPTT on the same cell, BPTT on
#      torch's fused LSTM (benchmarks/length_sweep.py run)
# and writes ONE JSON with the device, torch's version and every figure: $OUT/gpu_check.json when
# $OUT is set, else benchmarks/results/gpu_check.json. Each part runs under its own `timeout`, all of
# them within GPU_CHECK_BUDGET seconds (default 570); a part with too little time left is skipped, and
# the retrieval runs shrink to what is left, both recorded. Exit 0 when every part passed, 1 when
# some did not (the JSON says which), 2 without a CUDA device (one line; nothing run or written).
#
#   bash benchmarks/gpu_check.sh                      # on the GPU machine
#   bash benchmarks/gpu_check.sh --device cpu --quick # dry run here: tiny sizes, a few seconds a part
set -u
cd "$(dirname "$0")/.."
DEVICE=cuda QUICK=0
while [ $# -gt 0 ]; do
    case "$1" in
        --device) DEVICE=$2; shift 2 ;;
        --quick) QUICK=1; shift ;;
        *) echo "gpu_check.sh: unknown argument $1 (use --device DEVICE, --quick)" >&2; exit 2 ;;
    esac
done
PY=${PYTHON:-python}
if [ "$DEVICE" = cuda ] && ! $PY -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    echo "gpu_check.sh: no CUDA device here (torch.cuda.is_available() is False): nothing run, nothing written" >&2
    exit 2
fi
DEST=${OUT:-benchmarks/results}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")
BUDGET=${GPU_CHECK_BUDGET:-570}
START=$(date +%s)
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$([ "$QUICK" = 1 ] && echo 1 || echo 4)}

left() { echo $((BUDGET - ($(date +%s) - START))); }

# part NAME CAP_SECONDS COMMAND...: run COMMAND under `timeout` (CAP or what is left of the budget),
# its output in WORK/NAME.log, one line of JSON about it in WORK/parts.jsonl
part() {
    local name=$1 cap=$2 t rc t0
    shift 2
    t=$(left)
    [ "$cap" -lt "$t" ] && t=$cap
    if [ "$t" -lt 15 ]; then
        echo "{\"part\": \"$name\", \"skipped\": \"out of budget\"}" >> "$WORK/parts.jsonl"
        echo "== $name: skipped (out of budget)"
        return
    fi
    echo "== $name (at most ${t} s)"
    t0=$(date +%s%N)
    timeout --kill-after=15 "$t" "$@" > "$WORK/$name.log" 2>&1
    rc=$?
    ms=$(( ($(date +%s%N) - t0) / 1000000 ))
    timed_out=false
    { [ $rc -eq 124 ] || [ $rc -eq 137 ]; } && timed_out=true
    printf '{"part": "%s", "rc": %d, "seconds": %d.%03d, "timeout_s": %d, "timed_out": %s}\n' \
        "$name" "$rc" $((ms / 1000)) $((ms % 1000)) "$t" "$timed_out" >> "$WORK/parts.jsonl"
    tail -n 3 "$WORK/$name.log" | sed 's/^/   /'
}

if [ "$QUICK" = 1 ]; then  # the plumbing only: tiny sizes, seconds per part
    TEST_DEVICE=fake; [ "$DEVICE" != cpu ] && TEST_DEVICE=$DEVICE
    part device_tests 120 env MEMTRAIN_TEST_DEVICE=$TEST_DEVICE $PY -m pytest tests/test_device.py -q -p no:cacheprovider \
        -k "smt-mlp or bptt-torch-lstm"
    for m in smt dmt bptt; do
        part paper_$m 60 $PY benchmarks/paper_step.py --methods $m --device "$DEVICE" --quick --updates 2 --peak-tflops 1 \
            --results "$WORK/paper_$m"
    done
    part step_time 60 $PY benchmarks/step_time.py --device "$DEVICE" --dtype bf16 --lengths 16 --batch 2 --repeats 1 \
        --peak-tflops 1 --results "$WORK/step_time"
    LENGTH=16 SECONDS_EACH=3 MIN_SECONDS=1 EVAL_EVERY=5 SLACK=30
else
    part device_tests 120 env MEMTRAIN_TEST_DEVICE=$DEVICE $PY -m pytest tests/test_device.py -q -p no:cacheprovider
    for m in smt dmt bptt; do
        part paper_$m 60 $PY benchmarks/paper_step.py --methods $m --device "$DEVICE" --dtype bf16 --updates 5 \
            --results "$WORK/paper_$m"
    done
    part step_time 60 $PY benchmarks/step_time.py --device "$DEVICE" --dtype bf16 --lengths 256 1024 --batch 32 \
        --repeats 3 --results "$WORK/step_time"
    LENGTH=256 SECONDS_EACH=120 MIN_SECONDS=30 EVAL_EVERY=200 SLACK=30
fi
# retrieval at T=LENGTH, the same seconds of training each (shortened evenly when the budget is short)
n=3
for m in smt-dmt bptt-mlp bptt-lstm; do
    s=$(( $(left) / n - SLACK ))
    [ "$s" -gt "$SECONDS_EACH" ] && s=$SECONDS_EACH
    n=$((n - 1))
    if [ "$s" -lt "$MIN_SECONDS" ]; then
        echo "{\"part\": \"retrieval_$m\", \"skipped\": \"out of budget\"}" >> "$WORK/parts.jsonl"
        continue
    fi
    part "retrieval_$m" $((s + SLACK)) $PY benchmarks/length_sweep.py run --methods $m --lengths $LENGTH --seconds $s \
        --eval-every $EVAL_EVERY --root "$WORK/sweep" train.device=$DEVICE
done

# one JSON of everything
$PY - "$WORK" "$DEST" "$DEVICE" "$QUICK" "$BUDGET" "$START" <<'EOF'
import json, os, platform, re, sys, time
from pathlib import Path

import torch

work, dest, device, quick, budget, start = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], sys.argv[4] == "1", int(sys.argv[5]), float(sys.argv[6])
sys.path.insert(0, "benchmarks")
from length_sweep import summarise  # noqa: E402

parts = {}
for line in (work / "parts.jsonl").read_text().splitlines():
    p = json.loads(line)
    name = p.pop("part")
    log = work / f"{name}.log"
    parts[name] = {**p, **({"log_tail": log.read_text(errors="replace").splitlines()[-15:]} if log.is_file() else {})}


def results(name):
    f = work / name / ("step_time.json" if name == "step_time" else "paper_step.json")
    return json.loads(f.read_text()) if f.is_file() else None


tests = parts.get("device_tests", {})
summary = next((ln for ln in reversed(tests.get("log_tail", [])) if re.search(r"\d+ (passed|failed)", ln)), None)
count = lambda word: int(m.group(1)) if summary and (m := re.search(rf"(\d+) {word}", summary)) else 0
paper = {m: results(f"paper_{m}") for m in ("smt", "dmt", "bptt")}
runs = []
for d in sorted((work / "sweep").glob("*/run.json")):
    r = summarise(d.parent)
    runs.append({k: v for k, v in r.items() if k != "dir"} | {"run": d.parent.name})
cuda = device.startswith("cuda") and torch.cuda.is_available()
out = {
    "check": "gpu_check", "quick": quick, "device": device,
    "device_name": torch.cuda.get_device_name(0) if cuda else platform.processor() or platform.machine(),
    "torch": torch.__version__, "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version() if cuda else None,
    "python": platform.python_version(), "budget_s": budget, "total_s": round(time.time() - start, 1),
    "passed": all(p.get("rc") == 0 for p in parts.values()),
    "device_tests": {"passed": count("passed"), "failed": count("failed"), "errors": count("error"), "summary": summary},
    "paper_sizes": {m: (r["rows"][0] if r else None) for m, r in paper.items()},
    "paper_peak_flops": next((r["peak_flops"] for r in paper.values() if r), None),
    "step_time": results("step_time"),
    "retrieval": runs,
    "parts": parts,
}
dest.mkdir(parents=True, exist_ok=True)
tmp = dest / ".gpu_check.json.tmp"
tmp.write_text(json.dumps(out, indent=1) + "\n")
os.replace(tmp, dest / "gpu_check.json")
print(f"wrote {dest / 'gpu_check.json'}: {'every part passed' if out['passed'] else 'some parts failed: see parts'}")
for m, r in out["paper_sizes"].items():
    if r:
        mfu = f", MFU {r['mfu']:.1%}" if r.get("mfu") is not None else ""
        print(f"  paper sizes, {m}: {r['median_s']:.3f} s / update at batch {r['batch']}{mfu}")
for r in runs:
    print(f"  {r['run']}: RNN alone {r['rnn_acc']:.3f} after {r['updates']} updates, {r['seconds']:.0f} s")
sys.exit(0 if out["passed"] else 1)
EOF
rc=$?
rm -rf "$WORK"
exit $rc
