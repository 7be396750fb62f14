#!/usr/bin/env bash
# One-call GPU check of the DCNv3 hub kernel (its DCNv3 and DCNv4 ops), for a GPU machine with torch preinstalled and
# no network (e.g. 1x H200, CUDA 13 image, 10 minutes per command).
#
#   bash scripts/gpu_check.sh            # preflight, one CUDA build, the CUDA tests, the benchmarks
#   bash scripts/gpu_check.sh --smoke    # the same plumbing on the CPU (CI runs this)
#
# Prepare where there is network: `bash scripts/fetch_gpu_wheels.sh` fills .whl/ (`kernels`, carried to the GPU
# machine); to compare with the official DCNv3 CUDA op, copy its ops_dcnv3 folder there and set
# OFFICIAL_DCNV3_SRC=<dir> (never commit it). Results go to $OUT (default /tmp/gpu_check_out): summary.txt is
# written step by step, so a run cut short still reports what it did. BUDGET_S (default 470) bounds the whole
# run; every step gets what is left of it, so the check ends cleanly within 8 minutes.
set -uo pipefail
cd "$(dirname "$0")/.."
SMOKE=0
[ "${1:-}" = "--smoke" ] && SMOKE=1
OUT=${OUT:-/tmp/gpu_check_out}
BUDGET_S=${BUDGET_S:-470}
mkdir -p "$OUT"
SUMMARY="$OUT/summary.txt"
: > "$SUMMARY"
rm -f "$OUT/bench.jsonl"
START=$(date +%s)
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python3}

note() { echo "$*" | tee -a "$SUMMARY"; }
left() { echo $(( BUDGET_S - ($(date +%s) - START) )); }
# run_step NAME MAX_SECONDS CMD...: runs CMD with min(MAX_SECONDS, time left - 15 s), logs to $OUT/NAME.log.
run_step() {
  local name=$1 max=$2; shift 2
  local limit; limit=$(left); limit=$(( limit - 15 < max ? limit - 15 : max ))
  if [ "$limit" -lt 10 ]; then note "$name: skipped (time budget spent)"; return 124; fi
  local t0; t0=$(date +%s)
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  note "$name: rc=$rc in $(( $(date +%s) - t0 )) s (limit $limit s) -> $OUT/$name.log"
  return $rc
}

note "gpu_check $( [ $SMOKE = 1 ] && echo '--smoke ' )started $(date -u +%FT%TZ), budget $BUDGET_S s"

# 0. Wheels from .whl/ (no network here). A failed install only loses the tests that need `kernels`.
if compgen -G ".whl/*.whl" > /dev/null; then
  if $PY -m pip install -q --no-index --no-deps --no-compile --target /tmp/gpu_check_site .whl/*.whl \
      > "$OUT/wheels.log" 2>&1; then
    export PYTHONPATH="$PYTHONPATH:/tmp/gpu_check_site" PATH="/tmp/gpu_check_site/bin:$PATH"  # ninja's script
    note "wheels: installed $(ls .whl | tr '\n' ' ')"
  else
    note "wheels: install failed (see wheels.log); tests that need kernels will skip"
  fi
fi

# 1. Preflight: the toolchain and the device.
NVCC=$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)
[ -x "$NVCC" ] && note "nvcc: $("$NVCC" --version | tail -1)" || note "nvcc: not found"
$PY - >> "$SUMMARY" 2>&1 <<'EOF'
import os, sysconfig, torch
header = os.path.join(sysconfig.get_paths()["include"], "Python.h")
print("python headers:", "ok" if os.path.exists(header) else f"missing ({header})")
print("torch", torch.__version__, "cuda", torch.version.cuda)
print("gpu:", torch.cuda.get_device_name() + " " + str(torch.cuda.get_device_capability()) if torch.cuda.is_available() else "none")
try:
    import kernels
    print("kernels", kernels.__version__)
except ImportError:
    print("kernels: not installed")
EOF
tail -4 "$SUMMARY"
if [ $SMOKE = 0 ] && ! $PY -c "import torch; assert torch.cuda.is_available()" 2>/dev/null; then
  note "preflight: no CUDA device visible; stopping (use --smoke on a CPU machine)"
  exit 1
fi

# 2. One build, reused by the tests (INTERNIMAGE_KERNEL_PREBUILT) and the benchmark.
BUILD=/tmp/gpu_check_build
if [ $SMOKE = 1 ]; then BACKEND=(--backend cpu); else BACKEND=(--backend cuda --cuda-archs native); fi
run_step build 240 $PY scripts/build_kernel.py "${BACKEND[@]}" --out "$BUILD"
build_rc=$?
export INTERNIMAGE_KERNEL_PREBUILT=$BUILD

# 3. The CUDA tests only (they skip without a GPU).
run_step tests 200 $PY -m pytest tests/kernel/test_kernel_cuda.py tests/kernel/test_kernel_dcnv4_cuda.py -q \
  -p no:cacheprovider -rs --durations=10
tests_rc=$?
tail -3 "$OUT/tests.log" | tee -a "$SUMMARY"
# 4. FlashInternImage's claims are GPU claims: the DCNv4 op against the DCNv3 op at the InternImage-T stages
# (dcnv4.json), then FlashInternImage-T and InternImage-T, kernelized, against ConvNeXt-T (model_bench.log).
if [ $SMOKE = 1 ]; then
  DCNV4_BENCH=(--device cpu --batch 1 --iters 1 --threads 1)
  MODEL_BENCH=(--smoke --device cpu --batch 1 --iters 1 --rounds 1)
else
  DCNV4_BENCH=(--device cuda --batch 1 8)
  MODEL_BENCH=(--device cuda --batch 1 32)
fi
dcnv4_rc=1 model_rc=1
if [ $build_rc = 0 ]; then
  run_step dcnv4_bench 60 $PY scripts/benchmark_dcnv4.py --kernel "$BUILD" --json "$OUT/dcnv4.json" "${DCNV4_BENCH[@]}"
  dcnv4_rc=$?
  run_step model_bench 90 $PY scripts/benchmark.py --no-compile --no-train --kernel-dir "$BUILD" "${MODEL_BENCH[@]}"
  model_rc=$?
  grep -E "^(convnext_t|internimage_t_kernel|flash_internimage_t_kernel) |^forward" "$OUT/model_bench.log" | tee -a "$SUMMARY"
fi

# 5. DCNv3 benchmark: PyTorch, kernel, official op (if supplied); results as JSON lines, appended as they come.
BENCH=(--summary "$OUT/bench.jsonl")
[ $SMOKE = 1 ] && BENCH+=(--smoke)
[ $build_rc = 0 ] && BENCH+=(--kernel "$BUILD")
[ -n "${OFFICIAL_DCNV3_SRC:-}" ] && BENCH+=(--official-src "$OFFICIAL_DCNV3_SRC")
bench_budget=$(( $(left) - 40 ))
run_step bench $(( bench_budget > 10 ? bench_budget + 25 : 10 )) \
  $PY scripts/benchmark_dcnv3_gpu.py --budget-s "$bench_budget" "${BENCH[@]}"
bench_rc=$?
note "benchmark rows: $(grep -c '"impl"' "$OUT/bench.jsonl" 2>/dev/null || echo 0)"

note "done in $(( $(date +%s) - START )) s: build rc=$build_rc tests rc=$tests_rc dcnv4_bench rc=$dcnv4_rc" \
  "model_bench rc=$model_rc bench rc=$bench_rc"
[ $build_rc = 0 ] && [ $tests_rc = 0 ] && [ $dcnv4_rc = 0 ] && [ $model_rc = 0 ] && [ $bench_rc = 0 ]
