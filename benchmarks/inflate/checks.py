"""Checks of an inflated pair against its source: greedy tokens and logits of the targets (transformers), drafts of
the drafters (vllm_dspark's own classes)."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from vllm_dspark.training.baselines import drafter_kind, load_any_drafter


def load_prompts(path: Path, n: int, tokenizer, max_tokens: int) -> list[torch.Tensor]:
    rows = [json.loads(line)["prompt"] for line in path.read_text().splitlines()[:n] if line.strip()]
    return [tokenizer(p, return_tensors="pt").input_ids[:, :max_tokens] for p in rows]


def greedy_agreement(a, b, prompt_len: int) -> tuple[int, int, float]:
    """(tokens equal before the first mismatch, tokens, max |logit diff| while the inputs were still equal)."""
    ta, tb = a.sequences[0, prompt_len:], b.sequences[0, prompt_len:]
    differ = ta != tb
    first = int(differ.int().argmax()) if bool(differ.any()) else len(ta)
    steps = list(zip(a.logits, b.logits))[: first + 1]  # step `first` still had equal inputs
    return first, len(ta), max(float((la.float() - lb.float()).abs().max()) for la, lb in steps)


@torch.no_grad()
def check_target(src_dir: Path, out_dir: Path, prompts_file: Path, n: int, new_tokens: int, device, dtype) -> dict:
    """Greedy tokens and logits of the inflated target vs the source (transformers, same dtype, same device).

    Below float32 the source is also compared with itself in float32: a baseline for how often rounding alone
    flips a greedy near-tie.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(src_dir)
    load = lambda d, dt: AutoModelForCausalLM.from_pretrained(d, dtype=dt).to(device).eval()  # noqa: E731
    models = {"source": load(src_dir, dtype), "inflated": load(out_dir, dtype)}
    if dtype != torch.float32:
        models["source_fp32"] = load(src_dir, torch.float32)
    kw = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
              return_dict_in_generate=True, output_logits=True, pad_token_id=tok.pad_token_id)
    totals = {"inflated": [0, 0, 0.0], "source_fp32": [0, 0, 0.0]}
    for ids in load_prompts(prompts_file, n, tok, 128):
        ids = ids.to(device)
        out = {name: m.generate(ids, **kw) for name, m in models.items()}
        for name in [k for k in totals if k in out]:
            same, total, diff = greedy_agreement(out["source"], out[name], ids.shape[1])
            t = totals[name]
            t[0], t[1], t[2] = t[0] + same, t[1] + total, max(t[2], diff)
    del models
    result = {"dtype": str(dtype), "greedy_tokens_equal_before_first_mismatch": "{}/{}".format(*totals["inflated"][:2]),
              "max_abs_logit_diff": totals["inflated"][2]}
    if dtype != torch.float32:
        result["baseline_source_vs_source_fp32"] = {
            "greedy_tokens_equal_before_first_mismatch": "{}/{}".format(*totals["source_fp32"][:2]),
            "max_abs_logit_diff": totals["source_fp32"][2],
        }
    return result


def load_drafter_with_kind(directory: Path, dtype: torch.dtype, device) -> tuple[str, torch.nn.Module]:
    """(kind, drafter) in the training package's class for its kind; without a target (its checkpoint has copies)."""
    return drafter_kind(directory), load_any_drafter(directory, None, dtype=dtype, device=device)


@torch.no_grad()
def draft_on_prompt(target, kind: str, drafter, ids: torch.Tensor):
    """One greedy draft block for the anchor ids[:, -1], the context ids[:, :-1] run through `target`."""
    from vllm_dspark.model import target_features

    hs = target(ids, output_hidden_states=True).hidden_states
    feats = target_features(hs, drafter.config.target_layer_ids)[:, :-1]  # context rows: all but the anchor
    if kind == "eagle3":
        return drafter.draft(feats, ids, 0.0, None)
    c = feats.shape[1]
    pos = torch.arange(c, device=ids.device)[None]
    return drafter.draft(feats, pos, ids[:, -1], torch.tensor([c], device=ids.device))


@torch.no_grad()
def check_drafter(src_dir, out_dir, draft_dir, draft_out, prompts_file, n, device, dtype) -> dict:
    """Drafter outputs (corrected logits, tokens, confidence) on target features, small pair vs inflated pair."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    prompts = load_prompts(prompts_file, n, AutoTokenizer.from_pretrained(src_dir), 128)
    blocks = []
    for t_dir, d_dir in ((src_dir, draft_dir), (out_dir, draft_out)):
        target = AutoModelForCausalLM.from_pretrained(t_dir, dtype=dtype).to(device).eval()
        kind, drafter = load_drafter_with_kind(d_dir, dtype, device)
        blocks.append([draft_on_prompt(target, kind, drafter, ids.to(device)) for ids in prompts])
        del target, drafter
    # Slot k's logits/confidence depend on the token chosen at k-1 (Markov head), so after the first differing
    # draft token (a near-tie flipped by rounding) the two blocks are no longer comparable: stop there.
    result = {"max_abs_logit_diff": 0.0, "max_abs_confidence_logit_diff": 0.0, "tokens_equal": 0, "tokens": 0}
    for a, b in zip(*blocks):
        differ = (a.tokens != b.tokens)[0]
        first = int(differ.int().argmax()) if bool(differ.any()) else differ.numel()
        upto = min(first + 1, differ.numel())  # slot `first` itself still has the same previous token
        diff = float((a.logits[:, :upto].float() - b.logits[:, :upto].float()).abs().max())
        result["max_abs_logit_diff"] = max(result["max_abs_logit_diff"], diff)
        if a.confidence_logits is not None:
            diff = float((a.confidence_logits[:, :upto].float() - b.confidence_logits[:, :upto].float()).abs().max())
            result["max_abs_confidence_logit_diff"] = max(result["max_abs_confidence_logit_diff"], diff)
        result["tokens_equal"] += first
        result["tokens"] += differ.numel()
    return result
