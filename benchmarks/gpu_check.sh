#!/usr/bin/env bash
# The GPU runbook: everything adapt can only check on a GPU, in one script of under 8 minutes on one
# GPU (an H200), writing one Markdown report.
#
#   bash benchmarks/gpu_wheels.sh                  # once, with network: fills .whl/
#   bash benchmarks/gpu_check.sh [--out gpu_report.md]           # on the GPU machine
#   bash benchmarks/gpu_check.sh --cpu-rehearsal   # the same steps, shrunk, on a CPU
#
# Steps (each under its own time limit, so one that hangs cannot eat the others' time):
#   0. offline install: hydra-core, omegaconf, antlr4, pycocotools from .whl/ (the GPU image has
#      torch, lightning, transformers, peft, matplotlib but not these), then adapt itself;
#   1. `pytest -m gpu` (tests/test_gpu.py: the oracle on CUDA, a mixed-precision step);
#   2. inference images/s and MFU, fp32 and bf16, batch 1/4/8 (benchmarks/gpu_speed.py: the forward
#      of benchmarks/model_speed.py, FLOPs counted, against the datasheet and a measured matmul peak);
#   3. benchmarks/odinw/cost.py --device cuda: prompt/linear/full training-step time and peak
#      memory, evaluation time, FLOPs, and the ODinW-13 sweep's GPU-hours table.
# The rehearsal runs glip_mini on tiny images on the CPU: it checks the script, not the numbers.
set -uo pipefail
cd "$(dirname "$0")/.."

REHEARSAL=0
REPORT=gpu_report.md
PY=${PYTHON:-python3}
while [ $# -gt 0 ]; do
    case "$1" in
        --cpu-rehearsal) REHEARSAL=1 ;;
        --out) REPORT=$2; shift ;;
        *) echo "gpu_check.sh: unknown argument $1 (expected --cpu-rehearsal or --out FILE)" >&2; exit 2 ;;
    esac
    shift
done
WORK=$(mktemp -d)
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 WANDB_MODE=disabled
START=$(date +%s)

if [ "$REHEARSAL" = 1 ]; then
    DEVICE=cpu
    SPEED_ARGS=(--model glip_mini --batches 1 2 --image-hw 64 107 --reps 1)
    COST_ARGS=(--model glip_mini --size 96 --reps 1 --warmup 0 --batch 2 --eval-batch 2)
    LIMITS=(120 300 300)
else
    DEVICE=cuda
    SPEED_ARGS=(--model glip_t --batches 1 4 8 --reps 5)
    COST_ARGS=(--model glip_t --peak-tflops 989)
    LIMITS=(90 150 210)
fi

section() {  # section TITLE LIMIT_S COMMAND...: run, keep the output, note time and status
    local title=$1 limit=$2
    shift 2
    local t0 rc
    t0=$(date +%s)
    echo "[gpu_check] $title" >&2
    timeout "$limit" "$@" >"$WORK/out" 2>"$WORK/err"
    rc=$?
    {
        echo "## $title"
        echo
        echo "\`$*\` — exit $rc$([ $rc = 124 ] && echo " (stopped at its ${limit} s limit)"), $(($(date +%s) - t0)) s"
        echo
        sed "s/^\(#\+\) /#\1 /" "$WORK/out"  # its headings one level down
        if [ $rc != 0 ]; then
            echo
            echo '```'
            tail -n 30 "$WORK/err"
            echo '```'
        fi
        echo
    } >>"$REPORT.tmp"
}

# 0. Offline install (no network on the GPU machine).
if ! $PY -c "import hydra, omegaconf, pycocotools" 2>/dev/null; then
    $PY -m pip install -q --no-index --find-links .whl hydra-core omegaconf antlr4-python3-runtime pycocotools \
        || { echo "gpu_check.sh: the wheels in .whl/ do not install: run benchmarks/gpu_wheels.sh first" >&2; exit 1; }
fi
$PY -m pip install -q --no-deps --no-build-isolation -e . 2>"$WORK/pip_err" || true
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}  # also when the image's setuptools cannot install it

{
    echo "# adapt GPU check$([ "$REHEARSAL" = 1 ] && echo " (CPU rehearsal: glip_mini, tiny images; checks the script, not the numbers)")"
    echo
    echo "$(date -u +%Y-%m-%dT%H:%MZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)."
    $PY - <<'EOF'
import torch
from adapt.runs.results import machine_info
m = machine_info("cuda" if torch.cuda.is_available() else "cpu")
print("Machine: " + ", ".join(f"{k} {v}" for k, v in m.items()) + ".")
EOF
    echo
} >"$REPORT.tmp"

section "1. pytest -m gpu" "${LIMITS[0]}" \
    $PY -m pytest -m gpu -q -p no:cacheprovider tests/test_gpu.py
section "2. Inference throughput and MFU (fp32, bf16 autocast)" "${LIMITS[1]}" \
    $PY benchmarks/gpu_speed.py --device "$DEVICE" "${SPEED_ARGS[@]}" --json "$WORK/speed.json"
section "3. Training steps, peak memory and the ODinW-13 GPU-hours (cost.py)" "${LIMITS[2]}" \
    $PY benchmarks/odinw/cost.py --device "$DEVICE" "${COST_ARGS[@]}"

echo "Total: $(($(date +%s) - START)) s." >>"$REPORT.tmp"
mv "$REPORT.tmp" "$REPORT"
echo "[gpu_check] report: $REPORT" >&2
