"""Compile a build's Hopper Gluon GEMM for sm_90a on any machine, GPU or not.

Run as a script, without ``TRITON_INTERPRET`` (under the interpreter Gluon functions cannot be
compiled): ``python compile_gluon.py PACKAGE_DIR CASES_JSON``, where each case is
``[m, k, dense_n or null, ue8m0, out_dtype]`` and takes the tiles ``wgmma_tiles`` ships for it
(grouped over 256 experts when dense_n is null), with its arguments specialized as a launch of that
case specializes them. Prints one JSON object per case: the tiles, what a launch
needs (threads, registers per thread, shared memory per program), the SASS instructions that touch
local memory (register spills), the waits that leave a wgmma running, and whether ptxas serializes
the wgmmas.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import triton
import triton.knobs
from triton.backends.compiler import GPUTarget
from triton.backends.nvidia.compiler import get_ptxas
from triton.experimental.gluon._runtime import GluonASTSource

HOPPER = GPUTarget("cuda", 90, 128)
# Grouped cases: experts, and weight rows per expert (the scalars' values only set their specialization).
GROUPED_EXPERTS = 256
GROUPED_N = 4096


def load_package(package_dir: Path):
    spec = importlib.util.spec_from_file_location(
        "finegrained_fp8", package_dir / "__init__.py", submodule_search_locations=[str(package_dir)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["finegrained_fp8"] = module
    spec.loader.exec_module(module)
    return module


def descriptor_type(wgmma, rows: int) -> str:
    return f"tensordesc<fp8e4nv[{rows}, 128],{wgmma._operand_layout(rows)!r}>"


TORCH_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def output_descriptor_type(wgmma, block_n: int, out_dtype: str, grouped: bool, k: int) -> str | None:
    """The output descriptor's type where the kernel stores through TMA (aligned rows), else None."""
    dtype = TORCH_DTYPES[out_dtype]
    if not wgmma.stores_through_tma(dtype, grouped, k):
        return None
    return f"tensordesc<{out_dtype}[64, {block_n}],{wgmma.output_layout(block_n, dtype)!r}>"


def _tool_output(tool: str, data: bytes, suffix: str, *args: str) -> str:
    """stdout and stderr of a CUDA tool run on ``data``, written to a temporary file it takes last."""
    with tempfile.NamedTemporaryFile(suffix=suffix) as file:
        file.write(data)
        file.flush()
        run = subprocess.run([tool, *args, file.name], capture_output=True, text=True, check=True)
    return run.stdout + run.stderr


def local_memory_instructions(sass: str) -> int:
    """How many SASS instructions load or store local memory (spilled registers)."""
    return len(re.findall(r"\b(?:LDL|STL)\b", sass))


def waits_leaving_one_wgmma(sass: str) -> int:
    """How many SASS waits let one wgmma group run on (two products in flight: ``_k_blocks_in_pairs``)."""
    return len(re.findall(r"WARPGROUP\.DEPBAR\.LE gsb0, 0x1\b", sass))


def wgmma_serialized(ptx: str) -> bool:
    """Whether ptxas serializes the wgmmas of ``ptx`` (its advisory C7514: each wgmma then waits for
    the one before; a variant that drew it ran 1.2-1.5x slower on the H200)."""
    arch = f"-arch=sm_{HOPPER.arch}a"  # the target the kernels were compiled for
    log = _tool_output(get_ptxas(HOPPER.arch).path, ptx.encode(), ".ptx", arch, "-o", os.devnull)
    return "C7514" in log


def scalar_values(wgmma, m: int, k: int, dense_n: int | None) -> dict[str, int]:
    """The integer arguments a launch of this case passes (row-major operands, contiguous scales)."""
    experts = 1 if dense_n is not None else GROUPED_EXPERTS
    n = dense_n or GROUPED_N
    block_n, block_k = wgmma.BLOCK_SHAPE
    k_blocks, n_blocks = wgmma.cdiv(k, block_k), wgmma.cdiv(n, block_n)
    return {"M": m * experts, "N": n, "K": k, "num_experts": experts, "stride_xsm": k_blocks, "stride_xsk": 1,
            "stride_wse": n_blocks * k_blocks, "stride_wsn": k_blocks, "stride_wsk": 1, "stride_om": n}  # fmt: skip


