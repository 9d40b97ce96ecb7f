#!/usr/bin/env python3
"""Tile-configuration sweep for the dense GEMM (GPU only): how the shipped choice of
``_tiles.gemm_tiles`` was made. Prints the median time of each candidate next to the shipped one."""

from __future__ import annotations

import itertools
import sys
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from run import bench, load_package, random_weight

CASES = [
    (16, 18432, 7168),
    (16, 7168, 18432),
    (128, 18432, 7168),
    (128, 7168, 18432),
    (128, 24576, 1536),
    (4096, 18432, 7168),
]


def candidates(m: int):
    if m <= 64:
        for bn, warps, stages, split_mult in itertools.product((64, 128), (4,), (4, 6), (1, 2, 4)):
            yield {"block_n": bn, "num_warps": warps, "num_stages": stages}, split_mult
    else:
        for bn, bm, warps, stages, split_mult in itertools.product(
            (64, 128, 256), (64, 128, 256), (4, 8), (3, 4), (1, 2)
        ):
            if bn * bm <= 128 * 256 and bm <= m:
                yield {"block_n": bn, "block_m": bm, "num_warps": warps, "num_stages": stages}, split_mult


def main() -> None:
    fp8 = load_package()
    dense = sys.modules[f"{fp8.__name__}.dense"]
    tiles_mod = sys.modules[f"{fp8.__name__}._tiles"]
    for m, n, k in CASES:
        w, ws = random_weight(n, k, "cuda")
        x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
        q, s = fp8.fp8_act_quant(x, 128)
        out = torch.empty(m, n, device="cuda", dtype=torch.bfloat16)
        shipped = tiles_mod.gemm_tiles(m, n, k, 128, x.device)
        ref = fp8.w8a8_block_fp8_matmul(q, w, s, ws, [128, 128], torch.bfloat16)
        base = bench(lambda: lambda: dense.launch_gemm(w, ws, q, s, out, (128, 128), shipped), n * k)
        results = []
        for over, split_mult in candidates(m):
            t = replace(shipped, **over)
            k_blocks = -(-k // 128)
            split = max(1, min(k_blocks // 2, shipped.split_k * split_mult))
            per = -(-k_blocks // split)
            t = replace(t, split_k=-(-k_blocks // per), k_blocks_per_split=per)
            try:
                ms = bench(lambda t=t: lambda: dense.launch_gemm(w, ws, q, s, out, (128, 128), t), n * k)
                dense.launch_gemm(w, ws, q, s, out, (128, 128), t)
                bad = not torch.allclose(out.float(), ref.float(), rtol=1e-2, atol=1e-2 * ref.abs().max().item())
            except Exception as e:  # a candidate that does not compile (resources) is skipped
                print(f"  skip {t}: {type(e).__name__}")
                continue
            results.append((ms, t, bad))
        results.sort(key=lambda r: r[0])
        flops = 2 * m * n * k
        print(
            f"M={m} N={n} K={k}: shipped {base:.4f} ms ({flops / base / 1e9:.0f} TFLOPS, {n * k / base / 1e9:.2f} TB/s)"
        )
        for ms, t, bad in results[:5]:
            print(
                f"   {ms:.4f} ms {flops / ms / 1e9:6.0f} TF {n * k / ms / 1e9:5.2f} TB/s "
                f"bn={t.block_n} bm={t.block_m} w={t.num_warps} st={t.num_stages} split={t.split_k}"
                + ("  WRONG" if bad else "")
            )


if __name__ == "__main__":
    main()
