"""A DSpark drafter for pycode-23m with random weights: serves, and stays lossless, but drafts are rarely right.

Use a trained drafter for real speed-ups (`vllm-dspark train`, see examples/train_pycode); this one only makes the
serving example runnable on its own. Run with the folder of pycode-23m:

    python examples/serve_pycode/make_drafter.py ../shared/models/pycode-23m /tmp/pycode-dspark
"""
import sys
from pathlib import Path

import torch
from transformers import AutoConfig

from vllm_dspark.checkpoint import save_drafter
from vllm_dspark.config import DSparkConfig
from vllm_dspark.model import DSparkDrafter

target, out = Path(sys.argv[1]), Path(sys.argv[2])
cfg = DSparkConfig.from_target(
    AutoConfig.from_pretrained(target),
    block_size=4,  # γ: tokens drafted per round
    mask_token_id=3,  # pycode-23m's <|mask|>
    num_draft_layers=1,
    markov_rank=64,
    markov_head_type="vanilla",  # or "gated", "rnn"
    enable_confidence_head=True,  # needed by the confidence and sla modes
)
torch.manual_seed(0)
save_drafter(DSparkDrafter(cfg), out)
print(f"drafter written to {out}")