def specialize_like_a_launch(names: list[str], values: dict[str, int]) -> tuple[dict, dict, dict]:
    """(signature updates, constexprs, attrs) as Triton's launcher derives them from the arguments'
    values: integers equal to 1 become constants, and pointers (allocations are 16-byte aligned) and
    integers divisible by 16 get the divisibility hint, which changes the code ptxas sees (a grouped
    kernel spilled with it and not without)."""
    signature, constexprs, attrs = {}, {}, {}
    for index, name in enumerate(names):
        value = values.get(name)
        if value == 1:
            signature[name], constexprs[(index,)] = "constexpr", 1
        elif name.endswith("_ptr") or (value is not None and value % 16 == 0):
            attrs[(index,)] = [["tt.divisibility", 16]]
    return signature, constexprs, attrs


def compile_case(wgmma, tiles_module, m: int, k: int, dense_n: int | None, ue8m0: bool, out_dtype: str) -> dict:
    tiles = tiles_module.wgmma_tiles(m, k, dense_n, torch.device("cpu"))
    grouped = dense_n is None
    signature = {"x_desc": descriptor_type(wgmma, tiles.block_m), "w_desc": descriptor_type(wgmma, tiles.block_n)}
    signature |= {"xs_ptr": "*fp32", "ws_ptr": "*u8" if ue8m0 else "*fp32", "out_ptr": f"*{out_dtype}"}
    values = scalar_values(wgmma, m, k, dense_n)
    signature |= {"ends_ptr": "*i32"} | dict.fromkeys(values, "i32")
    out_desc = output_descriptor_type(wgmma, tiles.block_n, out_dtype, grouped, k)
    constants = wgmma._kernel_constants(tiles, GROUPED_EXPERTS if grouped else 1, grouped, ue8m0, out_desc is not None)
    half_rows = 64 if wgmma._has_half_tiles(tiles.block_m, tiles.block_n, constants["BLOCK_E"]) else tiles.block_m
    signature["x_half_desc"] = descriptor_type(wgmma, half_rows)  # else the kernel's placeholder: x's descriptor
    signature["out_desc"] = out_desc or signature["x_desc"]  # the kernel's placeholder: x's descriptor
    signature |= dict.fromkeys(constants, "constexpr")
    names = wgmma._gemm_wgmma_kernel.arg_names
    specialized, constexprs, attrs = specialize_like_a_launch(names, values)
    signature = {name: specialized.get(name, signature[name]) for name in names}
    constexprs |= {(names.index(name),): value for name, value in constants.items()}
    source = GluonASTSource(fn=wgmma._gemm_wgmma_kernel, signature=signature, constexprs=constexprs, attrs=attrs)
    kernel = triton.compile(source, target=HOPPER, options={"num_warps": 4, "maxnreg": tiles.max_registers})
    sass = _tool_output(triton.knobs.nvidia.nvdisasm.path, kernel.asm["cubin"], ".cubin", "-c")
    return {
        "tiles": [tiles.block_m, tiles.block_n, tiles.stages, tiles.programs_per_sm, tiles.max_registers],
        "threads": kernel.metadata.num_warps * 32,
        "shared": kernel.metadata.shared,
        "wgmma": kernel.asm["ptx"].count("wgmma.mma_async"),
        "tma_stores": kernel.asm["ptx"].count("cp.async.bulk.tensor.2d.global.shared"),
        "local_memory_instructions": local_memory_instructions(sass),
        "waits_leaving_one_wgmma": waits_leaving_one_wgmma(sass),
        "wgmma_serialized": wgmma_serialized(kernel.asm["ptx"]),
    }


def main() -> None:
    package = load_package(Path(sys.argv[1]))
    wgmma = sys.modules[f"{package.__name__}._wgmma"]
    tiles_module = sys.modules[f"{package.__name__}._tiles"]
    for case in json.loads(sys.argv[2]):
        print(json.dumps(compile_case(wgmma, tiles_module, *case)), flush=True)


if __name__ == "__main__":
    main()
