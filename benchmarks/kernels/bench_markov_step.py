"""Time one draft round (γ Markov steps) of the sequential head: PyTorch eager vs fused Triton vs CUDA graph.

For each batch size and mode (greedy / sampled) it prints a table row and records to JSON:
  eager_ms   reference.markov_block (torch ops, fp32 compute) — the eager baseline
  triton_ms  kernel.markov_block (2 launches per position)
  graph_ms   the same captured in a CUDA graph (kernels.graphs.GraphedDraftRound)
  MB         bytes a round must move at least: per position W2 [V, r] + W1[prev] rows + U_k [N, V] + h_k [N, H]
             + the confidence weights, each read once (W2 is re-read every position: it does not fit on chip).
             Not counted: the tile statistics ([N, V/128] x 16 B written + read) and, for sampled rows, the one
             re-read W2 tile [128, r] per request (see kernel.py).
  floor_ms   the bandwidth floor measured in the same run: time of `dst.copy_(src)` with src of MB/2 bytes, i.e.
             a device copy that reads + writes the same number of bytes as the round must read.
  x_floor    graph_ms / floor_ms (target: <= 1.3 at batch >= 64 on H100).
  tgt_ms     estimated target step, linear part only: a Qwen3-8B-sized chain of bf16 `F.linear`s (36 layers of
             qkv [6144, 4096], o [4096, 4096], gate_up [24576, 4096], down [4096, 12288] + lm_head [151936, 4096];
             attention and norms omitted, so this underestimates the step and overestimates the head's share) at
             the tokens of the verification step the round feeds: N·(γ+1). `tgt1_ms` is the same at N tokens (a
             plain decode step).
  tgt_ctx_ms the same chain plus each layer's attention of the N·(γ+1) queries over a bf16 KV cache of
             --context tokens per request (F.scaled_dot_product_attention, GQA 32 query / 8 KV heads of 128; two
             distinct KV caches alternate so every layer reads its KV from HBM): the cost-realistic target step.
  head_pct   graph_ms / tgt_ms (conservative); head_pct_ctx = graph_ms / tgt_ctx_ms (target: <= 2 %).
  reread_ms  (--draw-ablation, sampled rows) graph_ms with LaunchOptions(tile_draw=False): the select kernel
             re-reads the drawn group's W2 rows instead of using the tile kernel's in-group draw.

GPU (standalone: torch + Triton, no vLLM needed):
  python benchmarks/kernels/bench_markov_step.py --json out.json
CPU smoke run (eager vs the torch fallback the dispatcher picks on CPU, tiny shapes):
  python benchmarks/kernels/bench_markov_step.py --cpu-small --json out.json
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import statistics
import time

import torch
import torch.nn.functional as F

from vllm_dspark.kernels.graphs import GraphedDraftRound
from vllm_dspark.kernels.markov_step import ConfidenceWeights, MarkovWeights, markov_block, reference

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
QWEN3_8B = dict(hidden=4096, intermediate=12288, layers=36, q_dim=4096, kv_dim=1024, head_dim=128, vocab=151936)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", default="1,16,64,128,256", help="comma-separated batch sizes")
    p.add_argument("--vocab", type=int, default=151936)
    p.add_argument("--rank", type=int, default=256)
    p.add_argument("--hidden", type=int, default=4096)
    p.add_argument("--gamma", type=int, default=7)
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    p.add_argument("--modes", default="greedy,sample", help="greedy and/or sample (T = 1)")
    p.add_argument("--output", choices=["none", "logits", "probs"], default="none",
                   help="extra per-position output; 'none' = token + logprob + lse only")
    p.add_argument("--reps", type=int, default=30, help="timed repetitions (median reported)")
    p.add_argument("--no-eager", action="store_true")
    p.add_argument("--no-graph", action="store_true")
    p.add_argument("--no-target", action="store_true", help="skip the target-step estimate")
    p.add_argument("--context", type=int, default=2048,
                   help="KV-cache tokens per request for the cost-realistic target step (tgt_ctx_ms); 0 skips it")
    p.add_argument("--draw-ablation", action="store_true",
                   help="sampled rows: also time the graph without in-tile draws (reread_ms)")
    p.add_argument("--no-alternate", action="store_true", help="ablation: same tile order at every position")
    p.add_argument("--tile-configs", default="",
                   help="sweep tile-kernel configs BLOCK_NxWARPSxSTAGESxPROGRAMS_PER_SM, e.g. 16x4x3x1,64x8x2x1 "
                        "(graph replay times; each config's tokens/lse are checked against the default's)")
    p.add_argument("--profile", action="store_true", help="per-kernel device time of a round (torch.profiler)")
    p.add_argument("--cpu-small", action="store_true", help="tiny shapes on CPU (keeps the script tested)")
    p.add_argument("--json", default=None, help="write results here")
    args = p.parse_args(argv)
    if args.cpu_small:
        args.vocab, args.rank, args.hidden, args.gamma = 2053, 32, 64, 3
        args.batch = "1,4"
        args.reps = min(args.reps, 3)
        args.context = min(args.context, 64)
    return args


# ------------------------------------------------------------------------------------------------- timing
def timer(device: torch.device, reps: int):
    if device.type == "cuda":
        import triton.testing

        # do_bench clears L2 before every call (as the target step between two rounds would) and uses events.
        return lambda fn: triton.testing.do_bench(fn, warmup=5, rep=max(20, reps * 2), return_mode="median")

    def cpu_time(fn):
        fn()
        ts = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            ts.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(ts)

    return cpu_time


def copy_floor_ms(nbytes: int, device, bench) -> float:
    """Time of a device copy that moves `nbytes` in total (nbytes/2 read + nbytes/2 written)."""
    src = torch.empty(max(nbytes // 2, 1), dtype=torch.uint8, device=device).random_(0, 255)
    dst = torch.empty_like(src)
    return bench(lambda: dst.copy_(src))


def target_step_ms(n_req: int, q_len: int, dtype, device, bench, shape=QWEN3_8B, context: int = 0,
                   distinct_layers: int = 2) -> float:
    """A Qwen3-8B-sized bf16 stack at n_req·q_len tokens: the linear chain, plus attention over `context` cached
    tokens per request when context > 0 (see module docstring)."""
    h, i, qd, kv, hd = shape["hidden"], shape["intermediate"], shape["q_dim"], shape["kv_dim"], shape["head_dim"]
    mk = lambda o, k: torch.randn(o, k, device=device, dtype=dtype) * 0.02  # noqa: E731
    layers = [dict(qkv=mk(qd + 2 * kv, h), o=mk(h, qd), gate_up=mk(2 * i, h), down=mk(h, i))
              for _ in range(distinct_layers)]  # distinct layers >> L2, so alternating them re-reads HBM like 36
    kv_heads, group = kv // hd, qd // kv
    if context > 0:  # [N, KV heads, C, hd] per distinct layer
        for w in layers:
            w["k"], w["v"] = (torch.randn(n_req, kv_heads, context, hd, device=device, dtype=dtype)
                              for _ in range(2))
    lm_head = mk(shape["vocab"], h)
    x0 = torch.randn(n_req * q_len, h, device=device, dtype=dtype)

    def attention(q, w):
        # GQA as plain attention: each KV head's `group` query heads x q_len tokens become one query sequence.
        q = q.view(n_req, q_len, kv_heads, group, hd).permute(0, 2, 1, 3, 4).reshape(n_req, kv_heads, -1, hd)
        o = F.scaled_dot_product_attention(q, w["k"], w["v"])
        return o.view(n_req, kv_heads, q_len, group, hd).permute(0, 2, 1, 3, 4).reshape(n_req * q_len, qd)

    def step():
        x = x0
        for li in range(shape["layers"]):
            w = layers[li % distinct_layers]
            a = F.linear(x, w["qkv"])[:, :qd]
            if context > 0:
                a = attention(a, w)
            x = x + F.linear(a, w["o"])
            g, u = F.linear(x, w["gate_up"]).chunk(2, dim=-1)
            x = x + F.linear(F.silu(g) * u, w["down"])
        return F.linear(x, lm_head)  # verification needs logits at every position

    for _ in range(2):  # cuBLAS picks algorithms / allocates workspace on first use of a shape
        step()
    return bench(step)


# ------------------------------------------------------------------------------------------------- inputs
def make_weights(v, r, h, dtype, device, gen):
    w1 = torch.randn(v, r, generator=gen, device=device).to(dtype)
    w2 = (torch.randn(v, r, generator=gen, device=device) / r ** 0.5).to(dtype)
    conf = ConfidenceWeights((torch.randn(h + r, generator=gen, device=device) / (h + r) ** 0.5).to(dtype),
                             torch.zeros(1, device=device, dtype=dtype), with_markov=True)
    return MarkovWeights(w1, w2), conf


def make_inputs(n, gamma, v, h, dtype, device, greedy, gen):
    u = (torch.randn(n, gamma, v, generator=gen, device=device) * 3).to(dtype)
    hidden = torch.randn(n, gamma, h, generator=gen, device=device).to(dtype)
    anchor = torch.randint(0, v, (n,), generator=gen, device=device)
    temp = torch.full((n,), 0.0 if greedy else 1.0, device=device)
    seeds = torch.randint(0, 2**62, (n,), generator=gen, device=device)
    return u, hidden, anchor, temp, seeds


def round_bytes(n, gamma, v, r, h, dtype) -> int:
    e = torch.empty((), dtype=dtype).element_size()
    per_step = v * r * e + n * r * e + n * v * e + n * h * e + (h + r) * e + n * (8 + 4 + 4 + 4)
    return gamma * per_step


# ------------------------------------------------------------------------------------------------- main
def run(args) -> dict:
    device = torch.device("cpu" if args.cpu_small or not torch.cuda.is_available() else "cuda")
    dtype = DTYPES[args.dtype]
    bench = timer(device, args.reps)
    gen = torch.Generator(device=device).manual_seed(0)
    v, r, h, gamma = args.vocab, args.rank, args.hidden, args.gamma
    weights, conf = make_weights(v, r, h, dtype, device, gen)
    backend = "triton" if device.type == "cuda" else "torch"
    launch = None  # the torch path takes no launch options
    if device.type == "cuda":
        from vllm_dspark.kernels.markov_step.kernel import LaunchOptions

        launch = LaunchOptions(alternate_tile_order=not args.no_alternate)
    target_shape = QWEN3_8B if device.type == "cuda" else dict(hidden=64, intermediate=192, layers=2, q_dim=64,
                                                                 kv_dim=16, head_dim=8, vocab=v)
    info = dict(
        device=torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        torch=torch.__version__, triton=_triton_version(), shapes=dict(vocab=v, rank=r, hidden=h, gamma=gamma),
        dtype=args.dtype, output=args.output, backend=backend, alternate_tile_order=not args.no_alternate,
        target_shape=target_shape, context=args.context,
        floor="device copy (dst.copy_(src)) moving the round's bytes (read+write)",
        rows=[],
    )
    cols = ["batch", "mode", "MB", "floor_ms", "eager_ms", "triton_ms", "graph_ms", "x_floor", "GB/s",
            "tgt_ms", "tgt1_ms", "tgt_ctx_ms", "head_pct", "head_pct_ctx"]
    print(f"# {info['device']}  torch {info['torch']}  triton {info['triton']}  V={v} r={r} H={h} γ={gamma} "
          f"{args.dtype} output={args.output}")
    print(" ".join(f"{c:>9}" for c in cols))
    for n in [int(b) for b in args.batch.split(",")]:
        nbytes = round_bytes(n, gamma, v, r, h, dtype)
        floor = copy_floor_ms(nbytes, device, bench)
        tgt = tgt1 = tgt_ctx = float("nan")
        if not args.no_target:
            tgt = target_step_ms(n, gamma + 1, dtype, device, bench, target_shape)
            tgt1 = target_step_ms(n, 1, dtype, device, bench, target_shape)
            if args.context > 0:
                tgt_ctx = target_step_ms(n, gamma + 1, dtype, device, bench, target_shape, context=args.context)
        for mode in args.modes.split(","):
            u, hidden, anchor, temp, seeds = make_inputs(n, gamma, v, h, dtype, device, mode == "greedy", gen)
            row = dict(batch=n, mode=mode, MB=nbytes / 1e6, floor_ms=floor, tgt_ms=tgt, tgt1_ms=tgt1,
                       tgt_ctx_ms=tgt_ctx)

            def fused(launch=launch, u=u, hidden=hidden, anchor=anchor, temp=temp, seeds=seeds):
                return markov_block(u, hidden, anchor, weights, temp, seeds, conf=conf, output=args.output,
                                    backend=backend, launch=launch)

            row["eager_ms"] = float("nan") if args.no_eager else bench(
                lambda: reference.markov_block(u, hidden, anchor, weights, temp, seeds, conf=conf,
                                               output=args.output))
            row["triton_ms"] = bench(fused)
            inputs = (u, hidden, anchor, temp, seeds)

            def graph_ms(launch=launch):
                graphed = GraphedDraftRound(lambda *x: fused(launch, *x), [n],
                                            lambda bs: tuple(x.clone() for x in inputs), device=device)
                return bench(lambda: graphed(*inputs))

            def time_with(launch):  # through the graph unless --no-graph
                return bench(lambda: fused(launch)) if args.no_graph else graph_ms(launch)

            if args.tile_configs and device.type == "cuda":
                row["sweep"] = _sweep(args.tile_configs, launch, fused, time_with)
            if args.profile and device.type == "cuda":
                row["profile"] = _profile(fused)
            row["graph_ms"] = float("nan") if args.no_graph else graph_ms()
            if args.draw_ablation and mode == "sample" and device.type == "cuda":
                row["reread_ms"] = time_with(dataclasses.replace(launch, tile_draw=False))
            best = row["graph_ms"] if row["graph_ms"] == row["graph_ms"] else row["triton_ms"]
            row["x_floor"] = best / floor
            row["GB/s"] = nbytes / best / 1e6
            row["head_pct"] = 100.0 * best / tgt
            row["head_pct_ctx"] = 100.0 * best / tgt_ctx
            info["rows"].append(row)
            print(" ".join(_fmt(row[c]) for c in cols))
            if "reread_ms" in row:
                print(f"   no in-tile draws (select re-reads W2): {row['reread_ms']:.3f} ms")
            if "sweep" in row:
                print("   sweep:", ", ".join(f"{k}={t:.3f}ms" for k, t in row["sweep"].items()))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(_json_safe(info), f, indent=1)
    return info


def _sweep(spec, launch, fused, time_with) -> dict:
    """Time each tile-kernel config (`time_with(launch)`); check its tokens/lse against the default config's."""
    base = fused(launch)
    out = {}
    for cfg in spec.split(","):
        config = dataclasses.replace(launch, tile_config=tuple(int(x) for x in cfg.split("x")))
        try:
            got = fused(config)
            if not (torch.equal(got.tokens, base.tokens) and torch.allclose(got.lse, base.lse, atol=1e-3)):
                print(f"   config {cfg}: MISMATCH against the default config")
            out[cfg] = time_with(config)
        except Exception as e:  # noqa: BLE001 - a config that does not compile is a sweep result, not a crash
            out[cfg] = float("nan")
            print(f"   config {cfg} failed: {type(e).__name__}: {str(e)[:100]}")
    return out


def _profile(fused, rounds: int = 3) -> dict:
    """Device time per kernel name (µs per round) from torch.profiler over a few eager rounds."""
    from torch.profiler import ProfilerActivity, profile

    fused()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(rounds):
            fused()
        torch.cuda.synchronize()
    times = {}
    for ev in prof.key_averages():
        t = getattr(ev, "device_time_total", None) or getattr(ev, "cuda_time_total", 0.0)
        if t:
            times[ev.key[:40]] = t / rounds
    top = dict(sorted(times.items(), key=lambda kv: -kv[1])[:6])
    print("   profile (µs/round):", ", ".join(f"{k}={v:.1f}" for k, v in top.items()))
    return top


def _json_safe(x):
    if isinstance(x, float) and x != x:
        return None
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_json_safe(v) for v in x]
    return x


def _fmt(x):
    return f"{x:>9}" if isinstance(x, (int, str)) else f"{x:>9.3f}"


def _triton_version():
    try:
        import triton

        return triton.__version__
    except Exception:  # noqa: BLE001
        return None


def main(argv=None):
    return run(parse_args(argv))


if __name__ == "__main__":
    main()
