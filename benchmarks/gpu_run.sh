#!/usr/bin/env bash
# The GPU measurements behind docs/speed.md, as one device call per part, each step time-boxed:
#   bash benchmarks/gpu_run.sh eager     # batch-1 table + baseline; batched eager, NHWC, TF32; checks
#   bash benchmarks/gpu_run.sh compiled   # torch.compile (reduce-overhead = CUDA graphs): batched + checks
# Writes log.txt and one JSON per step under $OUT (at most 7 files). Environment: RES (512),
# DEVICE (cuda), PRESET (sd15: its random weights are saved once to /tmp/bench_PRESET, so every
# step loads them in seconds) or BACKBONE (a folder or checkpoint instead), SIZES (1,8,32), STEPS
# (50). On a CPU, `PRESET=tiny RES=64 DEVICE=cpu` runs it in minutes: how it is kept working.
set -u
part=${1:-eager}
OUT=${OUT:-/tmp/gpu_run}
RES=${RES:-512}
DEVICE=${DEVICE:-cuda}
SIZES=${SIZES:-1,8,32}
STEPS=${STEPS:-50}
DTYPE=${DTYPE:-bf16}
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
PY=${PY:-python3}
if ! $PY -c "import diffusers" 2>/dev/null && [ -d .whl ]; then  # the device image lacks diffusers
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl
    export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
log="$OUT/log.txt"
{
    date -u
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null
    $PY -c "import torch, diffusers; print('torch', torch.__version__, 'diffusers', diffusers.__version__)"
} >>"$log" 2>&1

PRESET=${PRESET:-sd15}
BB=${BACKBONE:-/tmp/bench_$PRESET}
if [ -z "${BACKBONE:-}" ] && [ ! -d "$BB/unet" ]; then
    $PY - "$PRESET" "$BB" >>"$log" 2>&1 <<'EOF'
import sys
from diff2in1.backbone import load_backbone
from diff2in1.diffusers_folder import save_diffusers_folder
save_diffusers_folder(load_backbone(sys.argv[1], seed=0), sys.argv[2])
print(f"saved the {sys.argv[1]} preset's random weights to {sys.argv[2]}")
EOF
fi

step() {  # step NAME SECONDS COMMAND...: time-boxed, its output appended to log.txt
    local name=$1 limit=$2
    shift 2
    echo "== $name ($(date -u +%T), limit ${limit} s): $*" >>"$log"
    timeout "$limit" "$@" >>"$log" 2>&1
    echo "== $name: exit $?" >>"$log"
}
bench=(benchmarks/bench.py --backbone "$BB" --resolution "$RES" --device "$DEVICE")
checks=(benchmarks/gpu_checks.py --backbone "$BB" --resolution "$RES" --device "$DEVICE" --dtype "$DTYPE")
if [ "$part" = eager ]; then
    step table_bf16 150 $PY "${bench[@]}" --dtype "$DTYPE" --repeat 3 --steps 12 --json "$OUT/table_bf16.json"
    step batched_bf16 120 $PY "${bench[@]}" --dtype "$DTYPE" --batched "$SIZES" --steps "$STEPS" \
        --json "$OUT/batched_bf16.json"
    step batched_bf16_nhwc 60 $PY "${bench[@]}" --dtype "$DTYPE" --channels-last --batched 1,32 --steps 12 \
        --json "$OUT/batched_bf16_nhwc.json"
    step batched_fp32_tf32 60 $PY "${bench[@]}" --dtype fp32 --tf32 --batched 1,32 --steps 12 \
        --json "$OUT/batched_fp32_tf32.json"
    step checks_nhwc 60 $PY "${checks[@]}" --channels-last --json "$OUT/checks_nhwc.json"
elif [ "$part" = compiled ]; then
    step batched_bf16_compiled 330 $PY "${bench[@]}" --dtype "$DTYPE" --compile --compile-mode reduce-overhead \
        --warmup 2 --batched 1,32 --steps 12 --json "$OUT/batched_bf16_compiled.json"
    step checks_compiled 180 $PY "${checks[@]}" --compile --compile-mode reduce-overhead --json "$OUT/checks_compiled.json"
else
    echo "gpu_run.sh: part must be eager or compiled, got $part" >&2
    exit 2
fi
grep -E "^== |batch [0-9]+:|UNet pass|prediction |created sample|\"(normals_max|created_max|per_step)" "$log"
