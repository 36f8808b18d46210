#!/usr/bin/env bash
# What a server with the drafter loaded but drafting nothing (γ = 0) costs over the target alone, in steady decoding:
# each server in turn (no-spec, then γ = 0), CONC client threads sending their prompt again and again for 45 s, and a
# py-spy profile (250 Hz, raw stacks, API server, engine core and worker) of 25 s of it. Prints both throughputs and,
# per process and function, the profile samples whose stack holds it, per 1000 samples of the target's forward (the
# worker's `_model_forward`): the forward costs the same in both servers, so this is each part's time per step as a
# fraction of the forward's, whatever the number of steps each profile caught.
#   bash benchmarks/serving/profile_spec_overhead.sh TESTBED PROMPTS [OUT]
# TESTBED: a `benchmarks.serving.testbed` folder (target/, drafters/dspark/); PROMPTS: JSONL with "prompt".
# CONC (default 16; at most 16: the γ = 0 schedule covers 1-16 requests), PORT (8731), KV_SPACE_GIB (1),
# SPEC (the second server's --speculative-config JSON; default: γ = 0 for 1-16 requests through vLLM's
# num_speculative_tokens_per_batch_size, drafter $TESTBED/drafters/dspark; e.g. mode confidence with its draft gate
# and a cost table, for a drafter the gate turns off).
# Needs `pip install py-spy`.
set -euo pipefail
TESTBED=$(cd "${1:?testbed folder}" && pwd)
PROMPTS=${2:?prompts JSONL}
OUT=${3:-runs/profile-spec-overhead}
CONC=${CONC:-16}; PORT=${PORT:-8731}
mkdir -p "$OUT"
SPEC=${SPEC:-'{"method": "dflash", "model": "'$TESTBED/drafters/dspark'", "num_speculative_tokens": 4,
       "dspark": {"mode": "static"}, "num_speculative_tokens_per_batch_size": [[1, 16, 0]]}'}
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
PROCESSES = ("API server", "EngineCore", "Worker")
FUNCTIONS = {  # process -> functions whose samples are counted (a sample counts for every function in its stack)
    "Worker": ("_model_forward", "_prepare_inputs", "sample_tokens", "_sample (", "propose_draft_token_ids",
               "DSparkProposer.propose", "_skip_round", "_bookkeeping_sync", "acquire_read"),
    "EngineCore": ("schedule (", "update_from_output", "post_step", "take_draft_token_ids"),
    "API server": ("",),
}
def stacks(path):
    """{process: Counter(stack without process frames)}; the innermost `process` frame names the process."""
    out = collections.defaultdict(collections.Counter)
    for line in open(path):
        stack, _, n = line.rstrip().rpartition(" ")
        if not (stack and n.isdigit()):  # a frame may hold spaces, the count is the last field
            continue
        frames = stack.split(";")
        procs = [f for f in frames if f.startswith("process ")]
        name = next((p for p in PROCESSES if procs and p in procs[-1]), "API server")
        out[name][";".join(f for f in frames if not f.startswith("process "))] += int(n)
    return out
runs = [stacks(path) for path in sys.argv[1:3]]
forward = [max(1, sum(n for k, n in r["Worker"].items() if "_model_forward" in k)) for r in runs]
print(f"{'process: function (samples per 1000 of the forward)':58s} {'nospec':>8s} {'gamma0':>8s}")
for proc in PROCESSES:
    for name in FUNCTIONS[proc]:
        cells = [1000 * sum(n for k, n in r[proc].items() if name in k) / f for r, f in zip(runs, forward)]
        label = f"{proc}: {name or 'all samples'}"
        print(f"{label:58s} {cells[0]:8.1f} {cells[1]:8.1f}")
PY
