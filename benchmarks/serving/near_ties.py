r"""Is each greedy output that differs from the baseline's a bf16 near-tie of the target, or a bug?

    python benchmarks/serving/near_ties.py runs/campaign-cpu/results.json --target runs/inflated/target \
        --json runs/campaign-cpu/near_ties.json > runs/campaign-cpu/near_ties.md

At T = 0 every config must emit the target's argmax at every position. A bf16 target's logits depend on the batch
shape (blocking of the matmuls, order of the reductions), so where its top two logits are within bf16 rounding of
each other a speculative config may pick the other one, and the two continuations part from there. Any other
difference is a bug. For every request whose `output_token_ids` (bench `--keep-token-ids`) differ from the baseline
config's at the same load and prompt, this finds the first differing position, runs the target with transformers
on the prompt's ids + the common prefix (once in float32, once in bfloat16) and reads the two competing tokens'
logits there.

Verdict `near-tie`: in the bfloat16 run both tokens rank in the top two (a token's rank counts the tokens with a
strictly larger logit, so exact ties share a rank) and their logit gap is within the tolerance. Else `REAL
DIFFERENCE` (also for a length-only difference, which greedy decoding with the same limits cannot produce), or
`UNCHECKED` when the results hold no prompt_token_ids for the request.

Default tolerance, per difference: 2 * 2**-7 * max(|logit|) of the two tokens. bf16 keeps 8 significant bits, so one
unit in the last place at magnitude |x| is at most 2**-7 * |x|; each of the two served runs rounds its logits, so a
flip needs a gap within about one ulp per run. `--tolerance` replaces it by one absolute logit gap. The bf16 run
here uses transformers' kernels, not the server's: a third rounding of the same logits, so its gap is evidence of a
near-tie rather than the served gap itself (the float32 run shows the gap without bf16 rounding).

Exit status: 0 every difference is a near-tie (or there is none), 1 otherwise, 2 bad input (no token ids, unknown
baseline).
"""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

from vllm_dspark.bench.sweep import LoadPoint

NEAR_TIE, REAL, UNCHECKED = "near-tie", "REAL DIFFERENCE", "UNCHECKED"
BF16_RELATIVE_ULP = 2.0**-7  # bf16 spacing at magnitude |x| is at most this times |x|
DEFAULT_ULPS = 2


@dataclass(frozen=True)
class Difference:
    """The first position where a config's greedy output leaves the baseline's, for one request."""

    label: str
    load: str  # "c=4", or "rate=2,c<=8"
    prompt_index: int
    position: int  # index into the output tokens
    context: tuple[int, ...] | None  # prompt ids + the common output prefix; None without prompt_token_ids
    baseline_token: int | None  # None: that output ended before `position`
    config_token: int | None


def requests_by_key(run: dict) -> dict[tuple[str, int], dict]:
    """(load name, e.g. c=4, prompt index) -> the request's record."""
    return {(LoadPoint.from_dict(p["load"]).name, q["prompt_index"]): q for p in run["points"] for q in p["requests"]}


def first_difference(a: list[int], b: list[int]) -> int | None:
    """Index of the first differing token; the shorter length when one is a prefix of the other; None if equal."""
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def find_differences(doc: dict, baseline: str) -> tuple[list[Difference], int]:
    """(differences, number of requests compared) of every other run against `baseline`'s outputs."""
    runs = {r["label"]: r for r in doc["runs"]}
    if baseline not in runs:
        raise ValueError(f"--baseline {baseline!r} is not among the runs {sorted(runs)}")
    reference = requests_by_key(runs[baseline])
    differences, compared = [], 0
    for label, run in runs.items():
        if label == baseline:
            continue
        for key, request in requests_by_key(run).items():
            ref = reference.get(key, {})
            ours, theirs = request.get("output_token_ids"), ref.get("output_token_ids")
            if ours is None or theirs is None:
                continue  # failed, not run by the baseline, or recorded without --keep-token-ids
            compared += 1
            position = first_difference(theirs, ours)
            if position is not None:
                differences.append(_difference(label, key, position, ref, theirs, ours))
    return differences, compared


