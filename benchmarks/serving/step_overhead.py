"""What a round without drafts costs per engine step, part by part: the target alone against the target with a
DSpark drafter whose draft gate keeps drafting off (a drafter that never pays, e.g. `examples/serve_pycode/
make_drafter.py`'s random one).

Offline and in one process (`VLLM_ENABLE_V1_MULTIPROCESSING=0`), so the runner's methods can be timed: each is
wrapped with a wall-clock timer, the generation runs `--repeats` times after a warm-up, and the table gives
milliseconds per engine step for the runner's sampling step (`sample_tokens`, which also proposes the next drafts),
the proposal, the sampler or rejection sampler, and the proposer's parts. The model forward (`execute_model`) is
printed too but swings by several ms between processes on a shared CPU; the speculative path's parts do not.

    python benchmarks/serving/step_overhead.py --target runs/inflated/target \
        --drafter runs/inflated/drafters/dspark-random --cost-table runs/gate-rnd/cost_table.json --json out.json

Run it once per configuration (`--config nospec` / `gate-off`): each builds its own engine.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import time

PARTS = [  # (class, method), timed where the class has it
    ("runner", "execute_model"), ("runner", "sample_tokens"), ("runner", "propose_draft_token_ids"),
    ("runner", "_sample"), ("RejectionSampler", "forward"), ("Sampler", "forward"),
    ("proposer", "propose"), ("proposer", "_observe_step"), ("proposer", "_skip_round"),
    ("proposer", "_gate_says_draft"), ("proposer", "_write_backlog"),
    # finer: the runner's speculative bookkeeping and the parts of a round without drafts
    ("runner", "_prepare_inputs"), ("runner", "_calc_spec_decode_metadata"), ("runner", "_build_attention_metadata"),
    ("runner", "_bookkeeping_sync"), ("runner", "_update_states_after_model_execute"),
    ("runner", "_copy_draft_token_ids_to_cpu"), ("runner", "_copy_valid_sampled_token_count"),
    ("proposer", "round_without_inputs"), ("proposer", "prepare_next_token_ids_padded"),
    ("proposer", "prepare_inputs_padded"),
    ("proposer", "_publish_counters"), ("policy", "observe_step"), ("gate", "should_draft"), ("gate", "observe"),
    ("backlog", "add"),
]


def _timed(cls, name: str, totals: dict, counts: collections.Counter) -> None:
    original = getattr(cls, name)
    key = f"{cls.__name__}.{name}"

    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            totals[key] += time.perf_counter() - start
            counts[key] += 1

    setattr(cls, name, wrapper)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--target", required=True)
    p.add_argument("--drafter", help="a DSpark drafter folder (gate-off)")
    p.add_argument("--cost-table", help="a `vllm-dspark profile` table (gate-off; skips the start-up profile)")
    p.add_argument("--config", choices=("nospec", "gate-off"), default="nospec")
    p.add_argument("--prompts", required=True, help="JSONL with \"prompt\"")
    p.add_argument("--concurrency", type=int, default=1)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--gamma", type=int, default=4)
    p.add_argument("--json", help="write the table here")
    args = p.parse_args()
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    from vllm import LLM, SamplingParams
    from vllm.v1.sample.rejection_sampler import RejectionSampler
    from vllm.v1.sample.sampler import Sampler

    kwargs = dict(model=args.target, max_model_len=1024, enforce_eager=True, seed=0, max_num_seqs=args.concurrency,
                  enable_prefix_caching=False)
    if args.config == "gate-off":
        if not args.drafter:
            raise SystemExit("--config gate-off needs --drafter")
        dspark = {"mode": "confidence"} | ({"cost_table": args.cost_table} if args.cost_table else {})
        kwargs["speculative_config"] = {"method": "dflash", "model": args.drafter,
                                        "num_speculative_tokens": args.gamma, "dspark": dspark}
    llm = LLM(**kwargs)
    runner = llm.llm_engine.engine_core.engine_core.model_executor.driver_worker.worker.model_runner
    classes = {"runner": type(runner), "RejectionSampler": RejectionSampler, "Sampler": Sampler}
    if getattr(runner, "drafter", None) is not None:
        classes["proposer"] = type(runner.drafter)
        from vllm_dspark.adapter.context_backlog import ContextBacklog
        from vllm_dspark.adapter.policy import VerifyLengthPolicy
        from vllm_dspark.scheduling.gate import DraftGate
        classes |= {"policy": VerifyLengthPolicy, "gate": DraftGate, "backlog": ContextBacklog}
    totals: dict[str, float] = collections.defaultdict(float)
    counts: collections.Counter = collections.Counter()
    for owner, name in PARTS:
        if owner in classes and hasattr(classes[owner], name):
            _timed(classes[owner], name, totals, counts)
    prompts = [json.loads(line)["prompt"] for line in open(args.prompts) if line.strip()][:args.concurrency]
    params = SamplingParams(temperature=0, max_tokens=args.max_tokens, ignore_eos=True)
    llm.generate(prompts, params, use_tqdm=False)  # warm-up
    totals.clear()
    counts.clear()
    for _ in range(args.repeats):
        llm.generate(prompts, params, use_tqdm=False)
    steps = counts[f"{type(runner).__name__}.execute_model"] or 1
    rows = {k: totals[k] / steps * 1e3 for k in sorted(totals, key=lambda k: -totals[k])}
    calls = {k: counts[k] / steps for k in rows}
    print(f"{args.config}: ms per engine step ({steps} steps, {args.concurrency} request(s)); calls per step")
    for k, ms in rows.items():
        print(f"  {k:55s} {ms:8.3f} {calls[k]:6.3f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"config": args.config, "concurrency": args.concurrency, "steps": steps,
                       "ms_per_step": rows, "calls_per_step": calls}, f, indent=2)


if __name__ == "__main__":
    main()
