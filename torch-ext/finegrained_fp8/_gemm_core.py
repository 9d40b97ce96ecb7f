"""The GEMM main loop every matmul kernel shares (Triton device functions).

Orientation: the accumulator is ``[BLOCK_N weight rows, BLOCK_M tokens]`` (weights on the 64-row
side of Hopper's FP8 wgmma, so the token side can be as narrow as 16; the other orientation was
slower at decode, docs/DESIGN.md). Callers pass row pointers:
``w_rows`` [BLOCK_N, 1] and ``x_rows`` [BLOCK_M, 1] point at the first element of each row (K is
contiguous), ``ws_rows`` [BLOCK_N] and ``xs_rows`` [BLOCK_M] at each row's first scale. Rows past an
edge must already point at valid rows (callers wrap or clamp them) so that loads need no row mask.
"""

import triton
import triton.language as tl

from ._quant import decode_scale


@triton.jit
def tile_coordinates(pid, tiles_n, tiles_m, GROUP_N: tl.constexpr):
    """Map a flat program id to (weight tile, token tile); GROUP_N consecutive programs share a token
    tile band and walk GROUP_N weight tiles, so both operands are reused from L2."""
    programs_per_group = GROUP_N * tiles_m
    first_n = (pid // programs_per_group) * GROUP_N
    group_width = min(tiles_n - first_n, GROUP_N)
    pid_n = first_n + (pid % programs_per_group) % group_width
    pid_m = (pid % programs_per_group) // group_width
    return pid_n, pid_m


@triton.jit
def _load_k_block(rows, offs_k, K, EVEN_K: tl.constexpr):
    if EVEN_K:
        block = tl.load(rows + offs_k[None, :])
    else:
        block = tl.load(rows + offs_k[None, :], mask=offs_k[None, :] < K, other=0.0)
    return block


@triton.jit
def _load_token_block(rows, row_ok, offs_k, K, EVEN_K: tl.constexpr, MASK_ROWS: tl.constexpr):
    """A [BLOCK_M, BLOCK_K] block of token rows. MASK_ROWS: rows that are not ``row_ok`` read nothing
    and give zeros: at M = 1 the repeated rows' loads cost more than the bytes they move, while with
    every row valid the mask costs a few percent, hence the flag (docs/DESIGN.md, "Plain-Triton GEMMs")."""
    if MASK_ROWS:
        mask = row_ok[:, None]
        if not EVEN_K:
            mask = mask & (offs_k[None, :] < K)
        block = tl.load(rows + offs_k[None, :], mask=mask, other=0.0)
    else:
        block = _load_k_block(rows, offs_k, K, EVEN_K)
    return block


@triton.jit
def _k_block_scales(ws_rows, xs_rows, kb, valid, stride_wsk, stride_xsk, WS_UE8M0: tl.constexpr):
    """The weight scales [BLOCK_N] and token scales [BLOCK_M] of K block ``kb`` (per-tensor mode: kb = 0,
    the one scale of each row); nothing is read unless ``valid``."""
    w_scale = decode_scale(tl.load(ws_rows + kb * stride_wsk, mask=valid, other=0), WS_UE8M0)
    x_scale = tl.load(xs_rows + kb * stride_xsk, mask=valid, other=0.0)
    return w_scale, x_scale


@triton.jit
def scaled_tile_product(
    w_rows,
    ws_rows,
    x_rows,
    x_row_ok,
    xs_rows,
    K,
    kb_start,
    kb_end,
    stride_wsk,
    stride_xsk,
    BLOCK_N: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_K: tl.constexpr,
    PER_K_SCALE: tl.constexpr,
    WS_UE8M0: tl.constexpr,
    EVEN_K: tl.constexpr,
    MASK_X_ROWS: tl.constexpr,
):
    """``sum over K blocks [kb_start, kb_end) of dequant(w) @ dequant(x).T`` as a float32 [BLOCK_N, BLOCK_M].

    PER_K_SCALE (block mode): each K block is a fresh FP8 dot product scaled by its weight and
    activation scales, then added in float32 (DeepSeek-V3 numerics). Otherwise (per-tensor mode):
    one FP8 dot accumulates over all of K and the scales are applied once at the end.
    x rows are e4m3 codes with scales at ``xs_rows`` (one per K block, or one per row in per-tensor
    mode); with MASK_X_ROWS, rows where ``x_row_ok`` [BLOCK_M] is false are not read (zeros).
    Block mode loads each K block's scales one step ahead, while the block before it multiplies:
    Triton's pipeliner only prefetches the dot operands, so a scale loaded in its own step would hold
    every step for a load's latency. Callers quantize first (docs/DESIGN.md, "Quantization stays a
    separate launch").
    """
    acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
    if PER_K_SCALE:
        any_block = kb_start < kb_end
        w_scale, x_scale = _k_block_scales(ws_rows, xs_rows, kb_start, any_block, stride_wsk, stride_xsk, WS_UE8M0)
    for kb in range(kb_start, kb_end):
        offs_k = kb * BLOCK_K + tl.arange(0, BLOCK_K)
        w = _load_k_block(w_rows, offs_k, K, EVEN_K)
        x = _load_token_block(x_rows, x_row_ok, offs_k, K, EVEN_K, MASK_X_ROWS)
        if PER_K_SCALE:
            next_kb = tl.minimum(kb + 1, kb_end - 1)
            w_next, x_next = _k_block_scales(ws_rows, xs_rows, next_kb, True, stride_wsk, stride_xsk, WS_UE8M0)
            acc += tl.dot(w, tl.trans(x)) * (w_scale[:, None] * x_scale[None, :])
            w_scale, x_scale = w_next, x_next
        else:
            acc = tl.dot(w, tl.trans(x), acc, max_num_imprecise_acc=BLOCK_K)
    if not PER_K_SCALE:
        w_scale, x_scale = _k_block_scales(ws_rows, xs_rows, 0, True, stride_wsk, stride_xsk, WS_UE8M0)
        acc = acc * (w_scale[:, None] * x_scale[None, :])
    return acc
