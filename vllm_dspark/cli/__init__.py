"""`vllm-dspark` command line: one module per subcommand.

Each module in SUBCOMMANDS defines `add_arguments(parser)` and `run(args) -> int | None`; modules are
imported only when their subcommand runs, so `vllm-dspark eval` never imports vLLM or matplotlib.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "eval": ("vllm_dspark.cli.eval", "offline speculative decoding: accepted length per round, lossless check"),
    "convert": ("vllm_dspark.cli.convert", "convert a drafter between DeepSpec, vLLM-native and our layout"),
    "regenerate": ("vllm_dspark.cli.regenerate", "regenerate training responses with the target itself"),
    "train": ("vllm_dspark.cli.train", "train a DSpark / DFlash / EAGLE-3 drafter with an online target"),
    "calibrate": ("vllm_dspark.cli.calibrate", "Sequential Temperature Scaling of the confidence head"),
    "profile": ("vllm_dspark.cli.profile", "profile steps/s against batch tokens into a cost table"),
    "schedule": ("vllm_dspark.cli.schedule", "γ per batch size from a cost table and measured acceptance (async)"),
    "bench": ("vllm_dspark.cli.bench", "throughput vs per-user speed (SLA) benchmark of an OpenAI endpoint"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vllm-dspark", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module_name)
        # Arguments are added lazily (see main) so that `--help` of one subcommand imports only it.
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if argv and argv[0] in SUBCOMMANDS:
        module = importlib.import_module(SUBCOMMANDS[argv[0]][0])
        sub_parser = argparse.ArgumentParser(prog=f"vllm-dspark {argv[0]}", description=SUBCOMMANDS[argv[0]][1])
        module.add_arguments(sub_parser)
        args = sub_parser.parse_args(argv[1:])
        return int(module.run(args) or 0)
    parser.parse_args(argv)  # prints help / usage errors
    return 2


if __name__ == "__main__":
    sys.exit(main())
