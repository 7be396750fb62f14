#!/usr/bin/env bash
# GPU check of the DCNv3 hub kernel, for the device machine (torch 2.11+cu130, no network, no `kernels`).
# Prepare here first: bash scripts/fetch_gpu_wheels.sh   (fills .whl/, carried with `carry: [".whl"]`)
# Then on the device: bash scripts/gpu_check.sh          (logs go to $OUT, at most 8 files)
# Budget: about 1 min build (local arch only), 3-4 min tests, 1-2 min benchmark; each step has a timeout.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu_check_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "wheel install failed" | tee "$OUT/summary.txt"; exit 1; }
  export PYTHONPATH=/tmp/site:$PWD/src
else
  echo "warning: no .whl/ wheels: tests that need \`kernels\` will be skipped" >&2
  export PYTHONPATH=$PWD/src
fi

{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  nvcc --version | tail -1
  python3 -c "import torch, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'transformers', transformers.__version__, 'gpu', torch.cuda.get_device_name(), torch.cuda.get_device_capability())"
  python3 -c "import kernels; print('kernels', kernels.__version__)" || true
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

# 1. Build the CUDA variant for the local GPU only; the tests reuse it through the build cache.
export INTERNIMAGE_KERNEL_BUILD_CACHE=/tmp/dcnv3_kernel_cache INTERNIMAGE_KERNEL_CUDA_ARCHS=native
timeout 240 python3 scripts/build_kernel.py --backend cuda --cuda-archs native --out /tmp/dcnv3_cuda \
  2>&1 | tee "$OUT/build.log"
build_rc=${PIPESTATUS[0]}

# 2. The kernel tests, CUDA ones included (they run whenever torch.cuda.is_available()).
timeout 330 python3 -m pytest tests/kernel -q -p no:cacheprovider -rs --durations=15 2>&1 | tee "$OUT/tests.log"
tests_rc=${PIPESTATUS[0]}

# 3. Benchmark: PyTorch core vs kernel, fp32 and bf16, batch 1 and 32.
variant=$(ls -d /tmp/dcnv3_cuda/build/*/ 2>/dev/null | head -1)
bench_rc=1
if [ -n "$variant" ]; then
  timeout 120 python3 scripts/benchmark_dcnv3.py --kernel "$variant" --device cuda --dtype float32 \
    --batch 1 32 --iters 30 --json "$OUT/bench_fp32.json" 2>&1 | tee "$OUT/bench.log"
  bench_rc=${PIPESTATUS[0]}
  timeout 90 python3 scripts/benchmark_dcnv3.py --kernel "$variant" --device cuda --dtype bfloat16 \
    --batch 1 32 --iters 30 --json "$OUT/bench_bf16.json" 2>&1 | tee -a "$OUT/bench.log"
fi

echo "build rc=$build_rc tests rc=$tests_rc bench rc=$bench_rc" | tee "$OUT/summary.txt"
[ "$build_rc" = 0 ] && [ "$tests_rc" = 0 ] && [ "$bench_rc" = 0 ]
