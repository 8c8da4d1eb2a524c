#!/usr/bin/env bash
# One prepared check for a lent GPU machine (PyTorch, Triton, onnxruntime; no FAISS, no network),
# at most 8 minutes: exact density at 5.2M × 512 (tf32, bf16, error against float64 on a subset)
# and Extrinsic Sampling at 5.2M (benchmarks/gpu_density.py); MobileFaceNet and r50 training
# images/s at 112 px, batch 128 and 512, bf16, full and sharded head at 93k / 360k / 2M classes,
# each against a minimal reference loop (benchmarks/gpu_train.py). Writes gpu_check.json and
# gpu_check.md (and the parts' JSON) into OUT_DIR.
#
#   benchmarks/gpu_check.sh OUT_DIR [--smoke]      # --smoke: tiny sizes, runs on CPU too
set -uo pipefail
out=${1:?usage: benchmarks/gpu_check.sh OUT_DIR [--smoke]}
shift
smoke=()
[[ "${1:-}" == "--smoke" ]] && smoke=(--smoke)
here=$(cd "$(dirname "$0")" && pwd)
py=${PYTHON:-python}
[[ -x "$here/../.venv/bin/python" && -z "${PYTHON:-}" ]] && py="$here/../.venv/bin/python"
mkdir -p "$out"
export PYTHONPATH="$here/..${PYTHONPATH:+:$PYTHONPATH}"
start=$(date +%s)

run_part() {  # name, time limit (s), command...
    local name=$1 limit=$2
    shift 2
    echo "== $name (at most ${limit} s)"
    timeout "$limit" "$@" 2>&1 | tee "$out/$name.log"
    echo "${PIPESTATUS[0]}" > "$out/$name.rc"
}

if [[ -f "$here/gpu_density.py" ]]; then
    run_part density 210 "$py" "$here/gpu_density.py" --out "$out/density.json" "${smoke[@]}"
fi
run_part train 250 "$py" "$here/gpu_train.py" --out "$out/train.json" --budget-s 200 "${smoke[@]}"
"$py" "$here/gpu_report.py" "$out"
echo "gpu_check: $(( $(date +%s) - start )) s; $out/gpu_check.md"
