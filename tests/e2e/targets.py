"""Serving targets for the e2e tests: pycode-23m when present, else a tiny random Qwen3 with its own tokenizer."""
from __future__ import annotations

import json
from pathlib import Path

import torch

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIALS = ["<|endoftext|>", "<|pad|>", "<|im_start|>", "<|mask|>", "<|im_end|>"]  # <|mask|> = id 3, as pycode
SAMPLE_TEXT = [
    "def add(a, b):\n    return a + b\n",
    "import os\nimport sys\n\nclass Config:\n    def __init__(self, path):\n        self.path = path\n",
    "for i in range(10):\n    print(i * i)\n",
    "def main():\n    args = parse_args()\n    if args.verbose:\n        print('hello')\n    return 0\n",
] * 20


def build_tiny_target(out_dir: Path, vocab_size: int = 512, seed: int = 0) -> Path:
    """A random 4-layer Qwen3 (bf16 weights, tied embeddings) plus a byte-level BPE tokenizer and chat template."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(SAMPLE_TEXT, vocab_size=vocab_size, special_tokens=SPECIALS, show_progress=False)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>", pad_token="<|pad|>",
                                  mask_token="<|mask|>")
    tok.chat_template = CHAT_TEMPLATE
    tok.save_pretrained(str(out_dir))
    cfg = Qwen3Config(
        vocab_size=vocab_size, hidden_size=128, intermediate_size=256, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, head_dim=32, max_position_embeddings=2048, tie_word_embeddings=True,
        initializer_range=0.2, bos_token_id=0, eos_token_id=0, pad_token_id=1,
        rope_parameters={"rope_type": "default", "rope_theta": 1e6},
    )
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(cfg).to(torch.bfloat16).eval()
    model.save_pretrained(str(out_dir))
    prompts = [{"prompt": t} for t in SAMPLE_TEXT[:4] * 12]
    (out_dir / "eval_prompts.jsonl").write_text("".join(json.dumps(p) + "\n" for p in prompts))
    return out_dir


def greedy_samples(target_dir: Path, prompts: list[list[int]], max_new_tokens: int = 48) -> list[list[int]]:
    """Greedy continuations of the target (for bigram tables when there is no corpus)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(target_dir), dtype=torch.float32).eval()
    out = []
    with torch.no_grad():
        for ids in prompts:
            seq = model.generate(torch.tensor([ids]), max_new_tokens=max_new_tokens, do_sample=False)
            out.append(seq[0].tolist())
    return out
