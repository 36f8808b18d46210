#!/usr/bin/env bash
# Every pending kernel run (issue 6) in ONE device-tool call on a lent H100; results under $OUT.
#   run(command="bash benchmarks/kernels/gpu_session.sh", carry=[".whl"], timeout_s=540)
# (.whl: pydantic and its deps for cp312, which the GPU image lacks; see examples/train_pycode/gpu_session.sh)
# 1. GPU kernel + scheduling tests (the compiled path at the real shapes, both in-group draw paths) and the
#    proposer's draft round replayed from CUDA graphs against its eager run (tests/adapter/test_sequential.py);
# 2. the benchmark at V = 151,936, r = 256, γ = 7: graph-replay round time, x floor, head % of the linear-only and
#    the cost-realistic (attention over a 2,048-token KV cache) target step, the TILE_DRAW ablation, a profile;
# 3. a tile-config sweep at batch 64 and 256 (greedy), configs BLOCK_N x warps x stages x programs/SM.
# Each part has its own timeout so that a slow part cannot eat the others; the logs and JSON come back in $OUT.
# Dry run on a CPU machine (tiny shapes, interpreter): OUT=/tmp/k BENCH_ARGS=--cpu-small bash <this script>
set -uo pipefail
: "${OUT:?OUT must be set (the device tool sets it)}"
REPO=$(cd "$(dirname "$0")/../.." && pwd)
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-deps --no-build-isolation --no-index --target /tmp/site "$REPO" >/dev/null 2>&1 \
  || { echo "pip install of the package failed"; exit 1; }
if ls "$REPO"/.whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    "$REPO"/.whl/*.whl || echo "wheel install failed: tests needing pydantic will error"
fi
export PYTHONPATH=/tmp/site
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/machine.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$OUT/machine.txt"
# Tests run from a copy outside the tree: in the tree, `vllm_dspark` would resolve to the source folder, which has
# no `kernels` subpackage (setup.py maps the top-level kernels/ onto it).
rm -rf /tmp/dspark && mkdir /tmp/dspark && cp -r "$REPO/tests" "$REPO/benchmarks" /tmp/dspark/ && cd /tmp
timeout "${TESTS_TIMEOUT_S:-150}" python3 -m pytest /tmp/dspark/tests/kernels /tmp/dspark/tests/scheduling \
  /tmp/dspark/tests/adapter/test_sequential.py -q \
  -p no:cacheprovider 2>&1 | tail -15 | tee "$OUT/tests.log"
BENCH="$REPO/benchmarks/kernels/bench_markov_step.py"
timeout "${BENCH_TIMEOUT_S:-220}" python3 "$BENCH" ${BENCH_ARGS:-} --draw-ablation --profile --json "$OUT/kernels.json" 2>&1 \
  | tee "$OUT/bench.log"
timeout "${SWEEP_TIMEOUT_S:-140}" python3 "$BENCH" ${BENCH_ARGS:-} --batch 64,256 --modes greedy --no-eager --no-target \
  --tile-configs "${TILE_CONFIGS:-64x4x1x2,64x4x2x1,64x8x2x1,128x8x1x1,128x8x2x1,32x4x2x2}" \
  --json "$OUT/sweep.json" 2>&1 | tee "$OUT/sweep.log"
ls -l "$OUT"
