"""Hopper (sm_90) block-scaled FP8 GEMM in Gluon, for prefill sizes.

Why a second kernel: with ``tl.dot`` every 128-wide K block's fresh FP8 product must be waited for
before it is scaled, and Triton 3.6 then leaves the tensor cores idle between blocks. Here the pipeline is
explicit: a loader warp's TMA copies fill a ring of ``STAGES`` shared-memory slots, each ready slot
feeds one ``wgmma`` per math warpgroup (one or two, 64 token rows each, each its own partition),
and the next copies are issued while that wgmma runs (with two math warpgroups, each keeps two K
blocks' wgmmas in flight). The numerics are those of the plain-Triton kernel (``_gemm_core``): a
fresh FP8 product per K block, scaled by its activation and weight scales and added in float32.

Gluon does not run under Triton's interpreter, so the plain-Triton kernel is the twin CI tests;
a GPU test pins the two to each other. Gluon launches cannot be traced by torch.compile, so traced
calls reach this kernel through an opaque custom op (``gemm_wgmma``). The measurements behind its
choices: docs/DESIGN.md, "The Gluon Hopper GEMM".
"""

from __future__ import annotations

import functools

import torch
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (
    fence_async_shared,
    mbarrier,
    tma,
    warpgroup_mma,
    warpgroup_mma_wait,
)
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

from ._device import device_facts, multiprocessor_count
from ._launch import cdiv, is_plain_eager_call, launch_kernel, next_power_of_two
from ._ops import add_op_namespace_prefix
from ._quant import decode_scale
from ._scaling import Scaling
from ._tiles import WgmmaTiles, wgmma_tiles

# The one block shape the kernel serves: 128 weight rows share one scale per K block.
BLOCK_SHAPE = (128, 128)
# TMA moves rows whose start and stride are multiples of 16 bytes.
_TMA_ALIGN = 16
# Output tiles are taken GROUP_M token tiles at a time, across the weight tiles (L2 reuse).
_GROUP_M = 8
# Token rows per math warpgroup: the M of one wgmma.
_GROUP_ROWS = gl.constexpr(64)
# Output dtypes stored through a TMA copy from shared memory (see _store_tile).
_TMA_OUTPUT_DTYPES = {torch.bfloat16: gl.bfloat16, torch.float16: gl.float16}
# Grouped calls store through TMA only up to this K: beyond it the TMA stores were no faster than
# stores from registers, and slower on long K.
_GROUPED_TMA_STORE_MAX_K = 1024
# The loader warp only computes addresses, but the per-tile expert lookup of grouped calls spills in
# fewer registers (over 256 experts), and more ran slower.
_LOADER_REGISTERS = gl.constexpr(40)
# The second math warpgroup of 128-token tiles (a worker partition; the first is the default one and
# gets what is left of the launch's registers, 240 here): two products in flight need 64 x 128 float32
# values each besides the accumulator (``_k_blocks_in_pairs``); with 208 ptxas spilled, 216 and up not.
_SECOND_MATH_REGISTERS = gl.constexpr(224)
# Dense calls on 64 x 64 tiles whose last token tile would miss at least this many rows of x read a
# copy of x padded with zero rows to whole tiles (see ``_whole_token_tiles``).
_PAD_MIN_MISSING_ROWS = 32
# Triton 3.9 removed the TMA copies' first names (async_copy_global_to_shared, async_copy_shared_to_global)
# for async_load and async_store; Triton 3.6 has only the first names.
_tma_load = getattr(tma, "async_load", None) or tma.async_copy_global_to_shared
_tma_store = getattr(tma, "async_store", None) or tma.async_copy_shared_to_global


@gluon.jit
def _add(a, b):
    return a + b


