"""The DSpark server's drafter: the serving tests' bigram drafter (random backbone, drafts that are sometimes
accepted, confidences that mean something), so acceptance and per-request verification lengths vary."""
from __future__ import annotations

from pathlib import Path

from benchmarks.bigram_drafter import bigram_table, build_bigram_drafter, corpus_token_ids
from benchmarks.serving.soak.mix import load_prompt_ids

RANK = 256  # bigrams in the Markov head
NUM_DOCS = 300


def build_drafter(target: Path, out_dir: Path, *, block_size: int = 4, seed: int = 0) -> Path:
    """Bigrams of the target's train_prompts.jsonl.gz (its eval prompts when it has none); the tokenizer's mask
    token (else id 3)."""
    from transformers import AutoTokenizer

    docs = corpus_token_ids(target, NUM_DOCS) or load_prompt_ids(target)[:NUM_DOCS]
    mask = AutoTokenizer.from_pretrained(str(target)).mask_token_id
    return build_bigram_drafter(target, out_dir, block_size=block_size, rank=RANK, bigrams=bigram_table(docs, RANK),
                                mask_token_id=3 if mask is None else mask, seed=seed)
