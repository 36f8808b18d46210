"""Bigram drafters for the serving tests and the soak: random DSpark drafters whose sequential head is set to a
bigram table.

A random drafter is enough for losslessness, but acceptance and load-dependent verification lengths need drafts
that are sometimes right and confidences that mean something. Without a trained drafter we set weights by hand:
- the Markov head maps the `rank` most frequent previous tokens of a corpus to their most frequent next token
  (W1[prev_j] = e_j, W2[next_j, j] = `bias_scale`), so drafts follow corpus bigrams;
- the LM head is a scaled copy of the target's embedding (not shared: vLLM keeps a distinct one), so base logits
  from the random backbone still decide every position whose previous token has no bigram entry;
- the confidence head reads [h ; W1[prev]]: high (≈0.8) after a bigram-covered token, low (≈0.3) otherwise,
  plus a small random dependence on h.
The backbone (fc, draft layers, norms) stays random, so comparing vLLM's drafts with the plain-torch reference
exercises it too.
"""
from __future__ import annotations

import collections
import gzip
import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from vllm_dspark.checkpoint import save_drafter
from vllm_dspark.config import DSparkConfig
from vllm_dspark.model import DSparkDrafter


def corpus_token_ids(target_dir: Path, num_docs: int = 300) -> list[list[int]]:
    """Token ids of the target's training prompts (pycode-23m), or [] when there are none."""
    path = Path(target_dir) / "train_prompts.jsonl.gz"
    if not path.is_file():
        return []
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(target_dir))
    docs = []
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            if len(docs) >= num_docs:
                break
            docs.append(tok(json.loads(line)["prompt"])["input_ids"])
    return docs


def bigram_table(docs: list[list[int]], rank: int) -> list[tuple[int, int]]:
    """(prev, most frequent next) for the `rank` most frequent prev tokens."""
    pairs: dict[int, collections.Counter] = collections.defaultdict(collections.Counter)
    for ids in docs:
        for a, b in zip(ids, ids[1:]):
            pairs[a][b] += 1
    by_freq = sorted(pairs, key=lambda a: -sum(pairs[a].values()))[:rank]
    return [(a, pairs[a].most_common(1)[0][0]) for a in by_freq]


def _target_embedding(target_dir: Path) -> torch.Tensor:
    state = load_file(str(Path(target_dir) / "model.safetensors"))
    return state["model.embed_tokens.weight"].float()


def build_bigram_drafter(
    target_dir: Path,
    out_dir: Path,
    *,
    block_size: int = 4,
    head_type: str = "vanilla",
    rank: int = 64,
    mask_token_id: int = 3,
    num_draft_layers: int = 1,
    bigrams: list[tuple[int, int]] | None = None,
    bias_scale: float = 30.0,
    lm_head_scale: float = 0.5,
    sts_temperatures: list[float] | None = None,
    seed: int = 0,
) -> Path:
    from transformers import AutoConfig

    target_cfg = AutoConfig.from_pretrained(str(target_dir))
    cfg = DSparkConfig.from_target(
        target_cfg, block_size=block_size, mask_token_id=mask_token_id, num_draft_layers=num_draft_layers,
        markov_rank=rank, markov_head_type=head_type, enable_confidence_head=True, confidence_head_with_markov=True,
    )
    if sts_temperatures is not None:
        cfg.sts_temperatures = sts_temperatures
    torch.manual_seed(seed)
    drafter = DSparkDrafter(cfg).float()
    emb = _target_embedding(target_dir)
    h = cfg.hidden_size
    with torch.no_grad():
        for name, p in drafter.named_parameters():  # small random backbone: keeps activations well scaled
            if p.dim() == 2 and "markov" not in name and "confidence" not in name:
                p.normal_(0.0, 1.0 / p.shape[1] ** 0.5)
        drafter.embed_tokens.weight.copy_(emb)
        drafter.lm_head.weight.copy_(emb * lm_head_scale)
        head = drafter.markov_head
        head.markov_w1.weight.zero_()
        head.markov_w2.weight.zero_()
        for j, (prev, nxt) in enumerate((bigrams or [])[:rank]):
            head.markov_w1.weight[prev, j] = 1.0
            head.markov_w2.weight[nxt, j] = bias_scale
        if head_type == "gated":  # gate ≈ 1: the bigram passes through
            head.gate_proj.weight.zero_()
            head.gate_proj.bias.fill_(12.0)
        elif head_type == "rnn":  # output chunk ≈ tanh(3 · W1[prev]); gate and candidate small
            head.joint_proj.weight.zero_()
            head.joint_proj.bias.zero_()
            r = rank
            head.joint_proj.weight[2 * r:3 * r, r:2 * r] = 3.0 * torch.eye(r)
            head.markov_w2.weight.mul_(1.0 / torch.tanh(torch.tensor(3.0)))
        conf = drafter.confidence_head.proj
        conf.weight.zero_()
        conf.weight[0, :h].normal_(0.0, 0.02)
        conf.weight[0, h:] = 2.5
        conf.bias.fill_(-1.0)
    return save_drafter(drafter, out_dir, include_shared=True, dtype=torch.float32)


def eval_prompts_bigram_drafter(target_dir: Path, out_dir: Path, block_size: int = 4, rank: int = 256) -> Path:
    """A bigram drafter from the target's eval_prompts.jsonl (lines 100-400, past the prompts the checks send): needs
    no training corpus, so it travels with the target's small files alone (GPU runs)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(target_dir))
    lines = (Path(target_dir) / "eval_prompts.jsonl").read_text().splitlines()
    docs = [tok(json.loads(line)["prompt"])["input_ids"] for line in lines[100:400] if line]
    return build_bigram_drafter(target_dir, out_dir, block_size=block_size, rank=rank,
                                bigrams=bigram_table(docs, rank))


def build_dflash_twin(dspark_dir: Path, out_dir: Path) -> Path:
    """vLLM's native `dflash` drafter with a DSpark drafter's backbone (fc, layers, norms, embedding, LM head) and no
    sequential or confidence head: the `dflash-native` baseline of the serving benchmarks when no trained DFlash
    drafter exists. Same block size (γ)."""
    from vllm_dspark.checkpoint import load_drafter
    from vllm_dspark.training.dflash import DFlashDrafter, save_dflash

    source = load_drafter(dspark_dir, dtype=torch.float32)
    cfg = source.config.model_copy(update={"markov_rank": 0, "enable_confidence_head": False})
    twin = DFlashDrafter(cfg).float()
    backbone = {k: v for k, v in source.state_dict().items() if k in twin.state_dict()}
    twin.load_state_dict(backbone, strict=True)
    return save_dflash(twin, out_dir, dtype=torch.float32)
