"""Tile configurations, chosen from shapes alone (no runtime autotuning: safe in CUDA graphs and
``torch.compile`` traces, and reproducible).

The GEMM kernels put weight rows on the tile's first axis (``BLOCK_N``) and tokens on the second
(``BLOCK_M``): with few tokens that keeps the weights on the 64-row side of Hopper's FP8 wgmma,
and the token tile can be as narrow as 16.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ._device import device_facts, multiprocessor_count
from ._launch import cdiv

# Every split-K slice streams at least this many K blocks, so the pipeline has room to fill.
_MIN_K_BLOCKS_PER_SPLIT = 4
# Up to this many tokens the GEMM streams weights (memory-bound); above it, it is compute-bound.
DECODE_MAX_M = 64
# Up to this many tokens, where the 64 x 128 tiles already give every SM a program, 64 x 64 tiles
# with 3 stages are faster; where they do not, split-K over 64 x 128 tiles stays ahead.
_NARROW_MAX_M = 256
_NARROW_SHAPE = (64, 64, 4, 3)
# Pipeline depth of the weight-streaming tiles, each stage (block_n + block_m) x block_k bytes of
# shared memory. Expert GEMMs take one stage less than dense ones: their grids hold more programs
# than the SMs fit at once, and with 16-token tiles four fit an SM at 5 stages where three fit at 6
# (docs/DESIGN.md, "Plain-Triton GEMMs").
_DENSE_DECODE_STAGES = 6
_EXPERT_DECODE_STAGES = 5


@dataclass(frozen=True)
class GemmTiles:
    block_n: int  # weight rows per program
    block_m: int  # tokens per program
    block_k: int  # K per step; equals the scale block along K in block mode
    num_warps: int
    num_stages: int
    split_k: int  # programs along K (1: no split)
    k_blocks_per_split: int
    group_n: int  # weight tiles that consecutive programs share (L2 reuse)


def _tile_shape(m: int, decode_stages: int = _DENSE_DECODE_STAGES) -> tuple[int, int, int, int]:
    """(block_m, block_n, num_warps, num_stages) for ``m`` tokens sharing one weight matrix;
    ``decode_stages`` is the pipeline depth where they stream the weights."""
    if m <= DECODE_MAX_M:
        # Stream the weights: narrow weight tiles and a deep pipeline, token tile just wide enough.
        return (16 if m <= 16 else (32 if m <= 32 else 64)), 64, 4, decode_stages
    # Best of benchmarks/sweep_tiles.py at M = 128 and 4096.
    return 64, 128, 4, 4


def _stages_that_fit(stages: int, stage_bytes: int, shared_memory: int) -> int:
    """At most ``stages`` pipeline stages, as many as keep ``stages * stage_bytes`` within the device's
    shared memory per program, and at least 2. Counting every stage whole fits any Triton backend (some
    keep one stage fewer in shared memory); on Hopper and Blackwell nothing the policy picks is cut."""
    return max(2, min(stages, shared_memory // stage_bytes))


def _gemm_tiles(
    shape: tuple[int, int, int, int], block_k: int, k_blocks: int, split: int, device: torch.device
) -> GemmTiles:
    """GemmTiles from a (block_m, block_n, num_warps, num_stages) shape and a split of ``k_blocks``,
    with the stages cut to the shared memory of ``device``. A stage holds one e4m3 operand tile of each
    side: (block_n + block_m) x block_k bytes."""
    block_m, block_n, num_warps, num_stages = shape
    per_split = cdiv(k_blocks, split)
    shared_memory = device_facts(device).shared_memory_per_block
    return GemmTiles(
        block_n=block_n,
        block_m=block_m,
        block_k=block_k,
        num_warps=num_warps,
        num_stages=_stages_that_fit(num_stages, (block_n + block_m) * block_k, shared_memory),
        split_k=cdiv(k_blocks, per_split),
        k_blocks_per_split=per_split,
        group_n=8,
    )


def gemm_tiles(m: int, n: int, k: int, block_k: int, device: torch.device) -> GemmTiles:
    """Tiles for ``out[m, n] = x[m, k] @ w[n, k].T`` with scales per ``block_k`` along K."""
    decode = m <= DECODE_MAX_M
    shape = _tile_shape(m)
    tiles = cdiv(n, shape[1]) * cdiv(m, shape[0])
    target_programs = multiprocessor_count(device) * (2 if decode else 1)
    if not decode and m <= _NARROW_MAX_M and tiles >= target_programs:
        shape = _NARROW_SHAPE
        tiles = cdiv(n, shape[1]) * cdiv(m, shape[0])
    k_blocks = cdiv(k, block_k)
    split = max(1, min(cdiv(target_programs, tiles), k_blocks // _MIN_K_BLOCKS_PER_SPLIT))
    return _gemm_tiles(shape, block_k, k_blocks, split, device)


# The Gluon kernel's tiles (``wgmma_tiles``, which gives the measurements): dense calls take 64 x 64
# tiles up to this many tokens, then 64 x 128 tiles up to the next bound ...
_WGMMA_NARROW_N_MAX_M = 128
_WGMMA_DENSE_NARROW_MAX_M = 192
# ... and grouped calls 64 x 128 tiles up to this many rows per expert, where K is at most this.
_WGMMA_GROUPED_NARROW_MAX_M = 256
_WGMMA_GROUPED_NARROW_MAX_K = 1024


@dataclass(frozen=True)
class WgmmaTiles:
    block_m: int  # tokens per tile: one math warpgroup per 64 (plus one loader warp)
    block_n: int  # weight rows per tile: 128 (a weight-scale block) or 64 (half of one)
    stages: int  # shared-memory ring slots
    programs_per_sm: int  # persistent programs per SM
    # Per thread, so that programs_per_sm programs fit an SM's 64K registers; a launch reserves them for
    # whole warpgroups (the loader's one warp counts as four): 168 is the most for 128-token tiles.
    max_registers: int


def wgmma_tiles(m: int, k: int, dense_n: int | None, device: torch.device) -> WgmmaTiles | None:
    """Tiles of the Hopper Gluon GEMM (``_wgmma``) for ``m`` tokens (grouped calls: the average rows
    per expert), or None where the plain-Triton kernel is faster (decode sizes stream weights
    through narrow tiles). ``dense_n``: the weight rows of a dense matmul; None for grouped calls.

    Dense calls of up to 128 tokens take 64 x 64 tiles (three programs per SM where there are tiles
    for three), up to 192 tokens 64 x 128 tiles (two per SM); grouped calls 64 x 128 tiles up to 256
    rows per expert where K <= 1024; everything else 128 x 128 tiles, one program per SM, 4 ring slots
    (their math warpgroups take the K blocks two at a time, which needs the fourth). The sweeps behind
    these bounds: docs/DESIGN.md, "The Gluon Hopper GEMM".
    """
    if m <= DECODE_MAX_M:
        return None
    if dense_n is not None and m <= _WGMMA_NARROW_N_MAX_M:
        tiles = cdiv(m, 64) * cdiv(dense_n, 64)
        per_sm = 3 if tiles >= 3 * multiprocessor_count(device) else 2
        return WgmmaTiles(block_m=64, block_n=64, stages=4, programs_per_sm=per_sm, max_registers=80)
    if dense_n is not None:
        narrow = m <= _WGMMA_DENSE_NARROW_MAX_M
    else:
        narrow = m <= _WGMMA_GROUPED_NARROW_MAX_M and k <= _WGMMA_GROUPED_NARROW_MAX_K
    if narrow:
        return WgmmaTiles(block_m=64, block_n=128, stages=3, programs_per_sm=2, max_registers=128)
    return WgmmaTiles(block_m=128, block_n=128, stages=4, programs_per_sm=1, max_registers=168)


def expert_tiles(rows: int, experts: int, k: int, block_k: int, device: torch.device) -> GemmTiles:
    """Tiles for the expert GEMMs: ``rows`` routed rows spread over ``experts`` weight matrices.

    The routing is unknown on the host (the grid must not depend on it), so the token tile is sized
    for the average rows per touched expert; no split-K (the experts already give enough programs).
    """
    rows_per_expert = cdiv(rows, max(1, min(rows, experts)))
    if rows_per_expert <= DECODE_MAX_M:
        shape = _tile_shape(rows_per_expert, _EXPERT_DECODE_STAGES)
    else:
        # Best of benchmarks/sweep_tiles.py at 4096 tokens, top-8, DeepSeek-V3 and Qwen3-30B experts.
        shape = (64, 256, 8, 3)
    return _gemm_tiles(shape, block_k, cdiv(k, block_k), 1, device)
