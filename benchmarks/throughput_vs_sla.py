r"""Throughput vs per-user speed (SLA) benchmark of OpenAI-compatible servers; same code as `vllm-dspark bench`.

    python benchmarks/throughput_vs_sla.py --serve '--model /path/to/model --max-model-len 2048' \
        --config nospec='' \
        --config ngram="--speculative-config '{\"method\":\"ngram\",\"num_speculative_tokens\":4}'" \
        --prompts /path/to/eval_prompts.jsonl --concurrency 1 2 4 8 16 --num-prompts 64 --max-tokens 256 \
        --sla 80 120 --out-dir benchmarks/out/sla

Prints a table, writes <out-dir>/results.json (schema: vllm_dspark/bench/schema.py) and PNG plots.
Run `python benchmarks/throughput_vs_sla.py --help` for every option.
"""
import sys

from vllm_dspark.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
