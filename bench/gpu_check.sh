#!/usr/bin/env bash
# One prepared GPU check, at most 10 minutes on a machine with a CUDA device (issue 19):
#   bash bench/gpu_check.sh            # PYTHON=/path/to/python to use another interpreter
# 1. the CUDA sync-debug tests (no host sync inside any strategy's training step);
# 2. bench/overhead.py on the GPU: the harness against a bare PyTorch loop (fashion-mnist);
# 3. one fashion-mnist run in bf16 + channels-last + torch.compile, beside the same run in fp32;
# 4. every registered strategy for 200 steps on fashion-mnist and on bbc-news (fresh runs);
# then one table of everything. Each part has its own time limit, so one that hangs cannot eat
# the others' time. On a machine without a CUDA device it says so and exits 0.
# A rehearsal on a CPU (the same parts, tiny sizes; the tests run it):
#   DEVICE=cpu STEPS=2 OVERHEAD_SAMPLES=512 REPEATS=1 STRATEGIES="in-batch random" \
#     SUITES=digits FAST_SETS="--set speed.channels_last=true" bash bench/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
export DEVICE=${DEVICE:-cuda} STEPS=${STEPS:-200} STRATEGIES=${STRATEGIES:-all}
export SUITES=${SUITES:-fashion-mnist bbc-news}
OVERHEAD_SAMPLES=${OVERHEAD_SAMPLES:-100000}
REPEATS=${REPEATS:-3}
FAST_SETS=${FAST_SETS:---set speed.precision=bf16 --set speed.channels_last=true --set speed.compile=true}
if [ "$DEVICE" = cuda ] && ! "$PY" -c 'import sys, torch
sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
  echo "gpu_check: no CUDA device here (torch.cuda.is_available() is False); nothing to check"
  exit 0
fi
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"
URI="sqlite:///$OUT/runs.db"
export NEGBENCH_GPU_CHECK_OUT="$OUT"
start=$(date +%s)
"$PY" -c 'import os, torch
name = torch.cuda.get_device_name(0) if os.environ["DEVICE"] == "cuda" else os.environ["DEVICE"]
print("gpu_check:", name, "| torch", torch.__version__, "| CUDA", torch.version.cuda)'

part() {  # part NAME SECONDS COMMAND...: run it, record its status and duration
  local name=$1 limit=$2; shift 2
  local t0=$(date +%s)
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  echo "$name $rc $(( $(date +%s) - t0 ))" >> "$OUT/parts.txt"
  echo "gpu_check: $name: exit $rc in $(( $(date +%s) - t0 )) s (log $OUT/$name.log)"
}

part sync-debug 90 "$PY" -m pytest -q -p no:cacheprovider tests/test_sync_free.py \
  -k "cuda or read_nothing_back"
first=${SUITES%% *}
part overhead 150 "$PY" bench/overhead.py --suite "$first" --samples "$OVERHEAD_SAMPLES" \
  --repeats "$REPEATS" --device "$DEVICE"
for mode in fp32 fast; do
  sets=()
  [ "$mode" = fast ] && read -r -a sets <<< "$FAST_SETS"
  part "run-$mode" 120 "$PY" -m negbench.harness.cli run --suite "$first" \
    --strategy in-batch --budget "steps=$(( STEPS * 3 / 2 ))" "${sets[@]}" --device "$DEVICE" \
    --tracking-uri "$URI" --experiment gpu-check-speed --no-progress --json
done
part strategies 300 "$PY" - <<'PY'
import json, os, time
from negbench import strategies
from negbench.harness.config import build_config, parse_budget
from negbench.harness.runner import run

out = os.environ["NEGBENCH_GPU_CHECK_OUT"]
names = os.environ["STRATEGIES"].split()
names = strategies.names() if names == ["all"] else names
rows = []
for suite in os.environ["SUITES"].split():
    for name in names:
        t = time.perf_counter()
        try:
            cfg = build_config(suite, name, budget=parse_budget(f"steps={os.environ['STEPS']}"),
                               sets={"device": os.environ["DEVICE"]})
            r = run(cfg, tracking_uri=f"sqlite:///{out}/runs.db", experiment="gpu-check")
            m = r.metrics
            rows.append({"suite": suite, "strategy": name, "samples/s": m["samples_per_second"],
                         "knn": m["knn_acc"], "peak_cuda_mb": m.get("peak_cuda_mb"),
                         "health": r.health, "wall_s": time.perf_counter() - t})
        except Exception as e:  # one strategy's failure is a row, not the end of the check
            rows.append({"suite": suite, "strategy": name, "error": f"{type(e).__name__}: {e}"})
        print(json.dumps(rows[-1]), flush=True)
json.dump(rows, open(f"{out}/strategies.json", "w"))
PY

"$PY" - <<'PY'
import json, os, re
out = os.environ["NEGBENCH_GPU_CHECK_OUT"]
print("\n| part | exit | seconds | result |\n|---|---|---|---|")
for line in open(f"{out}/parts.txt"):
    name, rc, sec = line.split()
    log = open(f"{out}/{name}.log").read()
    if name == "sync-debug":
        res = (re.findall(r"\d+ (?:passed|failed|skipped)[^\n]*", log) or ["?"])[-1]
    elif name == "overhead":
        res = "; ".join(l.strip() for l in log.splitlines() if "ratio" in l.lower())[-300:]
    elif name.startswith("run-"):
        try:
            m = json.loads(log.strip().splitlines()[-1])
            res = f"{m['samples_per_second']:.0f} samples/s, kNN {m['knn_acc']:.4f}"
        except Exception:
            res = log.strip().splitlines()[-1][-200:] if log.strip() else "no output"
    else:
        res = "see the table below"
    print(f"| {name} | {rc} | {sec} | {res} |")
try:
    rows = json.load(open(f"{out}/strategies.json"))
except OSError:
    rows = [json.loads(l) for l in open(f"{out}/strategies.log") if l.startswith("{")]
print("\n| suite | strategy | samples/s | kNN | peak CUDA MB | health | seconds |")
print("|---|---|---|---|---|---|---|")
for r in rows:
    if "error" in r:
        print(f"| {r['suite']} | {r['strategy']} | error: {r['error'][:120]} | | | | |")
    else:
        mb = r["peak_cuda_mb"]
        print(f"| {r['suite']} | {r['strategy']} | {r['samples/s']:.0f} | {r['knn']:.4f} | "
              f"{mb:.0f} | {r['health']} | {r['wall_s']:.0f} |" if mb is not None else
              f"| {r['suite']} | {r['strategy']} | {r['samples/s']:.0f} | {r['knn']:.4f} | – | "
              f"{r['health']} | {r['wall_s']:.0f} |")
PY
echo "gpu_check: done in $(( $(date +%s) - start )) s; logs and runs in $OUT"