def _difference(label, key, position, ref, theirs, ours) -> Difference:
    prompt_ids = ref.get("prompt_token_ids")
    context = None if prompt_ids is None else tuple(prompt_ids) + tuple(theirs[:position])
    return Difference(label=label, load=key[0], prompt_index=key[1], position=position, context=context,
                      baseline_token=theirs[position] if position < len(theirs) else None,
                      config_token=ours[position] if position < len(ours) else None)


def last_logits(target: str, dtype: torch.dtype, contexts: Iterable[tuple[int, ...]]) -> dict:
    """{context: the target's next-token logits after it, [vocab] float32 (holding the `dtype` values)}."""
    from tqdm import tqdm
    from transformers import AutoModelForCausalLM

    contexts = sorted(set(contexts))
    model = AutoModelForCausalLM.from_pretrained(target, dtype=dtype).eval()
    out = {}
    with torch.no_grad():
        for context in tqdm(contexts, desc=f"target {str(dtype).removeprefix('torch.')}", unit="ctx",
                            disable=len(contexts) <= 3, file=sys.stderr):
            out[context] = model(torch.tensor([context])).logits[0, -1].float()
    return out


def default_tolerance(logit_a: float, logit_b: float) -> float:
    return DEFAULT_ULPS * BF16_RELATIVE_ULP * max(abs(logit_a), abs(logit_b))


def rank(logits: torch.Tensor, token: int) -> int:
    """How many tokens have a strictly larger logit (0 = top-1; exact ties share a rank)."""
    return int((logits > logits[token]).sum())


def top_gap(logits: torch.Tensor) -> float:
    """Top-1 minus top-2 logit."""
    top2 = logits.topk(2).values
    return float(top2[0] - top2[1])


def judge(diff: Difference, logits32: dict, logits16: dict, tolerance: float | None) -> dict:
    """One report row: the two tokens' logits in each dtype, ranks, gaps and the verdict."""
    row = {"config": diff.label, "load": diff.load, "prompt_index": diff.prompt_index, "position": diff.position,
           "baseline_token": diff.baseline_token, "config_token": diff.config_token}
    if diff.baseline_token is None or diff.config_token is None:
        return {**row, "verdict": REAL, "note": "one output is a prefix of the other (lengths differ)"}
    if diff.context is None:
        return {**row, "verdict": UNCHECKED, "note": "no prompt_token_ids in the results"}
    l32, l16 = logits32[diff.context], logits16[diff.context]
    tokens = {"baseline": diff.baseline_token, "config": diff.config_token}
    bf16 = {k: float(l16[t]) for k, t in tokens.items()}
    bf16_ranks = {k: rank(l16, t) for k, t in tokens.items()}
    pair_gap = abs(bf16["baseline"] - bf16["config"])
    allowed = default_tolerance(*bf16.values()) if tolerance is None else tolerance
    tie = max(bf16_ranks.values()) <= 1 and pair_gap <= allowed
    return {**row,
            "logit_fp32": {k: float(l32[t]) for k, t in tokens.items()},
            "logit_bf16": bf16,
            "rank_fp32": {k: rank(l32, t) for k, t in tokens.items()},
            "rank_bf16": bf16_ranks,
            "top_gap_fp32": top_gap(l32), "top_gap_bf16": top_gap(l16),
            "pair_gap_bf16": pair_gap, "tolerance": allowed,
            "verdict": NEAR_TIE if tie else REAL, "note": None}


