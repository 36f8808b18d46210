"""Compile the Triton launches our launchers make for a real GPU target, on a machine without one.

Run as a script in a process where TRITON_INTERPRET is unset (under the interpreter even Triton's own
`tl.max` / `tl.sum` helpers are interpreted functions, which the compiler refuses):

    python tests/kernels/aot.py --arch 90 [--json out.json]

It swaps every `@triton.jit` kernel of our kernel modules for a recorder, calls the launchers with CPU tensors
of the real shapes and dtypes (the GPU launch path: bf16 tensor-core dots, the GPU tile configs), and compiles
each distinct launch with Triton's NVIDIA backend (ptxas ships with Triton) for `GPUTarget("cuda", arch, 32)`,
then reads registers / spills / shared memory from the cubin with the bundled cuobjdump. One JSON record per
launch: name, kernel, constexprs, options, ok, error, regs, spill_bytes, shared, wgmma (PTX uses warpgroup MMA).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import subprocess
import sys
import tempfile

import torch
import triton
from triton._C.libtriton import native_specialize_impl
from triton.backends.compiler import GPUTarget
from triton.backends.nvidia.compiler import CUDABackend
from triton.compiler import ASTSource

V, R, H, N, GAMMA = 151936, 256, 4096, 3, 2


@dataclasses.dataclass
class Launch:
    kernel: object  # the JITFunction
    signature: dict
    constexprs: dict
    options: dict
    attrs: dict = dataclasses.field(default_factory=dict)

    @property
    def name(self) -> str:
        flags = ",".join(f"{k}={v}" for k, v in self.constexprs.items())
        return f"{self.kernel.fn.__name__}[{flags}]"


class _Recorder:
    """Stands in for a JITFunction: `kernel[grid](...)` records the launch as the JIT would specialise it
    (Triton's own binder: 16-byte-aligned pointers and ints divisible by 16 get tt.divisibility = 16, ints
    equal to 1 become constants, unless the parameter is in do_not_specialize)."""

    def __init__(self, kernel, launches):
        self.kernel, self.launches = kernel, launches

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            options = {k: kwargs.pop(k) for k in ("num_warps", "num_stages") if k in kwargs}
            bound = dict(zip(self.kernel.arg_names, args)) | kwargs
            signature, constexprs, attrs = {}, {}, {}
            for p in self.kernel.params:
                value = bound[p.name]
                if p.is_constexpr:
                    signature[p.name], constexprs[p.name] = "constexpr", value
                    continue
                spec = not p.do_not_specialize
                ty, key = native_specialize_impl(CUDABackend, value, False, spec,
                                                 spec and not p.do_not_specialize_on_alignment)
                if ty == "constexpr":
                    signature[p.name], constexprs[p.name] = "constexpr", key
                    continue
                signature[p.name] = ty
                if key == "D":
                    attrs[(p.num,)] = [["tt.divisibility", 16]]
            self.launches.append(Launch(self.kernel, signature, constexprs, options, attrs))

        return launch


def record_launches(module, calls) -> list[Launch]:
    """The launches `calls()` makes through `module`'s kernels (none of them runs)."""
    launches: list[Launch] = []
    kernels = {k: v for k, v in vars(module).items() if isinstance(v, triton.runtime.jit.JITFunction)}
    try:
        for name, k in kernels.items():
            setattr(module, name, _Recorder(k, launches))
        calls()
    finally:
        for name, k in kernels.items():
            setattr(module, name, k)
    return launches


def _markov_calls():
    from vllm_dspark.kernels.markov_step import ConfidenceWeights, MarkovWeights, kernel

    for dtype in (torch.bfloat16, torch.float32):
        e = dict(dtype=dtype)
        w = MarkovWeights(torch.empty(V, R, **e), torch.empty(V, R, **e))
        gated = MarkovWeights(w.w1, w.w2, "gated", torch.empty(R, H + R, **e), torch.empty(R, **e))
        conf = ConfidenceWeights(torch.empty(H + R, **e), torch.zeros(1, **e), True)
        u = torch.empty(N, GAMMA, V, **e)
        hidden = torch.zeros(N, GAMMA, H, **e)
        anchor = torch.zeros(N, dtype=torch.int64)
        temp, seeds = torch.zeros(N), torch.zeros(N, dtype=torch.int64)
        for all_greedy in (False, True):
            kernel.markov_block(u, hidden, anchor, w, temp, seeds, conf=conf, all_greedy=all_greedy)
        # γ = 1: recorded launches do not run, so later positions would gather garbage token ids.
        kernel.markov_block(u[:, :1], hidden[:, :1], anchor, gated, temp, seeds, output="probs")


def all_launches() -> list[Launch]:
    from vllm_dspark.kernels.markov_step import kernel as markov

    out = record_launches(markov, _markov_calls)
    unique = {}
    for launch in out:
        key = (launch.name, tuple(launch.signature.values()), tuple(launch.options.items()), tuple(launch.attrs))
        unique.setdefault(key, launch)
    return list(unique.values())


def compile_launch(launch: Launch, arch: int):
    names = launch.kernel.arg_names
    src = ASTSource(launch.kernel, launch.signature,
                    constexprs={(names.index(k),): v for k, v in launch.constexprs.items()}, attrs=launch.attrs)
    return triton.compile(src, target=GPUTarget("cuda", arch, 32), options=dict(launch.options))


def resource_usage(compiled) -> dict:
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(compiled.asm["cubin"])
        f.flush()
        text = subprocess.run([tool, "--dump-resource-usage", f.name], capture_output=True, text=True,
                              check=True).stdout
    return {"regs": int(re.search(r"REG:(\d+)", text).group(1)),
            "spill_bytes": int(re.search(r"STACK:(\d+)", text).group(1)),
            "shared": compiled.metadata.shared, "wgmma": "wgmma" in compiled.asm["ptx"]}


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description="compile every kernel launch for a GPU target (no GPU needed)")
    p.add_argument("--arch", type=int, default=90, help="compute capability x 10 (90 = H100)")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        sys.exit("unset TRITON_INTERPRET: the compiler refuses interpreted functions")
    records = []
    for launch in all_launches():
        rec = dict(name=launch.name, kernel=launch.kernel.fn.__name__, constexprs=launch.constexprs,
                   options=launch.options, ok=True, error=None)
        try:
            rec.update(resource_usage(compile_launch(launch, args.arch)))
        except Exception as e:  # noqa: BLE001 - reported per launch
            rec.update(ok=False, error=f"{type(e).__name__}: {str(e)[:2000]}")
        records.append(rec)
        print(("ok  " if rec["ok"] else "FAIL") + f" {rec['name']} " +
              (f"regs={rec['regs']} spill={rec['spill_bytes']} shared={rec['shared']}" if rec["ok"] else rec["error"]),
              flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(records, f, indent=1)
    return records


if __name__ == "__main__":
    main()