@gluon.jit
def _expert_rows(pid_m, ends_ptr, num_experts, BLOCK_M: gl.constexpr, BLOCK_E: gl.constexpr):
    """(expert, first row, end row) of token tile ``pid_m`` when expert e owns rows [ends[e - 1],
    ends[e]) cut into tiles of BLOCK_M (the Gluon form of ``moe._expert_tile``: the tile table is
    a prefix sum of per-expert tile counts, rebuilt from one vector load). Surplus tiles get
    expert >= num_experts.

    Every warp of the partition holds all BLOCK_E experts (8 per thread over 256), so the scans and
    sums stay within a warp: spread over the partition's warps they would cross them through shared
    memory and barriers, once per tile in every partition. (The Triton twin, ``moe._expert_tile``,
    cannot be shared: Gluon and Triton device functions do not call each other.)"""
    layout: gl.constexpr = gl.BlockedLayout([BLOCK_E // 32], [32], [gl.num_warps()], [0])
    e = gl.arange(0, BLOCK_E, layout=layout)
    valid = e < num_experts
    ends = gl.load(ends_ptr + e, mask=valid, other=0).to(gl.int32)
    starts = gl.load(ends_ptr + e - 1, mask=valid & (e > 0), other=0).to(gl.int32)
    tiles = gl.where(valid, gl.cdiv(gl.maximum(ends - starts, 0), BLOCK_M), 0)
    tile_ends = gl.associative_scan(tiles, 0, _add)
    expert = gl.sum((tile_ends <= pid_m).to(gl.int32), 0)
    mine = e == expert
    first_tile = gl.sum(gl.where(mine, tile_ends - tiles, 0), 0)
    start = gl.sum(gl.where(mine, starts, 0), 0) + (pid_m - first_tile) * BLOCK_M
    return expert, start, gl.sum(gl.where(mine, ends, 0), 0)


@gluon.jit
def _token_tiles(M, num_experts, BLOCK_M: gl.constexpr, BLOCK_E: gl.constexpr):
    """Token tiles: M rows cut into BLOCK_M (dense), or an upper bound for any routing of M rows over
    ``num_experts`` experts, each expert's last tile partial (grouped, BLOCK_E > 0)."""
    tiles_m = gl.cdiv(M, BLOCK_M)
    if BLOCK_E > 0:
        tiles_m += num_experts
    return tiles_m


@gluon.constexpr_function
def _has_half_tiles(block_m: int, block_n: int, block_e: int) -> bool:
    """Whether short last waves are cut in half tiles (``_split_tail``): dense calls on 128 x 128 tiles
    (a half tile's two warpgroups each take 64 of the 128 weight rows)."""
    return block_e == 0 and block_m == block_n == 2 * _GROUP_ROWS.value


@gluon.jit
def _split_tail(full_tiles, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, BLOCK_E: gl.constexpr):
    """How many of the last whole tiles are cut in two half tiles (see ``_tile_origin``): dense
    128 x 128 tiles only, the R = full_tiles mod programs tiles of a last wave that would leave more
    than half of the programs idle (2R <= programs). Their 2R halves then share out the last wave."""
    tail = 0
    if _has_half_tiles(BLOCK_M, BLOCK_N, BLOCK_E):
        tail = full_tiles % gl.num_programs(0)
        tail = gl.where(2 * tail <= gl.num_programs(0), tail, 0)
    return tail


@gluon.jit
def _tile_origin(
    tile,
    M,
    N,
    ends_ptr,
    num_experts,
    BLOCK_M: gl.constexpr,
    BLOCK_N: gl.constexpr,
    GROUP_M: gl.constexpr,
    BLOCK_E: gl.constexpr,
):
    """(expert, first row, end row, weight tile, is_half) of output tile ``tile``. GROUP_M consecutive
    tiles walk the weight tiles of GROUP_M token tiles, so both operands stay in L2. Dense (BLOCK_E = 0):
    M rows, one expert. Grouped: M bounds the token tiles of any routing (see ``_expert_rows``).

    Dense 128-row tiles of a short last wave are cut in halves of _GROUP_ROWS rows (``_split_tail``:
    the last 2R tile numbers are the top and bottom halves of the last R whole tiles), and each math
    warpgroup computes half of a half tile's columns. Grouped calls have no half tiles (they were
    slower there).
    """
    tiles_m = _token_tiles(M, num_experts, BLOCK_M, BLOCK_E)
    whole = tile
    which_half = 0
    is_half = False
    if _has_half_tiles(BLOCK_M, BLOCK_N, BLOCK_E):
        full_tiles = tiles_m * gl.cdiv(N, BLOCK_N)
        split_from = full_tiles - _split_tail(full_tiles, BLOCK_M, BLOCK_N, BLOCK_E)
        is_half = tile >= split_from
        past = gl.maximum(tile - split_from, 0)  # 2 * (whole tile - split_from) + which half
        whole = gl.minimum(tile, split_from) + past // 2
        which_half = past % 2
    per_group = GROUP_M * gl.cdiv(N, BLOCK_N)
    first_m = (whole // per_group) * GROUP_M
    group_rows = min(tiles_m - first_m, GROUP_M)
    pid_m = first_m + (whole % per_group) % group_rows
    pid_n = (whole % per_group) // group_rows
    if BLOCK_E > 0:
        expert, start, end = _expert_rows(pid_m, ends_ptr, num_experts, BLOCK_M, BLOCK_E)
    else:
        expert, start, end = 0, pid_m * BLOCK_M + which_half * _GROUP_ROWS, M
    return expert, start, end, pid_n, is_half


@gluon.jit
def _tile_count(M, N, num_experts, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, BLOCK_E: gl.constexpr):
    """Output tiles: whole ones, plus one for each that ``_split_tail`` cuts in two."""
    full_tiles = _token_tiles(M, num_experts, BLOCK_M, BLOCK_E) * gl.cdiv(N, BLOCK_N)
    return full_tiles + _split_tail(full_tiles, BLOCK_M, BLOCK_N, BLOCK_E)


@gluon.jit
def _has_work(expert, start, end, num_experts, BLOCK_E: gl.constexpr):
    """Whether a tile has rows to compute: grouped surplus tiles have none, and neither have dense
    halves past M (grouped tiles' rows are never empty, so the loader need not keep ``end``)."""
    if BLOCK_E > 0:
        work = expert < num_experts
    else:
        work = start < end
    return work


@gluon.jit
def _ring_slot(step, STAGES: gl.constexpr):
    """(slot, barrier phase) of the ``step``-th K block counted over all tiles: the ring is used
    round-robin, and a slot's barriers complete one phase per round."""
    return step % STAGES, (step // STAGES) & 1


@gluon.jit
def _load_partition(operands, GROUP_M: gl.constexpr, BLOCK_E: gl.constexpr):
    """One warp: TMA copies of every K block of this program's tiles into the ring, as slots free up
    (a half tile's rows fill the first half of each slot; see ``_tile_origin``).
    ``operands``: the kernel's ``load_operands``."""
    x_desc, x_half_desc, w_desc, x_ring, w_ring, ready, empty, M, N, K, ends_ptr, num_experts = operands
    STAGES: gl.constexpr = x_ring.type.shape[0]
    BLOCK_M: gl.constexpr = x_desc.block_type.shape[0]
    BLOCK_K: gl.constexpr = x_desc.block_type.shape[1]
    BLOCK_N: gl.constexpr = w_desc.block_type.shape[0]
    HALF_TILES: gl.constexpr = _has_half_tiles(BLOCK_M, BLOCK_N, BLOCK_E)
    k_blocks = gl.cdiv(K, BLOCK_K)
    num_tiles = _tile_count(M, N, num_experts, BLOCK_M, BLOCK_N, BLOCK_E)
    step = 0  # K blocks loaded so far, over all tiles: selects the slot and its phase
    for tile in range(gl.program_id(0), num_tiles, gl.num_programs(0)):
        expert, start, end, pid_n, is_half = _tile_origin(
            tile, M, N, ends_ptr, num_experts, BLOCK_M, BLOCK_N, GROUP_M, BLOCK_E
        )
        # Expert e's weight rows start at row e * N of the (E * N, K) view.
        w_row = expert * N + pid_n * BLOCK_N
        for kb in range(k_blocks * _has_work(expert, start, end, num_experts, BLOCK_E)):
            slot, phase = _ring_slot(step, STAGES)
            # Barriers start out as if a phase-1 wait had completed: the first round finds every slot free.
            mbarrier.wait(empty.index(slot), phase ^ 1)
            bar = ready.index(slot)
            if HALF_TILES and is_half:
                mbarrier.expect(bar, x_half_desc.block_type.nbytes + w_desc.block_type.nbytes)
                x_slot = x_ring.index(slot).slice(0, _GROUP_ROWS)
                _tma_load(x_half_desc, [start, kb * BLOCK_K], bar, x_slot)
            else:
                mbarrier.expect(bar, x_desc.block_type.nbytes + w_desc.block_type.nbytes)
                _tma_load(x_desc, [start, kb * BLOCK_K], bar, x_ring.index(slot))
            _tma_load(w_desc, [w_row, kb * BLOCK_K], bar, w_ring.index(slot))
            step += 1


@gluon.jit
def _row_scales(xs_ptr, first, end, M, stride_xsm, layout: gl.constexpr):
    """Pointers to the activation scales of the _GROUP_ROWS rows from ``first`` (rows at or past
    ``end`` or M point at the last row before them: their results are never stored)."""
    rows = first + gl.arange(0, _GROUP_ROWS, layout=layout)
    return xs_ptr + gl.maximum(gl.minimum(rows, gl.minimum(end, M) - 1), 0).to(gl.int64) * stride_xsm


@gluon.jit
def _store_rows(acc, out_ptr, first, row_end, col0, N, stride_om, num_warps: gl.constexpr):
    """Store the float32 [_GROUP_ROWS, BLOCK_N] ``acc`` at rows [first, row_end) and columns [col0, N),
    converted through shared memory to a row-major layout (each thread writes 8 consecutive columns)."""
    BLOCK_N: gl.constexpr = acc.type.shape[1]
    out_layout: gl.constexpr = gl.BlockedLayout([1, 8], [4, 8], [num_warps, 1], [1, 0])
    out = gl.convert_layout(acc.to(out_ptr.dtype.element_ty), out_layout)
    rows = first + gl.arange(0, _GROUP_ROWS, layout=gl.SliceLayout(1, out_layout))
    cols = col0 + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, out_layout))
    ptrs = out_ptr + rows.to(gl.int64)[:, None] * stride_om + cols[None, :]
    gl.store(ptrs, out, mask=(rows < row_end)[:, None] & (cols < N)[None, :])


@gluon.jit
def _store_tile(acc, out_desc, out_buf, out_ptr, first, row_end, col0, N, stride_om, BLOCK_E: gl.constexpr,
                num_warps: gl.constexpr):  # fmt: skip
    """Store ``acc`` like ``_store_rows``, through a TMA copy from ``out_buf`` (shared memory) where it
    may: the copy runs while the warpgroup goes on with its next tile. TMA clips rows at M and columns
    at N, not at an expert's end, so a grouped tile whose rows reach into the next expert's takes
    ``_store_rows``. Dense tiles past M (the second warpgroup of a last tile) store nothing."""
    if BLOCK_E > 0 and first + _GROUP_ROWS > row_end:
        _store_rows(acc, out_ptr, first, row_end, col0, N, stride_om, num_warps)
    elif first < row_end:
        tma.store_wait(0)  # the previous tile's copy has read the buffer
        out_buf.store(acc.to(out_buf.dtype))
        fence_async_shared()
        _tma_store(out_desc, [first, col0], out_buf)


@gluon.constexpr_function
def _k_blocks_in_pairs(block_m: int) -> bool:
    """Whether each math warpgroup runs the K blocks two at a time (``_tile_product``): on 128-token
    tiles, where the second math warpgroup has the registers for two products in flight. It needs 4
    ring slots (a warpgroup holding two of three would leave the loader one); on 64-token tiles pairs
    were slower."""
    return block_m == 2 * _GROUP_ROWS.value


@gluon.jit
def _start_product(ring, step, acc, X_ROW: gl.constexpr, W_ROW: gl.constexpr, WIDTH: gl.constexpr):
    """Wait until the ring slot of K block ``step`` is filled, then start its wgmma into a fresh
    product (asynchronous; ``acc`` only gives the product's layout). Returns (product, slot, x_rows,
    w_rows): rows [X_ROW, X_ROW + _GROUP_ROWS) of the slot's token tile and [W_ROW, W_ROW + WIDTH)
    of its weight tile, which the wgmma reads until it is waited for."""
    x_ring, w_ring, ready, _ = ring
    slot, phase = _ring_slot(step, x_ring.type.shape[0])
    mbarrier.wait(ready.index(slot), phase)
    x_rows = x_ring.index(slot).slice(X_ROW, _GROUP_ROWS)
    w_rows = w_ring.index(slot).slice(W_ROW, WIDTH)
    product = warpgroup_mma(x_rows, w_rows.permute((1, 0)), acc, use_acc=False, is_async=True)
    return product, slot, x_rows, w_rows


@gluon.jit
def _finish_product(acc, started, scale, empty, STILL_RUNNING: gl.constexpr):
    """``acc`` plus the product of ``started`` (what ``_start_product`` returned) scaled by ``scale``
    [_GROUP_ROWS], once its wgmma is done (the STILL_RUNNING wgmmas started after it may run on);
    its ring slot goes back to the loader as soon as the wgmma has read it."""
    product, slot, x_rows, w_rows = started
    product = warpgroup_mma_wait(STILL_RUNNING, deps=(product, x_rows, w_rows))[0]
    mbarrier.arrive(empty.index(slot), count=1)
    return acc + product * scale[:, None]


@gluon.jit
def _block_scales(scales, xs_rows, kb, WS_UE8M0: gl.constexpr):
    """Float32 [_GROUP_ROWS]: K block ``kb``'s activation scale of each token row times the weight
    tile's scale (``scales`` and ``xs_rows`` as in ``_tile_product``)."""
    _, _, stride_xsk, ws_tile, stride_wsk = scales
    return gl.load(xs_rows + kb * stride_xsk) * decode_scale(gl.load(ws_tile + kb * stride_wsk), WS_UE8M0)


@gluon.jit
def _tile_product(ring, scales, step, k_steps, first, end, M, X_ROW: gl.constexpr, W_ROW: gl.constexpr,
                  WIDTH: gl.constexpr, WS_UE8M0: gl.constexpr, num_warps: gl.constexpr):  # fmt: skip
    """One math warpgroup's float32 [_GROUP_ROWS, WIDTH] share of a tile, and the ring step after it:
    rows [X_ROW, X_ROW + _GROUP_ROWS) of the slots' token tile (token rows from ``first``) times
    rows [W_ROW, W_ROW + WIDTH) of their weight tile, over ``k_steps`` K blocks. Per K block one
    wgmma into a fresh product, then the product scaled by its token rows' and weight tile's
    scales added in float32; the slot goes back to the loader once read (by every math warpgroup).
    On 128-token tiles (``_k_blocks_in_pairs``) the wgmmas of two K blocks are started before the
    first product is scaled, so the second runs while the first is added; the additions keep their
    order, so the result is that of one block at a time.
    ``ring``: (x_ring, w_ring, ready, empty); ``scales``: (xs_ptr, stride_xsm, stride_xsk, ws_tile,
    stride_wsk), ws_tile pointing at the weight tile's first scale."""
    x_ring, _, _, empty = ring
    xs_ptr, stride_xsm, _, _, _ = scales
    acc_layout: gl.constexpr = gl.NVMMADistributedLayout(
        version=[3, 0], warps_per_cta=[num_warps, 1], instr_shape=[16, WIDTH, 32]
    )
    xs_rows = _row_scales(xs_ptr, first, end, M, stride_xsm, gl.SliceLayout(1, acc_layout))
    acc = gl.zeros((_GROUP_ROWS, WIDTH), dtype=gl.float32, layout=acc_layout)
    pairs = k_steps // 2 if _k_blocks_in_pairs(x_ring.type.shape[1]) else 0
    for pair in range(pairs):
        first_block = _start_product(ring, step, acc, X_ROW, W_ROW, WIDTH)
        second_block = _start_product(ring, step + 1, acc, X_ROW, W_ROW, WIDTH)
        first_scale = _block_scales(scales, xs_rows, 2 * pair, WS_UE8M0)
        second_scale = _block_scales(scales, xs_rows, 2 * pair + 1, WS_UE8M0)
        acc = _finish_product(acc, first_block, first_scale, empty, 1)
        acc = _finish_product(acc, second_block, second_scale, empty, 0)
        step += 2
    for kb in range(2 * pairs, k_steps):
        started = _start_product(ring, step, acc, X_ROW, W_ROW, WIDTH)
        scale = _block_scales(scales, xs_rows, kb, WS_UE8M0)
        acc = _finish_product(acc, started, scale, empty, 0)
        step += 1
    return acc, step


@gluon.jit
def _mma_partition(
    operands,
    GROUP_M: gl.constexpr,
    BLOCK_E: gl.constexpr,
    WS_UE8M0: gl.constexpr,
    TMA_STORE: gl.constexpr,
    ROW0: gl.constexpr,
    num_warps: gl.constexpr,
):
    """One math warpgroup: rows [ROW0, ROW0 + _GROUP_ROWS) of every whole token tile, and columns
    [ROW0, ROW0 + _GROUP_ROWS) of every half tile (see ``_tile_origin``; BLOCK_N = 2 * _GROUP_ROWS),
    each through ``_tile_product``. Per tile the store (with TMA_STORE a TMA copy for whole tiles, which runs on
    while the warpgroup starts the next tile), while the loader already fills the ring for the next
    tile. Each warpgroup is its own partition, so two of them synchronize only through the ring and
    one scales while the other's wgmma runs. ``operands``: the kernel's ``math_operands``."""
    (x_ring, w_ring, ready, empty, xs_ptr, ws_ptr, out_ptr, out_desc, out_bufs, M, N, K, ends_ptr, num_experts,
     stride_xsm, stride_xsk, stride_wse, stride_wsn, stride_wsk, stride_om) = operands  # fmt: skip
    BLOCK_M: gl.constexpr = x_ring.type.shape[1]
    BLOCK_K: gl.constexpr = x_ring.type.shape[2]
    BLOCK_N: gl.constexpr = w_ring.type.shape[1]
    SCALE_N: gl.constexpr = BLOCK_K  # weight scale blocks are square
    HALF_TILES: gl.constexpr = _has_half_tiles(BLOCK_M, BLOCK_N, BLOCK_E)
    ring = (x_ring, w_ring, ready, empty)
    k_blocks = gl.cdiv(K, BLOCK_K)
    num_tiles = _tile_count(M, N, num_experts, BLOCK_M, BLOCK_N, BLOCK_E)
    step = 0
    for tile in range(gl.program_id(0), num_tiles, gl.num_programs(0)):
        expert, start, end, pid_n, is_half = _tile_origin(
            tile, M, N, ends_ptr, num_experts, BLOCK_M, BLOCK_N, GROUP_M, BLOCK_E
        )
        is_work = _has_work(expert, start, end, num_experts, BLOCK_E)
        k_steps = k_blocks * is_work
        row_end = gl.where(is_work, gl.minimum(end, M), 0)
        ws_tile = ws_ptr + expert.to(gl.int64) * stride_wse + (pid_n * BLOCK_N // SCALE_N) * stride_wsn
        scales = (xs_ptr, stride_xsm, stride_xsk, ws_tile, stride_wsk)
        if HALF_TILES and is_half:
            half_acc, step = _tile_product(ring, scales, step, k_steps, start, end, M, 0, ROW0, _GROUP_ROWS,
                                           WS_UE8M0, num_warps)  # fmt: skip
            _store_rows(half_acc, out_ptr, start, row_end, pid_n * BLOCK_N + ROW0, N, stride_om, num_warps)
        else:
            first = start + ROW0
            acc, step = _tile_product(ring, scales, step, k_steps, first, end, M, ROW0, 0, BLOCK_N,
                                      WS_UE8M0, num_warps)  # fmt: skip
            if TMA_STORE:
                _store_tile(acc, out_desc, out_bufs.index(ROW0 // _GROUP_ROWS), out_ptr, first, row_end,
                            pid_n * BLOCK_N, N, stride_om, BLOCK_E, num_warps)  # fmt: skip
            else:
                _store_rows(acc, out_ptr, first, row_end, pid_n * BLOCK_N, N, stride_om, num_warps)
    if TMA_STORE:
        tma.store_wait(0)  # the last tile's copy has read its buffer before the program exits


@gluon.jit
def _gemm_wgmma_kernel(
    x_desc,
    x_half_desc,
    w_desc,
    xs_ptr,
    ws_ptr,
    out_ptr,
    out_desc,
    M,
    N,
    K,
    ends_ptr,
    num_experts,
    stride_xsm,
    stride_xsk,
    stride_wse,
    stride_wsn,
    stride_wsk,
    stride_om,
    GROUP_M: gl.constexpr,
    BLOCK_E: gl.constexpr,
    STAGES: gl.constexpr,
    WS_UE8M0: gl.constexpr,
    TMA_STORE: gl.constexpr,
    num_warps: gl.constexpr,
):
    """Persistent: each program takes output tiles [BLOCK_M tokens, BLOCK_N columns] in turn.

    x_desc: (M, K) e4m3 codes, block [BLOCK_M, BLOCK_K], and x_half_desc the same with block
    [_GROUP_ROWS, BLOCK_K] (half tiles' rows, see ``_tile_origin``; a placeholder where there are
    none); w_desc: (E * N, K) e4m3 (E = 1 for a
    dense matmul), block [BLOCK_N, BLOCK_K] (BLOCK_N = 128, a weight scale block, or 64, half of
    one). xs [m, k block] and ws [e, n block, k block] float32 scales (ws UE8M0 codes when
    WS_UE8M0) through strides; out (M, N) through ``stride_om`` and, with TMA_STORE, ``out_desc``
    (block [_GROUP_ROWS, BLOCK_N], see ``_store_tile``; without TMA_STORE a placeholder). Grouped
    (BLOCK_E > 0): rows sorted by expert, ``ends_ptr`` the inclusive cumulative row counts of the
    ``num_experts`` experts; rows past the last end are neither read for work nor written.
    Out-of-range rows and K columns are zero-filled by TMA and never stored.
    """
    BLOCK_M: gl.constexpr = x_desc.block_type.shape[0]
    BLOCK_K: gl.constexpr = x_desc.block_type.shape[1]
    BLOCK_N: gl.constexpr = w_desc.block_type.shape[0]
    MATH_GROUPS: gl.constexpr = BLOCK_M // _GROUP_ROWS  # 1 or 2
    x_ring = gl.allocate_shared_memory(x_desc.dtype, [STAGES, BLOCK_M, BLOCK_K], x_desc.layout)
    w_ring = gl.allocate_shared_memory(w_desc.dtype, [STAGES, BLOCK_N, BLOCK_K], w_desc.layout)
    ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    for i in gl.static_range(STAGES):
        mbarrier.init(ready.index(i), count=1)
        mbarrier.init(empty.index(i), count=MATH_GROUPS)
    if TMA_STORE:  # one output buffer per math warpgroup
        out_bufs = gl.allocate_shared_memory(out_desc.dtype, [MATH_GROUPS, _GROUP_ROWS, BLOCK_N], out_desc.layout)
    else:  # a placeholder, never touched
        out_bufs = x_ring
    fence_async_shared()
    math_operands = (x_ring, w_ring, ready, empty, xs_ptr, ws_ptr, out_ptr, out_desc, out_bufs, M, N, K, ends_ptr,
                     num_experts, stride_xsm, stride_xsk, stride_wse, stride_wsn, stride_wsk, stride_om)  # fmt: skip
    load_operands = (x_desc, x_half_desc, w_desc, x_ring, w_ring, ready, empty, M, N, K, ends_ptr, num_experts)
    # One partition per math warpgroup of 4 warps (ROW0: its first row in the tile), then the loader warp. Runtime
    # values travel in one tuple; constexprs must be arguments of their own (a tuple would drop their constness).
    if MATH_GROUPS == 2:
        gl.warp_specialize(
            [
                (_mma_partition, (math_operands, GROUP_M, BLOCK_E, WS_UE8M0, TMA_STORE, 0, 4)),
                (_mma_partition, (math_operands, GROUP_M, BLOCK_E, WS_UE8M0, TMA_STORE, _GROUP_ROWS, 4)),
                (_load_partition, (load_operands, GROUP_M, BLOCK_E)),
            ],
            [4, 1],
            [_SECOND_MATH_REGISTERS, _LOADER_REGISTERS],
        )
    else:
        gl.warp_specialize(
            [
                (_mma_partition, (math_operands, GROUP_M, BLOCK_E, WS_UE8M0, TMA_STORE, 0, 4)),
                (_load_partition, (load_operands, GROUP_M, BLOCK_E)),
            ],
            [1],
            [_LOADER_REGISTERS],
        )


def _tma_ready(t: torch.Tensor) -> bool:
    """Rows of ``t`` (2-D, K contiguous) start on 16-byte boundaries (storage offsets: FakeTensor-safe)."""
    size = t.element_size()
    return (
        t.stride(-1) == 1 and (t.stride(0) * size) % _TMA_ALIGN == 0 and (t.storage_offset() * size) % _TMA_ALIGN == 0
    )


def _experts_and_rows(w: torch.Tensor) -> tuple[int, int]:
    """(E, N) of (N, K) dense or (E, N, K) stacked expert weights."""
    return (1, w.shape[0]) if w.dim() == 2 else (w.shape[0], w.shape[1])


def _tiles_for(x: torch.Tensor, w: torch.Tensor, grouped: bool) -> WgmmaTiles | None:
    """Tiles sized for the rows one weight matrix gets: all of them (dense), or the average per expert."""
    rows, k = x.shape
    experts = _experts_and_rows(w)[0]
    if grouped:
        return wgmma_tiles(cdiv(rows, max(1, min(rows, experts))), k, None, x.device)
    return wgmma_tiles(rows, k, w.shape[0], x.device)


def serves(x: torch.Tensor, w: torch.Tensor, out: torch.Tensor, scaling: Scaling, grouped: bool = False) -> bool:
    """Whether ``launch`` computes this product: a Hopper GPU, 128x128 weight blocks, prefill sizes,
    TMA-aligned operands, experts stacked back to back. From metadata alone (FakeTensor-safe)."""
    experts, n = _experts_and_rows(w)
    back_to_back = experts == 1 or w.stride(0) == n * w.stride(1)  # a (E * N, K) view exists
    return (  # the cheap shape checks first: decode calls (the hot path) stop there
        scaling.op_args == BLOCK_SHAPE
        and _tiles_for(x, w, grouped) is not None
        and device_facts(x.device).hopper_wgmma
        and _tma_ready(x)
        and back_to_back
        and _tma_ready(w.reshape(experts * n, w.shape[-1]))
        and out.stride(-1) == 1
    )


@functools.cache
def _operand_layout(rows: int) -> gl.NVMMASharedLayout:
    """Shared-memory layout of a [rows, 128] e4m3 operand tile (TMA writes it, wgmma reads it)."""
    return gl.NVMMASharedLayout.get_default_for([rows, BLOCK_SHAPE[1]], gl.float8e4nv)


def _operand_descriptor(t: torch.Tensor, rows: int) -> TensorDescriptor:
    """A TMA descriptor of an (R, K) e4m3 operand copied in blocks of [rows, 128]."""
    return TensorDescriptor.from_tensor(t, [rows, BLOCK_SHAPE[1]], _operand_layout(rows))


@functools.cache
def output_layout(block_n: int, dtype: torch.dtype) -> gl.NVMMASharedLayout:
    """Shared-memory layout of one math warpgroup's [_GROUP_ROWS, block_n] output tile (TMA reads it)."""
    return gl.NVMMASharedLayout.get_default_for([_GROUP_ROWS.value, block_n], _TMA_OUTPUT_DTYPES[dtype])


def stores_through_tma(out_dtype: torch.dtype, grouped: bool, k: int) -> bool:
    """Whether tiles leave through TMA copies (``_store_tile``) rather than stores from registers:
    16-bit outputs (float32 buffers would not leave shared memory for the rings of three programs
    per SM), dense calls and grouped calls up to _GROUPED_TMA_STORE_MAX_K."""
    return out_dtype in _TMA_OUTPUT_DTYPES and (not grouped or k <= _GROUPED_TMA_STORE_MAX_K)


def _output_descriptor(out: torch.Tensor, tiles: WgmmaTiles, grouped: bool, k: int) -> TensorDescriptor | None:
    """A TMA descriptor of ``out`` (M, N) for ``_store_tile``, or None where the stores go from
    registers: see ``stores_through_tma``, and rows TMA cannot address (not 16-byte aligned)."""
    if not stores_through_tma(out.dtype, grouped, k) or not _tma_ready(out):
        return None
    block = [_GROUP_ROWS.value, tiles.block_n]
    return TensorDescriptor.from_tensor(out, block, output_layout(tiles.block_n, out.dtype))


def _kernel_constants(tiles: WgmmaTiles, experts: int, grouped: bool, ws_ue8m0: bool, tma_store: bool) -> dict:
    """The compile-time arguments of ``_gemm_wgmma_kernel`` for these tiles and operands."""
    return {
        "GROUP_M": _GROUP_M,
        "BLOCK_E": max(32, next_power_of_two(experts)) if grouped else 0,
        "STAGES": tiles.stages,
        "WS_UE8M0": ws_ue8m0,
        "TMA_STORE": tma_store,
        "num_warps": 4,
    }


def _whole_token_tiles(x: torch.Tensor, tiles: WgmmaTiles) -> torch.Tensor:
    """x (M, K) e4m3 for a dense call, or, on 64 x 64 tiles (65-128 tokens) where the last token tile
    would miss at least _PAD_MIN_MISSING_ROWS rows, a copy with zero rows appended up to whole tiles.
    Only the TMA copies of token tiles read the padding; M, the scales and the stores keep the real
    rows. Tiles whose TMA copies reach past the end of x were slow; on larger tiles the copy did not pay.
    """
    missing = -x.shape[0] % tiles.block_m
    if (tiles.block_m, tiles.block_n) != (64, 64) or missing < _PAD_MIN_MISSING_ROWS:
        return x
    return torch.nn.functional.pad(x.view(torch.uint8), (0, 0, 0, missing)).view(x.dtype)


def _launch(
    x: torch.Tensor,
    w: torch.Tensor,
    xs: torch.Tensor,
    ws: torch.Tensor,
    out: torch.Tensor,
    ends: torch.Tensor | None = None,
    tiles: WgmmaTiles | None = None,
) -> None:
    """Launch on 2-D ``xs`` (or one element); ``tiles`` overrides the shape-based choice (sweeps)."""
    m, k = x.shape
    experts, n = _experts_and_rows(w)
    grouped = ends is not None
    tiles = tiles or _tiles_for(x, w, grouped)
    x_copied = x if grouped else _whole_token_tiles(x, tiles)
    x_desc = _operand_descriptor(x_copied, tiles.block_m)
    w_desc = _operand_descriptor(w.reshape(experts * n, k), tiles.block_n)
    ws_ue8m0 = ws.dtype == torch.float8_e8m0fnu
    ws = (ws.view(torch.uint8) if ws_ue8m0 else ws).reshape(experts, *ws.shape[-2:])
    xs_strides = (0, 0) if xs.numel() == 1 else (xs.stride(0), xs.stride(1))
    token_tiles = cdiv(m, tiles.block_m) + (experts if grouped else 0)
    output_tiles = token_tiles * cdiv(n, tiles.block_n)
    programs = min(output_tiles, tiles.programs_per_sm * multiprocessor_count(x.device))
    out_desc = _output_descriptor(out, tiles, grouped, k)
    constants = _kernel_constants(tiles, experts, grouped, ws_ue8m0, out_desc is not None)
    # Without half tiles the kernel never reads x_half_desc: x's descriptor stands in.
    has_halves = _has_half_tiles(tiles.block_m, tiles.block_n, constants["BLOCK_E"])
    x_half_desc = _operand_descriptor(x_copied, _GROUP_ROWS.value) if has_halves else x_desc
    launch_kernel(
        _gemm_wgmma_kernel,
        (programs,),
        (
            x_desc, x_half_desc, w_desc, xs, ws, out, out_desc or x_desc,
            m, n, k, ends if grouped else xs, experts,
            *xs_strides, *ws.stride(), out.stride(0),
        ),
        x.device,
        traceable=False,
        **constants, maxnreg=tiles.max_registers,
    )  # fmt: skip


@torch.library.custom_op(add_op_namespace_prefix("gemm_wgmma"), mutates_args=("out",))
def _gemm_wgmma_op(
    x: torch.Tensor, w: torch.Tensor, xs: torch.Tensor, ws: torch.Tensor, out: torch.Tensor, ends: torch.Tensor | None
) -> None:
    _launch(x, w, xs, ws, out, ends)


@torch.library.register_fake(add_op_namespace_prefix("gemm_wgmma"))
def _gemm_wgmma_fake(
    x: torch.Tensor, w: torch.Tensor, xs: torch.Tensor, ws: torch.Tensor, out: torch.Tensor, ends: torch.Tensor | None
) -> None:
    return None


def launch(
    x: torch.Tensor,
    w: torch.Tensor,
    xs: torch.Tensor,
    ws: torch.Tensor,
    out: torch.Tensor,
    ends: torch.Tensor | None = None,
) -> None:
    """``out = dequant(x) @ dequant(w).T`` where ``serves`` said yes; plain eager calls launch
    directly, traced calls go through the op.

    Dense: x (M, K) e4m3 codes, w (N, K), ws (ceil(N/128), ceil(K/128)), out (M, N). Grouped:
    w (E, N, K), ws (E, ceil(N/128), ceil(K/128)), rows of x sorted by expert and ``ends`` (E,)
    the inclusive cumulative row counts; rows past ends[-1] are left unwritten. xs: float32
    activation scales (M, ceil(K/128)) or one element; ws float32 or ``float8_e8m0fnu``.
    """
    xs = xs.reshape(1) if xs.numel() == 1 else xs.reshape(x.shape[0], -1)
    if is_plain_eager_call((x, w, xs, ws, out, ends)):
        _launch(x, w, xs, ws, out, ends)
    else:
        _gemm_wgmma_op(x, w, xs, ws, out, ends)
