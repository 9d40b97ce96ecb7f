"""Compile every kernel variant the launchers choose, for GPUs this machine does not have.

Run as a script, without ``TRITON_INTERPRET`` (interpreted kernels cannot be compiled):
``python compile_targets.py PACKAGE_DIR [TARGET ...]``, targets named as in ``TARGETS`` (all by default).

For each target, the package's own launchers are called on CPU tensors of representative calls (decode
and prefill sizes, tails, every scaling mode and scale dtype, every activation and output dtype) while
``device_facts`` reports that target's GPU and ``launch_kernel`` records instead of launching. So the
variants compiled are those a launch on that GPU would compile: the tiles the policy picks for its SM
count and shared memory, dependent launch where it has it, the Gluon kernel where it applies. Each
distinct variant is compiled through Triton's bundled backend for the target, with its arguments
specialized as a launch specializes them. Prints one JSON object per variant: target, kernel,
compile-time arguments, shared memory, registers where known, whether the shared memory fits the
target, and the compile error if any. Exits 1 if any variant fails to compile or does not fit.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import sys
from pathlib import Path

import torch
import triton
from compile_gluon import load_package, specialize_like_a_launch
from torch._library.triton import set_wrap_triton_enabled
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

# name -> (Triton target, the facts such a GPU reports: vendor, name, arch, capability, SMs, shared memory per block)
TARGETS = {
    "sm_89": (GPUTarget("cuda", 89, 32), ("nvidia", "NVIDIA L40S", "sm_89", (8, 9), 142, 101376)),
    "sm_90a": (GPUTarget("cuda", 90, 32), ("nvidia", "NVIDIA H100", "sm_90", (9, 0), 132, 232448)),
    "sm_100a": (GPUTarget("cuda", 100, 32), ("nvidia", "NVIDIA B200", "sm_100", (10, 0), 148, 232448)),
    "sm_120": (GPUTarget("cuda", 120, 32), ("nvidia", "NVIDIA RTX 5090", "sm_120", (12, 0), 170, 101376)),
    "gfx942": (GPUTarget("hip", "gfx942", 64), ("amd", "AMD Instinct MI300X", "gfx942", None, 304, 65536)),
    "gfx950": (GPUTarget("hip", "gfx950", 64), ("amd", "AMD Instinct MI355X", "gfx950", None, 256, 163840)),
}
TRITON_TYPES = {
    torch.float32: "fp32",
    torch.bfloat16: "bf16",
    torch.float16: "fp16",
    torch.float8_e4m3fn: "fp8e4nv",
    torch.uint8: "u8",
    torch.int8: "i8",
    torch.int32: "i32",
    torch.int64: "i64",
}
LAUNCH_OPTIONS = ("num_warps", "num_stages", "launch_pdl", "maxnreg")


def module(name: str):
    return sys.modules[f"finegrained_fp8.{name}"]


def argument_type(arg: object) -> str:
    """The signature entry of one runtime argument, as a launch derives it."""
    if isinstance(arg, torch.Tensor):
        return "*" + TRITON_TYPES[arg.dtype]
    if isinstance(arg, bool):
        return "i1"
    if isinstance(arg, int):
        return "i32" if -(2**31) <= arg < 2**31 else "i64"
    if hasattr(arg, "block_shape"):  # a host TensorDescriptor (the Gluon kernel's operands)
        return f"tensordesc<{TRITON_TYPES[arg.base.dtype]}[{', '.join(map(str, arg.block_shape))}],{arg.layout!r}>"
    raise TypeError(f"no signature type for {type(arg).__name__}")


def source_of(kernel, args: tuple, meta: dict):
    """An ASTSource of ``kernel`` specialized like a launch with these arguments (``specialize_like_a_launch``:
    integers equal to 1 become constants, pointers and integers divisible by 16 get the divisibility hint),
    its compile-time arguments from ``meta``."""
    names = kernel.arg_names
    runtime = names[: len(args)]
    pairs = list(zip(runtime, args, strict=True))
    values = {name: arg for name, arg in pairs if isinstance(arg, int) and not isinstance(arg, bool)}
    specialized, constexprs, attrs = specialize_like_a_launch(runtime, values)
    signature = {name: specialized.get(name) or argument_type(arg) for name, arg in pairs}
    for index, name in enumerate(names[len(args) :], len(args)):
        signature[name], constexprs[(index,)] = "constexpr", meta[name]
    if type(kernel).__name__.startswith("Gluon"):
        from triton.experimental.gluon._runtime import GluonASTSource

        return GluonASTSource(fn=kernel, signature=signature, constexprs=constexprs, attrs=attrs)
    return ASTSource(fn=kernel, signature=signature, constexprs=constexprs, attrs=attrs)


# Modules that bind the device queries and the launcher by name.
_PATCHED_NAMES = ("device_facts", "multiprocessor_count", "launch_kernel")


@contextlib.contextmanager
def recording_as(facts):
    """Inside, the package sees a GPU with ``facts`` and records its launches instead of making them;
    yields the list of (kernel, runtime arguments, compile-time arguments and options)."""
    launches: list = []

    def record(kernel, grid, args, device, traceable=True, **meta):
        launches.append((kernel, args, meta))

    replacements = {
        "device_facts": lambda device: facts,
        "multiprocessor_count": lambda device: facts.multiprocessors,
        "launch_kernel": record,
    }
    names = ("_device", "_launch", "_tiles", "_wgmma", "_routing", "_quantize", "dense", "moe")
    modules = [sys.modules[f"finegrained_fp8.{n}"] for n in names if f"finegrained_fp8.{n}" in sys.modules]
    saved = [(m, n, getattr(m, n)) for m in modules for n in _PATCHED_NAMES if hasattr(m, n)]
    try:
        for m, name, _ in saved:
            setattr(m, name, replacements[name])
        with set_wrap_triton_enabled(False), torch.device("meta"):  # the direct eager path, as a launch takes it
            yield launches
    finally:
        for m, name, value in saved:
            setattr(m, name, value)


def weight(n: int, k: int, block, scale_dtype=torch.float32, experts: int | None = None):
    lead = () if experts is None else (experts,)
    w = torch.empty((*lead, n, k), dtype=torch.float8_e4m3fn)
    if block is None:
        return w, torch.empty(lead or (1,), dtype=scale_dtype)
    return w, torch.empty((*lead, -(-n // block[0]), -(-k // block[1])), dtype=scale_dtype)


def representative_calls() -> list:
    """Calls of the internal launchers that between them reach every variant the tile policy picks (on
    meta tensors: the launchers read shapes, strides and dtypes only; meta allocations count as aligned)."""
    quantize, dense, moe = module("_quantize"), module("dense"), module("moe")
    calls = []
    for dtype in (torch.float16, torch.float32):
        calls.append(lambda d=dtype: quantize.quantize_2d(torch.empty(16, 7168, dtype=d), 128))
    for m, k, group in ((1, 7168, 128), (4096, 7168, 128), (3, 1000, 32), (5, 768, 768)):
        calls.append(lambda m=m, k=k, g=group: quantize.quantize_2d(torch.empty(m, k, dtype=torch.bfloat16), g))
    calls.append(lambda: quantize.quantize_2d(torch.empty(8, 256), 128, power_of_two_scale=True))
    calls.append(lambda: quantize.quantize_2d(torch.empty(8, 256), 256, static_scale=torch.empty(1)))
    calls.append(lambda: quantize.quantize_2d(torch.empty(8, 256), 128, source_rows=torch.empty(8, dtype=torch.int32)))

    def gemm(m, n, k, block=(128, 128), scale_dtype=torch.float32, out_dtype=torch.bfloat16):
        w, ws = weight(n, k, block, scale_dtype)
        x = torch.empty(m, k, dtype=torch.float8_e4m3fn)
        block_k = block[1] if block else k
        xs = torch.empty(m, -(-k // block_k)) if block else torch.empty(m, 1)
        scaling = dense.Scaling(*block) if block else dense.Scaling()
        dense.launch_gemm(w, ws, x, xs, torch.empty(m, n, dtype=out_dtype), scaling)

    for m in (1, 32, 64, 128, 200, 1024):
        calls.append(lambda m=m: gemm(m, 7168, 18432))
    for m in (128, 256):
        calls.append(lambda m=m: gemm(m, 24576, 1536))
    calls.append(lambda: gemm(17, 300, 200, out_dtype=torch.float32))
    calls.append(lambda: gemm(300, 330, 1040, scale_dtype=torch.float8_e8m0fnu, out_dtype=torch.float16))
    calls.append(lambda: gemm(5, 256, 512, block=None))
    calls.append(lambda: gemm(1024, 256, 512, block=(32, 32)))

    def experts(rows, e, n, k, batched, block=(128, 128), scale_dtype=torch.float32):
        w, ws = weight(n, k, block, scale_dtype, experts=e)
        x = torch.empty(rows, k, dtype=torch.bfloat16)
        ids = torch.empty(rows, dtype=torch.int64)
        block_args = block or (0, 0)  # the ops' per-tensor ints
        if batched:
            return moe._fp8_matmul_batched(x, w, ws, ids, *block_args, torch.bfloat16)
        offsets = torch.empty((e,), dtype=torch.int32)
        return moe._fp8_matmul_grouped(x, w, ws, offsets, *block_args, torch.bfloat16)

    for rows in (8, 64, 2048, 8192, 32768):
        calls.append(lambda r=rows: experts(r, 128, 2048, 768, batched=True))
        calls.append(lambda r=rows: experts(r, 128, 2048, 768, batched=False))
    calls.append(lambda: experts(32768, 256, 4096, 7168, batched=False))
    calls.append(lambda: experts(40, 4, 200, 300, batched=True, scale_dtype=torch.float8_e8m0fnu))
    calls.append(lambda: experts(8, 4, 256, 512, batched=True, block=None))
    calls.append(lambda: experts(40, 4, 256, 512, batched=False, block=None))
    return calls


def variants_for(facts) -> dict:
    """Distinct (kernel, specialization) -> (kernel, args, meta) of every representative call."""
    found = {}
    with recording_as(facts) as launches:
        for call in representative_calls():
            call()
    for kernel, args, meta in launches:
        key = (kernel.__name__, tuple(map(argument_type, args)), tuple(sorted(meta.items(), key=str)))
        key += (tuple(a == 1 or a % 16 == 0 for a in args if isinstance(a, int) and not isinstance(a, bool)),)
        found.setdefault(key, (kernel, args, meta))
    return found


def compile_variant(target: GPUTarget, facts, kernel, args: tuple, meta: dict) -> dict:
    options = {name: meta[name] for name in LAUNCH_OPTIONS if name in meta}
    constants = {name: meta[name] for name in kernel.arg_names if name in meta and name != "num_warps"}
    result = {"kernel": kernel.__name__, "constants": constants, "options": options}
    try:
        compiled = triton.compile(source_of(kernel, args, meta), target=target, options=options)
    except Exception as error:
        return result | {"error": f"{type(error).__name__}: {str(error).strip().splitlines()[-1][:300]}"}
    shared = compiled.metadata.shared
    return result | {"shared": shared, "fits": shared <= facts.shared_memory_per_block}


_JOBS: list = []  # (target name, kernel, args, meta), read by the forked compile workers


def _compile_job(index: int) -> dict:
    name, kernel, args, meta = _JOBS[index]
    target, fields = TARGETS[name]
    return {"target": name} | compile_variant(target, module("_device").DeviceFacts(*fields), kernel, args, meta)


def main() -> int:
    load_package(Path(sys.argv[1]))
    device = module("_device")
    for name in sys.argv[2:] or list(TARGETS):
        facts = device.DeviceFacts(*TARGETS[name][1])
        _JOBS.extend((name, *variant) for variant in variants_for(facts).values())
    failed = 0
    with multiprocessing.get_context("fork").Pool(os.cpu_count()) as pool:
        for result in pool.imap(_compile_job, range(len(_JOBS))):
            failed += "error" in result or not result["fits"]
            print(json.dumps(result, default=str), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
