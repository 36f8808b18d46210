#!/usr/bin/env bash
# What a server with the drafter loaded but drafting nothing (γ = 0) costs over the target alone, in steady decoding:
# each server in turn (no-spec, then γ = 0), CONC client threads sending their prompt again and again for 45 s, and a
# py-spy profile (250 Hz, raw stacks, server and engine core) of 25 s of it. Prints both throughputs and, per
# function, the share of profile samples whose stack holds it.
#   bash benchmarks/serving/profile_spec_overhead.sh TESTBED PROMPTS [OUT]
# TESTBED: a `benchmarks.serving.testbed` folder (target/, drafters/dspark/); PROMPTS: JSONL with "prompt".
# CONC (default 16; at most 16: the γ = 0 schedule covers 1-16 requests), PORT (8731), KV_SPACE_GIB (1).
# Needs `pip install py-spy`.
set -euo pipefail
TESTBED=$(cd "${1:?testbed folder}" && pwd)
PROMPTS=${2:?prompts JSONL}
OUT=${3:-runs/profile-spec-overhead}
CONC=${CONC:-16}; PORT=${PORT:-8731}
mkdir -p "$OUT"
SPEC='{"method": "dflash", "model": "'$TESTBED/drafters/dspark'", "num_speculative_tokens": 4,
       "dspark": {"mode": "static"}, "num_speculative_tokens_per_batch_size": [[1, 16, 0]]}'
for cfg in nospec gamma0; do
  args=(--model "$TESTBED/target" --max-model-len 1024 --enforce-eager --seed 0 --port "$PORT")
  [ $cfg = gamma0 ] && args+=(--speculative-config "$SPEC")
  VLLM_CPU_KVCACHE_SPACE=${KV_SPACE_GIB:-1} python -m vllm.entrypoints.openai.api_server "${args[@]}" \
    > "$OUT/server-$cfg.log" 2>&1 &
  server=$!
  until curl -sf "localhost:$PORT/v1/models" >/dev/null; do
    kill -0 $server 2>/dev/null || { tail -20 "$OUT/server-$cfg.log"; exit 1; }
    sleep 2
  done
  python - "$PORT" 45 "$CONC" "$PROMPTS" > "$OUT/load-$cfg.json" <<'PY' &
import json, sys, threading, time
from openai import OpenAI
port, seconds, conc, path = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused")
model = client.models.list().data[0].id
prompts = [json.loads(line)["prompt"] for line in open(path) if line.strip()][:conc]
end, tokens, lock = time.time() + seconds, [0], threading.Lock()
def user(prompt):
    while time.time() < end:
        out = client.completions.create(model=model, prompt=prompt, max_tokens=48, temperature=0,
                                        extra_body={"ignore_eos": True})
        with lock:
            tokens[0] += out.usage.completion_tokens
start = time.time()
threads = [threading.Thread(target=user, args=(p,)) for p in prompts]
for t in threads: t.start()
for t in threads: t.join()
print(json.dumps({"threads": len(prompts), "tokens": tokens[0], "tok_s": tokens[0] / (time.time() - start)}))
PY
  load=$!
  sleep 12
  py-spy record --subprocesses --pid $server --duration 25 --rate 250 --format raw --output "$OUT/$cfg.txt" \
    --nonblocking > "$OUT/py-spy-$cfg.log" 2>&1
  wait $load
  kill $server; wait $server 2>/dev/null || true
  sleep 3
done
for cfg in nospec gamma0; do echo "$cfg: $(cat "$OUT/load-$cfg.json")"; done
python - "$OUT/nospec.txt" "$OUT/gamma0.txt" <<'PY'
import collections, sys
def stacks(path):
    out = collections.Counter()
    for line in open(path):
        stack, _, n = line.rstrip().rpartition(" ")
        if stack and n.isdigit():  # a frame may hold spaces, the count is the last field
            out[stack] += int(n)
    return out
a, b = stacks(sys.argv[1]), stacks(sys.argv[2])
ta, tb = sum(a.values()), sum(b.values())
print(f"{'function (share of samples)':34s} {'nospec':>8s} {'gamma0':>8s}")
for name in ("_model_forward", "sample_tokens", "propose_draft_token_ids", "_skip_round", "_prepare_inputs",
             "_build_attention_metadata", "_bookkeeping_sync", "update_from_output", "schedule ("):
    share = lambda s, t: 100 * sum(n for k, n in s.items() if name in k) / t
    print(f"{name:34s} {share(a, ta):7.1f}% {share(b, tb):7.1f}%")
PY
