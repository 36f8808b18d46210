"""Load trained baselines in vLLM's native methods (`dflash`, `eagle3`) and check greedy output is unchanged.

    python examples/train_pycode/check_vllm_load.py --target T --dflash runs/pycode-cpu/dflash --eagle3 runs/pycode-cpu/eagle3

Prints, per method, whether the engine built, whether greedy completions equal the target alone, and vLLM's
draft acceptance counters (from `LLM.get_metrics()`, where the version exposes them).
"""
from __future__ import annotations

import argparse
import json
import os


def _acceptance(llm) -> dict:
    try:
        metrics = {m.name: m for m in llm.get_metrics()}
    except Exception as e:  # older vLLM
        return {"error": repr(e)}
    out = {}
    for name in ("vllm:spec_decode_num_drafts", "vllm:spec_decode_num_draft_tokens",
                 "vllm:spec_decode_num_accepted_tokens"):
        if name in metrics:
            out[name.split(":")[1]] = getattr(metrics[name], "value", None)
    if out.get("num_drafts"):
        out["mean_accepted_length"] = 1 + out["num_accepted_tokens"] / out["num_drafts"]
    return out


def _divergence(target: str, prompt: str, spec: list[int], base: list[int]) -> dict:
    """Where a speculative completion first differs from the target alone, and the target's top-2 logit gap there
    (computed by transformers in float64): a near-tie is float rounding, a clear gap would be a real bug."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    j = next(i for i, (a, b) in enumerate(zip(spec, base)) if a != b)
    tok = AutoTokenizer.from_pretrained(target)
    model = AutoModelForCausalLM.from_pretrained(target, dtype=torch.float64).eval()
    ids = tok(prompt)["input_ids"] + base[:j]
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0, -1]
    top = torch.topk(logits, 2)
    return {"position": j, "spec_token": spec[j], "base_token": base[j], "top2": top.indices.tolist(),
            "top2_logit_gap": float(top.values[0] - top.values[1])}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--target", required=True)
    p.add_argument("--dflash")
    p.add_argument("--eagle3")
    p.add_argument("--prompts", default=None, help="eval_prompts.jsonl (default: the target folder's)")
    p.add_argument("--num-prompts", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--num-speculative-tokens", type=int, default=7)
    args = p.parse_args()
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    from vllm import LLM, SamplingParams

    path = args.prompts or os.path.join(args.target, "eval_prompts.jsonl")
    prompts = [json.loads(line)["prompt"] for line in open(path)][: args.num_prompts]
    params = SamplingParams(temperature=0.0, max_tokens=args.max_new_tokens, ignore_eos=True)
    common = dict(model=args.target, gpu_memory_utilization=0.2, max_model_len=1024, enforce_eager=True, seed=0,
                  disable_log_stats=False)

    def run(spec):
        llm = LLM(**common, **({"speculative_config": spec} if spec else {}))
        outs = [o.outputs[0].token_ids for o in llm.generate(prompts, params, use_tqdm=False)]
        stats = _acceptance(llm) if spec else {}
        del llm
        return outs, stats

    base, _ = run(None)
    report = {}
    for method, directory in (("dflash", args.dflash), ("eagle3", args.eagle3)):
        if not directory:
            continue
        try:
            outs, stats = run({"method": method, "model": directory,
                               "num_speculative_tokens": args.num_speculative_tokens})
            same = sum(list(a) == list(b) for a, b in zip(outs, base))
            report[method] = {"loaded": True, "greedy_identical": f"{same}/{len(base)}", **stats,
                              "divergences": [_divergence(args.target, prompts[i], list(a), list(b))
                                              for i, (a, b) in enumerate(zip(outs, base)) if list(a) != list(b)]}
        except Exception as e:  # report, do not hide
            report[method] = {"loaded": False, "error": f"{type(e).__name__}: {e}"[:2000]}
        print(method, json.dumps(report[method]), flush=True)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
