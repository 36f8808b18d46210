r"""`vllm-dspark bench`: throughput vs per-user speed (SLA) of OpenAI-compatible servers.

Examples:
  # an already running server, concurrency sweep
  vllm-dspark bench --url http://localhost:8000 --concurrency 1 2 4 8 16 --num-prompts 64 --max-tokens 256 \
      --prompts eval_prompts.jsonl --sla 80 120
  # start the server(s) itself: common args in --serve, one --config per configuration, compared in one JSON/plot
  # (server args are split like a shell line: quote JSON inside, or use vLLM's dotted --speculative-config.KEY form)
  vllm-dspark bench --serve '--model M --max-model-len 4096' --config nospec='' \
      --config ngram='--speculative-config.method ngram --speculative-config.num_speculative_tokens 4'
  # compare earlier results only
  vllm-dspark bench --baseline runs/a/results.json --baseline runs/b/results.json --out-dir runs/cmp

Writes <out-dir>/results.json after every point (format: vllm_dspark/bench/schema.py) and PNG plots at the end.
Exit status: 0 all good; 1 a run failed (server died, failed requests, ...), finished points kept; 130 Ctrl-C.
"""
from __future__ import annotations

import argparse
import datetime
import json
import sys
import traceback
from pathlib import Path

from vllm_dspark.bench.metrics_scrape import DEFAULT_PREFIXES
from vllm_dspark.bench.server import DEFAULT_LAUNCHER

SPEED_STATS = ("p50", "p10", "p90", "mean")


