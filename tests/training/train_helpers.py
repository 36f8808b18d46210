"""Helpers for the training tests: a tiny random Qwen3 target with a word-level tokenizer, token-id records, configs."""
from __future__ import annotations

import json
import random
from pathlib import Path

import torch

VOCAB = 96
SPECIAL = ["<|endoftext|>", "<|pad|>", "<|mask|>", "<|im_start|>", "<|im_end|>"]  # ids 0..4


def make_tokenizer(vocab_size: int = VOCAB):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(SPECIAL)}
    for i in range(len(SPECIAL), vocab_size):
        vocab[f"w{i}"] = i
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<|pad|>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|pad|>",
                                   mask_token="<|mask|>")


def make_target(path: Path, *, layers: int = 4, vocab: int = VOCAB, seed: int = 0) -> Path:
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(seed)
    cfg = Qwen3Config(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=128,
                      tie_word_embeddings=True, bos_token_id=0, eos_token_id=0, pad_token_id=1,
                      rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    model = Qwen3ForCausalLM(cfg)
    with torch.no_grad():  # a peakier, less uniform target than the default init
        model.model.embed_tokens.weight.normal_(std=0.5)
    model.save_pretrained(path)
    make_tokenizer(vocab).save_pretrained(path)
    return path


def write_records(path: Path, n: int, *, seed: int = 0, vocab: int = VOCAB, fingerprint: str | None = None,
                  prompt_len=(6, 20), response_len=(10, 30)) -> Path:
    rng = random.Random(seed)
    with open(path, "w") as f:
        for _ in range(n):
            p = [rng.randrange(5, vocab) for _ in range(rng.randint(*prompt_len))]
            r = [rng.randrange(5, vocab) for _ in range(rng.randint(*response_len))]
            row = {"prompt_token_ids": p, "response_token_ids": r}
            if fingerprint:
                row["tokenizer"] = fingerprint
            f.write(json.dumps(row) + "\n")
    return path



def tiny_train_config(target: Path, data: Path, out: Path, **overrides):
    from vllm_dspark.training.trainer import TrainConfig

    kw = dict(target=str(target), data=str(data), out=str(out), algo="dspark", block_size=4, num_draft_layers=1,
              markov_rank=8, num_anchors=4, batch_size=4, max_steps=2, warmup_steps=1, lr=3e-3, save_every=0,
              progress=False, log_every=1, max_seq_len=128, device="cpu")
    kw.update(overrides)
    return TrainConfig(**kw)
