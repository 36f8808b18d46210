# Sourced by campaign_cpu.sh and dynamic_cpu.sh: the serving testbed and the settings that depend on its speed.
#
# INFLATE=1 (default): serve pycode-23m inflated by testbed.py to hidden 1024, 28 layers, 16/8 heads x 128, MLP 3072,
# bf16 (449M params; a verify step costs ~100-130 ms at 1 token on a 2-core CPU, `vllm-dspark profile`), with every
# drafter inflated by the same maps. The construction is exact, so the inflated drafters accept what the small ones
# do and everything measured on the small models (acceptance per position from `vllm-dspark eval`, STS
# calibration) still applies; only the cost changes. Built once into TESTBED (default runs/inflated), reused while
# its inputs are unchanged. INFLATE_ARGS: extra testbed.py flags (e.g. a smaller shape for smoke runs).
# INFLATE=0: the small target itself, as before.
INFLATE=${INFLATE:-1}
TESTBED=${TESTBED:-runs/inflated}
INFLATE_ARGS=${INFLATE_ARGS:-}
# Readout anchors (tok/s/user: moderate, interactive) and dspark-sla's floor, from the target alone's per-user speed
# (benchmarks/serving/README.md, "SLA anchors"). Inflated: ~6 tok/s/user at concurrency 1, ~3.3 at 16.
# Small target: ~138 at 1, ~56 at 16.
if [ "$INFLATE" = 0 ]; then SLA=${SLA:-60 100}; SLA_FLOOR=${SLA_FLOOR:-50}
else SLA=${SLA:-3.5 5}; SLA_FLOOR=${SLA_FLOOR:-3}; fi
# KV cache: the inflated target holds 28 layers x 8 kv heads x 128 x 2 (K, V) x 2 bytes = 112 KiB per token, so
# 1 GiB holds ~9.3k tokens (~9k beside the recipe's one-layer drafter's cache): the 16 default eval prompts (3.9k
# prompt tokens, the longest 760) plus 64 outputs each fit at concurrency 16, and max-model-len 1024 fits them all.
KV_SPACE_GIB=${KV_SPACE_GIB:-1}
# engine flags shared by the servers and `vllm-dspark profile`
ENGINE_ARGS=${ENGINE_ARGS:---max-model-len 1024 --enforce-eager}

# cpu_line: cores, model and the ISA features that decide the testbed's regime. Without avx512_bf16 / amx_bf16 the
# CPU emulates bf16 matmuls and the target is compute-bound (step time ~ proportional to batch tokens: measured on an
# AVX2-only 2-core EPYC, 158 / 271 / 461 / 849 ms at 1 / 2 / 4 / 8 tokens, and no better in fp32), so no verification
# length pays there; the note in machine.txt says so before the numbers do.
cpu_line() {
  local isa
  isa=$(grep -m1 '^flags' /proc/cpuinfo | tr ' ' '\n' | grep -xE 'avx2|avx512f|avx512_bf16|amx_bf16|amx_tile' \
    | tr '\n' ' ') || true
  echo "nproc $(nproc); $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//');" \
    "ISA: ${isa:-none of avx2/avx512}"
  if [ "$INFLATE" != 0 ] && ! grep -qwE 'avx512_bf16|amx_bf16' /proc/cpuinfo; then
    echo "NOTE: no native bf16 on this CPU (avx512_bf16 / amx_bf16): the inflated target is compute-bound" \
      "here, so verifying drafts costs about as much as generating the tokens"
  fi
}

# use_testbed [DRAFTER_DIR...]: unless INFLATE=0, build (or reuse) the inflated target and the given drafters and
# point TARGET at the inflated target; the drafters land in $TESTBED/drafters/<folder name>. PROMPTS keeps the small
# target's eval prompts (the inflated folder has the tokenizer, not the prompt files).
use_testbed() {
  PROMPTS=${PROMPTS:-$TARGET/eval_prompts.jsonl}
  [ "$INFLATE" = 0 ] && return 0
  local args=() d
  for d in "$@"; do args+=(--drafter "$d"); done
  # shellcheck disable=SC2086  # INFLATE_ARGS is a flag list
  $PYTHON -m benchmarks.serving.testbed --target "$TARGET" --out "$TESTBED" "${args[@]}" $INFLATE_ARGS \
    | tee -a "$OUT/machine.txt"
  TARGET=$(cd "$TESTBED/target" && pwd)
}

max_concurrency() { echo $CONCURRENCY | tr ' ' '\n' | sort -n | tail -1; }

# profile_table DRAFTER GAMMA OUT_DIR: the served engine's cost table with DRAFTER (`vllm-dspark profile`,
# OUT_DIR/cost_table.json) for up to the largest of CONCURRENCY requests; the DSpark servers then skip their own
# start-up profile.
profile_table() {
  # shellcheck disable=SC2086  # ENGINE_ARGS is a flag list
  VLLM_CPU_KVCACHE_SPACE=$KV_SPACE_GIB $PYTHON -m vllm_dspark profile --model "$TARGET" --drafter "$1" \
    --out "$3/cost_table.json" --num-speculative-tokens "$2" $ENGINE_ARGS --max-num-seqs "$(max_concurrency)" >&2
}

# batch_schedule DRAFTER EVAL GAMMA OUT_DIR: profile the served engine with DRAFTER (`vllm-dspark profile`,
# OUT_DIR/cost_table.json) for up to the largest of CONCURRENCY requests, pick γ for each number of running requests
# from that table and the drafter's measured T = 0 acceptance per position (`vllm-dspark schedule --eval EVAL`,
# OUT_DIR/schedule.json) and print the schedule as the JSON value of `num_speculative_tokens_per_batch_size`.
batch_schedule() {
  profile_table "$1" "$3" "$4" || return
  $PYTHON -m vllm_dspark schedule --cost-table "$4/cost_table.json" --eval "$2" --gamma "$3" \
    --max-batch "$(max_concurrency)" --json "$4/schedule.json" >&2 || return
  $PYTHON -c "import json, sys; print(json.dumps(json.load(open(sys.argv[1]))['num_speculative_tokens_per_batch_size']))" \
    "$4/schedule.json"
}

# cut_prompts: unless PROMPT_CHARS is 0, write the last PROMPT_CHARS characters of each of PROMPTS to
# $OUT/prompts.jsonl and point PROMPTS there (decode-dominated points: whole files cost minutes of prefill per point
# at concurrency >= 4 on a CPU).
cut_prompts() {
  [ "$PROMPT_CHARS" = 0 ] && return 0
  $PYTHON - "$PROMPTS" "$OUT/prompts.jsonl" "$PROMPT_CHARS" <<'EOF'
import json, sys
src, dst, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
rows = [json.loads(line) for line in open(src) if line.strip()]
with open(dst, "w") as f:
    for r in rows:
        f.write(json.dumps({"prompt": r["prompt"][-n:]}) + "\n")
EOF
  PROMPTS=$OUT/prompts.jsonl
}
