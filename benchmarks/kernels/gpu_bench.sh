#!/usr/bin/env bash
# Every kernel check and measurement that needs a GPU, on one CUDA GPU with the package installed
# (`pip install ".[test]"` from this checkout, or `pip install "vllm-dspark[test]"`; no vLLM needed):
# 1. the GPU kernel and scheduling tests (the compiled path at the real shapes, both in-group draw paths) and the
#    proposer's draft round replayed from CUDA graphs against its eager run (tests/adapter/test_sequential.py);
# 2. the benchmark at V = 151,936, r = 256, γ = 7: graph-replay round time, x floor, head % of the linear-only and
#    the cost-realistic (attention over a 2,048-token KV cache) target step, the in-tile-draw ablation, a profile;
# 3. a tile-config sweep at batch 64 and 256 (greedy), configs BLOCK_N x warps x stages x programs/SM.
# Logs and JSON go to $OUT (default benchmarks/out/kernels-gpu, git-ignored).
#   bash benchmarks/kernels/gpu_bench.sh
# Dry run without a GPU (tiny shapes, Triton interpreter): BENCH_ARGS=--cpu-small bash benchmarks/kernels/gpu_bench.sh
set -uo pipefail
REPO=$(cd "$(dirname "$0")/../.." && pwd)
OUT=${OUT:-$REPO/benchmarks/out/kernels-gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo "no nvidia-smi"
  python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
} | tee "$OUT/machine.txt"
# Run from outside the checkout, so `vllm_dspark` is the installed package (the source folder has no `kernels`
# subpackage: setup.py maps the top-level kernels/ onto it).
cd "$(mktemp -d)"
python3 -m pytest "$REPO/tests/kernels" "$REPO/tests/scheduling" "$REPO/tests/adapter/test_sequential.py" -q \
  -p no:cacheprovider 2>&1 | tail -15 | tee "$OUT/tests.log"
BENCH="$REPO/benchmarks/kernels/bench_markov_step.py"
python3 "$BENCH" ${BENCH_ARGS:-} --draw-ablation --profile --json "$OUT/kernels.json" 2>&1 | tee "$OUT/bench.log"
python3 "$BENCH" ${BENCH_ARGS:-} --batch 64,256 --modes greedy --no-eager --no-target \
  --tile-configs "${TILE_CONFIGS:-64x4x1x2,64x4x2x1,64x8x2x1,128x8x1x1,128x8x2x1,32x4x2x2}" \
  --json "$OUT/sweep.json" 2>&1 | tee "$OUT/sweep.log"
ls -l "$OUT"
