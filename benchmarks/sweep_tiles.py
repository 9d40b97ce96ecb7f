#!/usr/bin/env python3
"""Tile-configuration sweeps for the dense GEMM (GPU only): how the shipped choices of
``_tiles.gemm_tiles`` (plain-Triton kernel) and ``_tiles.wgmma_tiles`` (Hopper Gluon kernel, with
``--wgmma``) were made. Prints the median time of each candidate next to the shipped one."""

from __future__ import annotations

import itertools
import sys
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from run import DENSE_SHAPES, bench, load_package, random_weight

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


WGMMA_CASES = [(m, n, k) for m in (128, 256, 1024, 4096, 8192) for n, k in DENSE_SHAPES]


def wgmma_candidates(tiles_type):
    for stages in (3, 4, 5, 6):
        yield tiles_type(128, 128, stages, 1, 168)
        yield tiles_type(64, 128, stages, 2, 128)
        for per_sm in (2, 3):
            yield tiles_type(64, 64, stages, per_sm, 80)


def sweep_wgmma(fp8) -> None:
    wgmma = sys.modules[f"{fp8.__name__}._wgmma"]
    tiles_mod = sys.modules[f"{fp8.__name__}._tiles"]
    for m, n, k in WGMMA_CASES:
        w, ws = random_weight(n, k, "cuda")
        q, s = fp8.fp8_act_quant(torch.randn(m, k, device="cuda", dtype=torch.bfloat16), 128)
        out = torch.empty(m, n, device="cuda", dtype=torch.bfloat16)
        flops = 2 * m * n * k
        shipped = tiles_mod.wgmma_tiles(m, k, n, q.device)
        base = bench(lambda: lambda: wgmma._launch(q, w, s, ws, out), n * k)
        line = f"M={m} N={n} K={k}: shipped {shipped} {flops / base / 1e9:.0f} TF |"
        for t in wgmma_candidates(type(shipped)):
            ms = bench(lambda t=t: lambda: wgmma._launch(q, w, s, ws, out, tiles=t), n * k)
            line += f" {t.block_m}x{t.block_n}/{t.stages}/{t.programs_per_sm} {flops / ms / 1e9:.0f}"
        print(line, flush=True)


def main() -> None:
    fp8 = load_package()
    if "--wgmma" in sys.argv:
        sweep_wgmma(fp8)
        return
    dense = sys.modules[f"{fp8.__name__}.dense"]
    tiles_mod = sys.modules[f"{fp8.__name__}._tiles"]
    for m, n, k in CASES:
        w, ws = random_weight(n, k, "cuda")
        x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
        q, s = fp8.fp8_act_quant(x, 128)
        out = torch.empty(m, n, device="cuda", dtype=torch.bfloat16)
        shipped = tiles_mod.gemm_tiles(m, n, k, 128, x.device)
        ref = fp8.w8a8_block_fp8_matmul(q, w, s, ws, [128, 128], torch.bfloat16)
        base = bench(lambda: lambda: dense.launch_gemm(w, ws, q, s, out, dense.Scaling(128, 128), shipped), n * k)
        results = []
        for over, split_mult in candidates(m):
            t = replace(shipped, **over)
            k_blocks = -(-k // 128)
            split = max(1, min(k_blocks // 2, shipped.split_k * split_mult))
            per = -(-k_blocks // split)
            t = replace(t, split_k=-(-k_blocks // per), k_blocks_per_split=per)
            try:
                ms = bench(lambda t=t: lambda: dense.launch_gemm(w, ws, q, s, out, dense.Scaling(128, 128), t), n * k)
                dense.launch_gemm(w, ws, q, s, out, dense.Scaling(128, 128), t)
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