def _load_tokenizer(target: str):
    """The target's tokenizer to show tokens as text, or None (the ids alone are the evidence)."""
    if not any((Path(target) / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json")):
        return None  # transformers would make an empty tokenizer that decodes every id to ''
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(target)
    except (OSError, ValueError, TypeError):
        return None


def _token_cell(token: int | None, tokenizer) -> str:
    if token is None:
        return "(end)"
    if tokenizer is None:
        return str(token)
    return f"{token} `{tokenizer.decode([token])!r}`".replace("|", "\\|")


def _pair(values: dict | None, spec: str = ".4f") -> str:
    return "-" if values is None else f"{values['baseline']:{spec}} / {values['config']:{spec}}"


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def markdown_table(rows: list[dict], baseline: str, tokenizer=None) -> str:
    head = (f"| config | load | prompt | pos | {baseline} token | config token | fp32 logits ({baseline} / config) "
            f"| bf16 logits | bf16 ranks | top-1 − top-2 fp32 / bf16 | tolerance | verdict |")
    lines = [head, "|" + "---|" * 12]
    for r in rows:
        gaps = "-" if "top_gap_fp32" not in r else f"{r['top_gap_fp32']:.4f} / {r['top_gap_bf16']:.4f}"
        verdict = r["verdict"] + (f" ({r['note']})" if r.get("note") else "")
        lines.append(
            f"| {r['config']} | {r['load']} | {r['prompt_index']} | {r['position']} "
            f"| {_token_cell(r['baseline_token'], tokenizer)} | {_token_cell(r['config_token'], tokenizer)} "
            f"| {_pair(r.get('logit_fp32'))} | {_pair(r.get('logit_bf16'))} | {_pair(r.get('rank_bf16'), 'd')} "
            f"| {gaps} | {_num(r.get('tolerance'))} | {verdict} |")
    return "\n".join(lines)


def analyse(doc: dict, target: str, baseline: str, tolerance: float | None) -> tuple[list[dict], int]:
    """(report rows, requests compared): the target runs only on the contexts of real token differences."""
    differences, compared = find_differences(doc, baseline)
    contexts = [d.context for d in differences
                if d.context is not None and d.baseline_token is not None and d.config_token is not None]
    logits32 = last_logits(target, torch.float32, contexts) if contexts else {}
    logits16 = last_logits(target, torch.bfloat16, contexts) if contexts else {}
    return [judge(d, logits32, logits16, tolerance) for d in differences], compared


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("results_json", help="a bench results.json written with --keep-token-ids")
    p.add_argument("--target", required=True, help="the served target's folder (transformers format)")
    p.add_argument("--baseline", default="nospec", help="the run label outputs are compared with")
    p.add_argument("--tolerance", type=float,
                   help=f"largest bf16 logit gap of a near-tie (default: {DEFAULT_ULPS} * 2**-7 * |logit|)")
    p.add_argument("--json", metavar="OUT", help="also write the rows and counts here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        doc = json.loads(Path(args.results_json).read_text())
        rows, compared = analyse(doc, args.target, args.baseline, args.tolerance)
    except (OSError, ValueError) as e:  # unreadable results or target, unknown baseline
        print(f"near_ties: error: {e}", file=sys.stderr)
        return 2
    if compared == 0:
        print("near_ties: error: no request has output_token_ids in both runs (bench with --keep-token-ids)",
              file=sys.stderr)
        return 2
    real = [r for r in rows if r["verdict"] != NEAR_TIE]
    summary = (f"{compared} requests compared with {args.baseline}: {len(rows)} differ, "
               f"{len(rows) - len(real)} near-ties, {len(real)} not near-ties")
    print(summary + "\n")
    if rows:
        print(markdown_table(rows, args.baseline, _load_tokenizer(args.target)))
    if args.json:
        Path(args.json).write_text(json.dumps({"results": args.results_json, "target": args.target,
                                               "baseline": args.baseline, "tolerance": args.tolerance,
                                               "compared": compared, "rows": rows}, indent=1) + "\n")
    return 1 if real else 0


if __name__ == "__main__":
    sys.exit(main())