def _key_value(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return name, value


def _rate(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"request rate must be > 0 (or inf), got {text}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = __doc__.split("\n\n", 1)[1]
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    target = parser.add_argument_group("target")
    target.add_argument("--url", help="base URL of a running server, e.g. http://localhost:8000")
    target.add_argument("--serve", metavar="ARGS", help="start the server with these args (common to all --config)")
    target.add_argument("--config", metavar="NAME=ARGS", type=_key_value, action="append", default=[],
                        help="a server configuration: extra server args appended to --serve; repeat to compare")
    target.add_argument("--launcher", default=DEFAULT_LAUNCHER,
                        help="command that starts the server (default: %(default)s)")
    target.add_argument("--server-env", metavar="KEY=VALUE", type=_key_value, action="append", default=[],
                        help="environment variable for started servers (repeatable)")
    target.add_argument("--server-timeout", type=float, default=900.0, help="seconds to wait for /health")
    target.add_argument("--label", help="run label (default: 'default' for --url, 'serve' for --serve)")

    req = parser.add_argument_group("requests")
    req.add_argument("--endpoint", choices=("completions", "chat"), default="completions")
    req.add_argument("--model-name", help="model field of requests (default: first of /v1/models)")
    req.add_argument("--prompts", help="JSONL of {'prompt': str} or {'prompt_token_ids': [int]} (default: built-in)")
    req.add_argument("--num-prompts", type=int, default=32, help="requests per load point")
    req.add_argument("--max-tokens", type=int, default=128)
    req.add_argument("--min-tokens", type=int,
                     help="draw each prompt's output length from [--min-tokens, --max-tokens] (the same for every "
                          "config and load): requests in flight end at different steps, as served traffic does; "
                          "default: all --max-tokens")
    req.add_argument("--temperature", type=float, default=0.0)
    req.add_argument("--top-p", type=float)
    req.add_argument("--ignore-eos", action=argparse.BooleanOptionalAction, default=True,
                     help="vLLM extension: generate exactly --max-tokens tokens")
    req.add_argument("--seed", type=int, default=0, help="prompt selection, arrivals, per-request sampling seeds")
    req.add_argument("--extra-body", type=json.loads, default={}, help="JSON merged into every request body")
    req.add_argument("--warmup", type=int, default=2, help="unrecorded requests before each run's first point")
    req.add_argument("--request-timeout", type=float, default=600.0)

    load = parser.add_argument_group("load")
    load.add_argument("--concurrency", type=int, nargs="+", help="closed-loop concurrency levels (default 1 2 4 8 16)")
    load.add_argument("--request-rate", type=_rate, nargs="+", help="Poisson request rates (req/s; 'inf' = burst)")
    load.add_argument("--max-concurrency", type=int, help="cap on requests in flight in --request-rate mode")

    out = parser.add_argument_group("analysis and output")
    out.add_argument("--sla", type=float, nargs="+", default=[80.0, 120.0], help="per-user speeds (tok/s/user)")
    out.add_argument("--speed-stat", choices=SPEED_STATS, default="p50",
                     help="per-user speed statistic over a point's requests used for the frontier")
    out.add_argument("--baseline", action="append", default=[], metavar="RESULTS_JSON",
                     help="earlier results file to compare against (repeatable); the first is the reference")
    out.add_argument("--metrics-prefix", action="append", default=[], metavar="PREFIX",
                     help="also scrape /metrics names with this prefix (repeatable; always: "
                     + " ".join(DEFAULT_PREFIXES) + ")")
    out.add_argument("--out-dir", help="output folder (default runs/bench-<UTC time>)")
    out.add_argument("--chunk-times", action=argparse.BooleanOptionalAction, default=True,
                     help="store each request's token timestamps (per streamed chunk) in the JSON")
    out.add_argument("--keep-token-ids", action="store_true",
                     help="ask the server for token ids (vLLM's return_token_ids) and store each request's prompt "
                     "and output token ids in the JSON (for benchmarks/serving/near_ties.py)")
    out.add_argument("--no-plots", action="store_true")
    out.add_argument("--no-progress", action="store_true")


def _validate(args: argparse.Namespace) -> None:
    """Raise ValueError naming the flag for inconsistent arguments."""
    if args.url and (args.serve is not None or args.config):
        raise ValueError("--url cannot be combined with --serve / --config")
    if not (args.url or args.serve is not None or args.config or args.baseline):
        raise ValueError("give --url, --serve or --config (or --baseline files to compare)")
    if args.concurrency and args.request_rate:
        raise ValueError("--concurrency and --request-rate are exclusive (cap rate mode with --max-concurrency)")
    if any(c < 1 for c in args.concurrency or []):
        raise ValueError(f"--concurrency values must be >= 1, got {args.concurrency}")
    if args.num_prompts < 1:
        raise ValueError(f"--num-prompts must be >= 1, got {args.num_prompts}")
    if args.max_concurrency is not None and args.max_concurrency < 1:
        raise ValueError(f"--max-concurrency must be >= 1, got {args.max_concurrency}")
    if args.warmup < 0:
        raise ValueError(f"--warmup must be >= 0, got {args.warmup}")
    if args.min_tokens is not None and not 1 <= args.min_tokens <= args.max_tokens:
        raise ValueError(f"--min-tokens must be in [1, --max-tokens = {args.max_tokens}], got {args.min_tokens}")
    names = [n for n, _ in args.config]
    if len(set(names)) != len(names):
        raise ValueError(f"--config names must be unique, got {names}")


def _run_specs(args) -> list[tuple[str, str | None]]:
    """(label, server args or None for --url) per run."""
    if args.url:
        return [(args.label or "default", None)]
    if args.config:
        return [(name, f"{args.serve or ''} {extra}".strip()) for name, extra in args.config]
    if args.serve is not None:
        return [(args.label or "serve", args.serve)]
    return []


def run(args: argparse.Namespace) -> int:
    # Imported here: aiohttp, matplotlib and tqdm only load when the subcommand runs.
    from vllm_dspark.bench import report, sweep
    from vllm_dspark.bench.prompts import builtin_prompts, load_prompts, select_prompts

    try:
        _validate(args)
        if args.request_rate:
            loads = [sweep.LoadPoint(concurrency=args.max_concurrency, request_rate=r) for r in args.request_rate]
        else:
            loads = [sweep.LoadPoint(concurrency=c) for c in (args.concurrency or [1, 2, 4, 8, 16])]
        prompts = select_prompts(load_prompts(args.prompts) if args.prompts else builtin_prompts(),
                                 args.num_prompts, args.seed)
        if args.endpoint == "chat" and any(p.text is None for p in prompts):
            raise ValueError(f"--endpoint chat needs text prompts; {args.prompts} has prompt_token_ids")
        # Baselines before any run: a wrong path should not surface after an hour of measuring.
        baselines = [report.load_baseline(path) for path in args.baseline]
    except (OSError, ValueError, KeyError) as e:
        print(f"vllm-dspark bench: error: {e}", file=sys.stderr)
        return 2
    for baseline in baselines:
        for run_doc in baseline["runs"]:  # read out under this command's --sla / --speed-stat
            run_doc["frontier"] = report.run_frontier(run_doc, args.sla, args.speed_stat)
    prefixes = DEFAULT_PREFIXES + tuple(args.metrics_prefix)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S")
    out_dir = Path(args.out_dir or f"runs/bench-{stamp}")
    doc = report.new_document(list(sys.argv), {
        "endpoint": args.endpoint, "max_tokens": args.max_tokens, "min_tokens": args.min_tokens,
        "temperature": args.temperature,
        "top_p": args.top_p, "ignore_eos": args.ignore_eos, "seed": args.seed, "num_prompts": args.num_prompts,
        "prompts_source": args.prompts or "built-in", "warmup": args.warmup, "loads": [p.as_dict() for p in loads],
        "sla": args.sla, "speed_stat": args.speed_stat, "metrics_prefixes": list(prefixes),
        "extra_body": args.extra_body, "keep_token_ids": args.keep_token_ids,
    })
    doc["baselines"] = baselines
    options = sweep.SweepOptions(metrics_prefixes=prefixes, request_timeout_s=args.request_timeout,
                                 keep_chunk_times=args.chunk_times, seed=args.seed,
                                 progress=not args.no_progress)

    def save() -> None:
        report.write_json(out_dir / "results.json", doc)

    exit_code = 0
    try:
        for label, server_args in _run_specs(args):
            _measure(args, label, server_args, doc, prompts, loads, options, out_dir, save)
    except KeyboardInterrupt:
        message = "interrupted by user (Ctrl-C)"
        if doc["runs"]:
            doc["runs"][-1]["error"] = doc["runs"][-1]["error"] or message
        doc["error"] = doc["error"] or message
        exit_code = 130
    finally:
        _finish(args, doc, out_dir, save)
    return exit_code or (1 if doc["error"] else 0)


def sampling_settings(args: argparse.Namespace, model: str):
    """The per-request settings (`client.SamplingSettings`) these arguments ask for."""
    from vllm_dspark.bench.client import SamplingSettings

    return SamplingSettings(model=model, max_tokens=args.max_tokens, endpoint=args.endpoint,
                            temperature=args.temperature, top_p=args.top_p, ignore_eos=args.ignore_eos,
                            seed=args.seed, extra_body=args.extra_body, keep_token_ids=args.keep_token_ids,
                            min_tokens=args.min_tokens)


def _measure(args, label, server_args, doc, prompts, loads, options, out_dir, save) -> None:
    """One configuration: start its server (if any), warm up, sweep; failures are recorded in the run, not raised."""
    from vllm_dspark.bench import report, sweep
    from vllm_dspark.bench.server import ServerError, ServerProcess

    run_doc = {"label": label, "url": args.url, "model": None, "server": None, "server_info": None,
               "started_utc": report.utc_now(), "finished_utc": None, "error": None, "points": [],
               "frontier": report.run_frontier({"points": []}, args.sla, args.speed_stat)}
    doc["runs"].append(run_doc)
    server = None
    try:
        if server_args is not None:
            log = out_dir / f"server-{label}.log"
            server = ServerProcess(server_args, launcher=args.launcher, log_path=log, env=dict(args.server_env))
            server.start()
            run_doc["url"] = server.url
            run_doc["server"] = {"launcher": args.launcher, "args": server_args, "command": server.command,
                                 "env": dict(args.server_env), "pid": server.pid, "log": str(log)}
            save()
            print(f"[bench] {label}: starting server (log {log})", file=sys.stderr)
            server.wait_healthy(timeout=args.server_timeout)
        url = run_doc["url"]
        run_doc["model"] = args.model_name or sweep.discover_model(url)
        run_doc["server_info"] = sweep.server_info(url)
        save()
        sampling = sampling_settings(args, run_doc["model"])
        if args.warmup:
            sweep.warmup(url, sampling, prompts[: args.warmup], args.request_timeout)

        def on_point() -> None:
            run_doc["frontier"] = report.run_frontier(run_doc, args.sla, args.speed_stat)
            save()

        sweep.run_sweep(url, sampling, prompts, loads, run_doc["points"], options, on_point,
                        server_alive=server.alive if server else None, label=label)
    except Exception as e:  # noqa: BLE001 -- any failure ends this configuration; the next one still runs
        run_doc["error"] = f"{type(e).__name__}: {e}"
        doc["error"] = doc["error"] or f"run {label!r} failed after {len(run_doc['points'])} points: {run_doc['error']}"
        if not isinstance(e, ServerError | OSError | ValueError):
            traceback.print_exc()
        print(f"[bench] {label}: FAILED: {e}", file=sys.stderr)
    finally:
        if server is not None:
            server.stop()
        run_doc["finished_utc"] = report.utc_now()
        run_doc["frontier"] = report.run_frontier(run_doc, args.sla, args.speed_stat)
        save()


def _finish(args, doc, out_dir, save) -> None:
    """Compare runs, plot, write the final JSON and print the tables (also after a failure or Ctrl-C)."""
    from vllm_dspark.bench import plots, report
    from vllm_dspark.bench.frontier import compare_frontiers

    failed_requests = sum(p["failed"] for r in doc["runs"] for p in r["points"])
    if failed_requests:
        doc["error"] = doc["error"] or f"{failed_requests} requests failed while the server stayed up; " \
                                       "see points[].errors"
    labelled = _label_runs(doc)
    compared = [(lab, run) for lab, run in labelled if run["points"]]
    if len(compared) >= 2:
        reference = compared[0][0]  # the first baseline's first run, else this command's first run
        doc["comparison"] = compare_frontiers(
            {lab: [tuple(p) for p in run["frontier"]["points"]] for lab, run in compared}, args.sla, reference)
    if not args.no_plots and compared:
        doc["plots"] = plots.plot_all([dict(run, label=lab) for lab, run in compared], args.sla, out_dir)
    doc["finished_utc"] = report.utc_now()
    save()
    print(report.points_table([dict(run, label=lab) for lab, run in labelled]))
    if doc["comparison"]:
        print(report.comparison_table(doc["comparison"]))
    for lab, run in compared if not doc["comparison"] else []:
        readouts = ", ".join(f"{row['sla']:g} -> {report.fmt(row['throughput'])}" for row in run["frontier"]["sla"])
        print(f"{lab}: throughput at SLA (tok/s/user -> tok/s): {readouts}")
    print(f"results: {out_dir / 'results.json'}", file=sys.stderr)
    if doc["error"]:
        print(f"[bench] error: {doc['error']}", file=sys.stderr)


def _label_runs(doc: dict) -> list[tuple[str, dict]]:
    """(unique label, run) for baselines first (the first baseline is the reference), then this command's runs."""
    labelled: list[tuple[str, dict]] = []
    seen: set[str] = set()
    candidates = [(run, b["path"]) for b in doc["baselines"] for run in b["runs"]] + [(r, None) for r in doc["runs"]]
    for run, path in candidates:
        label = run["label"] if path is None else f"{run['label']} [{Path(path).parent.name or path}]"
        while label in seen:
            label += "'"
        seen.add(label)
        labelled.append((label, run))
    return labelled
