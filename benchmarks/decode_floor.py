#!/usr/bin/env python3
"""What the decode calls cost against the floors of their launches and bytes (GPU only).

Dense, M = 1 and 16 on the runner's shapes: the fused ``matmul_2d`` (quantization launch, then the
GEMM), the pre-quantized matmul (the GEMM alone), and an empty kernel followed by the pre-quantized
matmul: what a quantization launch that did no work would leave. MoE: for each projection of the
runner at 1 and 2 tokens (top-8 routing of a random router): our ``matmul_batched`` call; the
quantization of its rows alone (``fp8_act_quant``, the first of the call's two launches); and the
floor, a Triton kernel that only reads the touched experts' weights (each once, summing each row so
that the loads stay) over several tile shapes, launched as ours are (programmatic dependent launch).
Also the cost of an empty kernel in the graph. All in one process, graph-timed like the runner
(``run.bench``). The read tiles include [64, 128], the weight tile our decode GEMM streams (the
weights take the 64-row side of Hopper's FP8 wgmma).

    python3 benchmarks/decode_floor.py     # after scripts/build.py --backend cuda
"""

from __future__ import annotations

from types import ModuleType

import torch
import triton
import triton.language as tl
from run import DENSE_SHAPES, MOE_SHAPES, TOP_K, bench, load_package, top_k_routing
from triton.language.extra.cuda import gdc_wait

DENSE_M = [1, 16]
TOKENS = [1, 2]
# (weight rows, K bytes per step, warps) of the read kernel.
READ_TILES = [(8, 256, 4), (16, 256, 4), (32, 256, 4), (64, 256, 8), (64, 128, 4)]
# ``bench``'s bytes per call for calls that read next to nothing: the graph then holds the runner's
# fewest calls (MIN_CALLS_PER_GRAPH).
_TINY_CALL_BYTES = 1 << 30


@triton.jit
def _read_experts_kernel(w_ptr, ids_ptr, out_ptr, N, K, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """Program (row tile, slot): sum rows [BLOCK_N * pid, +BLOCK_N) of expert ids[slot] of w (E, N, K)
    e4m3 into out[slot, row]. Assumes N % BLOCK_N == 0 and K % BLOCK_K == 0."""
    gdc_wait()
    expert = tl.load(ids_ptr + tl.program_id(1)).to(tl.int64)
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    acc = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
    for k in range(0, K, BLOCK_K):
        cols = k + tl.arange(0, BLOCK_K)
        acc += tl.load(w_ptr + expert * N * K + rows[:, None] * K + cols[None, :]).to(tl.float32)
    tl.store(out_ptr + tl.program_id(1) * N + rows, tl.sum(acc, 1))


@triton.jit
def _empty_kernel(out_ptr):
    gdc_wait()
    tl.store(out_ptr, 1.0)


def _random_codes(experts: int, n: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random finite e4m3 expert weights (E, N, K) and unit float32 block scales (E, N/128, K/128)."""
    codes = torch.randint(0, 0x7F, (experts, n, k), dtype=torch.uint8, device="cuda")  # 0x7F is NaN
    return codes.view(torch.float8_e4m3fn), torch.ones(experts, n // 128, k // 128, device="cuda")


def _row(label: str, ms: float, nbytes: int = 0) -> None:
    rate = f"{nbytes / ms / 1e9:6.2f}" if nbytes else ""
    print(f"{label:44} {ms * 1e3:8.2f} {rate}", flush=True)


def _time_dense(fp8: ModuleType, n: int, k: int) -> None:
    flag = torch.empty(1, device="cuda")
    for m in DENSE_M:
        x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
        q, s = fp8.fp8_act_quant(x, 128)

        def with_weights(body):
            def make():
                w, ws = _random_codes(1, n, k)
                return lambda: body(w[0], ws[0])

            return make

        def fused(w: torch.Tensor, ws: torch.Tensor) -> torch.Tensor:
            return fp8.matmul_2d(x, w, ws, [128, 128])

        def prequant(w: torch.Tensor, ws: torch.Tensor) -> torch.Tensor:
            return fp8.w8a8_block_fp8_matmul(q, w, s, ws, [128, 128], torch.bfloat16)

        def after_empty_kernel(w: torch.Tensor, ws: torch.Tensor) -> torch.Tensor:
            _empty_kernel[(1,)](flag, launch_pdl=True)
            return prequant(w, ws)

        shape = f"dense M={m} {n}x{k}"
        _row(f"{shape} ours fused", bench(with_weights(fused), n * k), n * k)
        _row(f"{shape} ours prequant", bench(with_weights(prequant), n * k), n * k)
        _row(f"{shape} empty kernel + prequant", bench(with_weights(after_empty_kernel), n * k), n * k)


def _time_projection(fp8: ModuleType, name: str, experts: int, n: int, k: int) -> None:
    w, ws = _random_codes(experts, n, k)
    for tokens in TOKENS:
        touched = top_k_routing(tokens, experts).unique().numel() * n * k

        def batched_call():
            a = torch.randn(tokens * TOP_K, k, device="cuda", dtype=torch.bfloat16)
            ids = top_k_routing(tokens, experts)
            return lambda: fp8.matmul_batched(a, w, ws, ids, [128, 128])

        def quantization_alone():
            a = torch.randn(tokens * TOP_K, k, device="cuda", dtype=torch.bfloat16)
            return lambda: fp8.fp8_act_quant(a, 128)

        def read_call(block_n: int, block_k: int, warps: int):
            def make():
                ids = top_k_routing(tokens, experts).unique().to(torch.int32)
                out = torch.empty(ids.numel(), n, device="cuda")
                grid = (n // block_n, ids.numel())
                return lambda: _read_experts_kernel[grid](
                    w, ids, out, n, k, BLOCK_N=block_n, BLOCK_K=block_k, num_warps=warps, launch_pdl=True
                )

            return make

        shape = f"{name} T={tokens}"
        _row(f"{shape} ours batched", bench(batched_call, touched), touched)
        _row(f"{shape} fp8_act_quant of its rows", bench(quantization_alone, _TINY_CALL_BYTES))
        for block_n, block_k, warps in READ_TILES:
            if n % block_n == 0 and k % block_k == 0:
                ms = bench(read_call(block_n, block_k, warps), touched)
                _row(f"{shape} read [{block_n}, {block_k}] {warps} warps", ms, touched)


def main() -> None:
    if not torch.cuda.is_available():
        raise SystemExit("decode_floor.py times GPU kernels: it needs a CUDA GPU")
    fp8 = load_package()
    print(f"{'case':44} {'us':>8} {'TB/s':>6}  (TB/s: weight bytes; MoE: the touched experts')")
    for n, k in DENSE_SHAPES:
        _time_dense(fp8, n, k)
    for name, (experts, n, k) in MOE_SHAPES.items():
        _time_projection(fp8, name, experts, n, k)
        torch.cuda.empty_cache()
    out = torch.empty(1, device="cuda")
    _row("empty kernel", bench(lambda: lambda: _empty_kernel[(1,)](out, launch_pdl=True), _TINY_CALL_BYTES))


if __name__ == "__main__":
    main()
