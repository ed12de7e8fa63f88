#!/usr/bin/env bash
# Everything a session checks on a lent GPU machine, in one run (the device tool runs
# commands from the repository root and returns what lands under $OUT, 8 files at most).
#
#   bash benchmarks/cuda_session.sh            # about 6-8 minutes on an H200
#
# Writes to $OUT (default /tmp/cuda_out):
#   env.txt                 GPU, driver, torch and triton versions
#   cuda_check.json/.log    benchmarks/cuda_check.py --fma-probe: kernel vs replay vs torch.optim,
#                           torch.compile recompiles after warm-up (must be 0)
#   speed_<workload>.json   benchmarks/step_speed.py --device cuda, one workload each
#                           (read them here with `step_speed.py --table FILE`)
#   speed.log               the step_speed runs' output
# Each part has its own time limit, so one that hangs does not take the others' time.
set -u
OUT=${OUT:-/tmp/cuda_out}
mkdir -p "$OUT"
export PYTHONPATH=src
PY=${PYTHON:-python}
STEPS=${STEPS:-20}
REPEATS=${REPEATS:-21}
{
  nvidia-smi -L
  nvidia-smi --query-gpu=name,driver_version,clocks.max.memory --format=csv
  "$PY" -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
} > "$OUT/env.txt" 2>&1
timeout 200 "$PY" benchmarks/cuda_check.py --steps "$STEPS" --fma-probe \
  --json "$OUT/cuda_check.json" > "$OUT/cuda_check.log" 2>&1
echo "cuda_check exit $?" >> "$OUT/cuda_check.log"
warm=()
for workload in mlp medium large many; do
  timeout 110 "$PY" benchmarks/step_speed.py --device cuda --workload "$workload" \
    --repeats "$REPEATS" "${warm[@]}" --json "$OUT/speed_$workload.json" >> "$OUT/speed.log" 2>&1
  echo "step_speed $workload exit $?" >> "$OUT/speed.log"
  warm=(--warm-cache)  # Triton's compiles of the first workload serve the rest
done
tail -n 3 "$OUT"/*.log
