"""MoE expert matmuls: batched (decode: rows in any order, one expert id per row) and grouped
(prefill: rows sorted by expert, with cumulative offsets).

Both run one kernel over *expert tiles*: the rows of each expert are cut into tiles of BLOCK_M rows,
and a program computes one (expert tile, weight tile) pair, so an expert's weights are read once
per tile of its rows, not once per row. The grid is sized from shapes alone (an upper bound on the
number of tiles for any routing; surplus programs exit at once), and every program rebuilds the
tile table from the per-expert row ends on the device, so the calls need no host synchronization
and can be captured in a CUDA graph and replayed with a different routing.

- Grouped: the row ends are the caller's ``offsets``; rows are read and written in place.
- Batched: a routing kernel orders the rows by expert (stably: one program per expert finds where
  its rows start and places them, so no program waits for another) and counts them per expert
  (sentinel ids, ``>= E`` or negative, go to an extra last bucket whose rows are written as zeros
  without any GEMM work). The quantization launch gathers the rows into that order, so the expert
  kernel reads them like grouped rows and only its stores go through the order, back to the
  original rows. Calls of at most ``FEW_ROWS_MAX`` rows (decode) skip the routing launch: each
  program compares the few ids itself (``_few_rows_kernel``).

Activations are quantized first by ``fp8_act_quant``'s kernel (per row and ``block_k`` group; per
row over all of K in per-tensor mode), one launch over the S rows, so codes and scales are exactly
``fp8_act_quant``'s (why not inside the expert kernels: docs/DESIGN.md, "Quantization stays a
separate launch").
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._backends import hopper_gemm
from ._gemm_core import scaled_tile_product, tile_coordinates
from ._launch import (
    cdiv,
    dependent_launch_options,
    launch_kernel,
    next_power_of_two,
    registered_op,
    wait_for_previous_kernel,
    with_unit_k_stride,
)
from ._quantize import quantize_2d
from ._routing import bucket_of, route
from ._scaling import Scaling
from ._tiles import GemmTiles, expert_tiles
from ._validation import (
    ACTIVATION_DTYPES,
    check_devices,
    check_output_dtype,
    check_tensor,
    check_vector,
    check_weights,
)

ID_DTYPES = (torch.int32, torch.int64)
TOKENS_PER_EXPERT_DTYPES = (torch.int32, torch.int64, torch.float32)
# Batched calls of up to this many rows (decode, 1-2 tokens at top-8) need no routing launch
# (``_few_rows_kernel``). It is also the token tile of ``expert_tiles`` at these sizes: one tile holds
# all of an expert's rows, and the products are those of the grouped kernel, bit for bit.
FEW_ROWS_MAX = 16


@triton.jit
def _expert_tile(pid_m, ends_ptr, num_buckets, BLOCK_M: tl.constexpr, BLOCK_E: tl.constexpr):
    """The bucket that token tile ``pid_m`` belongs to, with the tile's row positions [start, end).

    Bucket b owns positions [ends[b - 1], ends[b]) (``ends`` inclusive cumulative, ends[-1] = 0), cut
    into tiles of BLOCK_M. The tile table is rebuilt in registers from one vector load: a prefix sum
    of the tile counts, and the tile's bucket is the number of buckets that end at or before it (no
    chain of dependent loads as a search through memory would need). Surplus tiles get a bucket
    >= num_buckets. Its Gluon twin is ``_wgmma._expert_rows``: Gluon and Triton device functions do
    not call each other.
    """
    e = tl.arange(0, BLOCK_E)
    valid = e < num_buckets
    ends = tl.load(ends_ptr + e, mask=valid, other=0).to(tl.int32)
    starts = tl.load(ends_ptr + e - 1, mask=valid & (e > 0), other=0).to(tl.int32)
    tiles = tl.where(valid, tl.cdiv(tl.maximum(ends - starts, 0), BLOCK_M), 0)
    tile_ends = tl.cumsum(tiles, 0)
    bucket = tl.sum((tile_ends <= pid_m).to(tl.int32), 0)
    mine = e == bucket
    first_tile = tl.sum(tl.where(mine, tile_ends - tiles, 0), 0)
    start = tl.sum(tl.where(mine, starts, 0), 0) + (pid_m - first_tile) * BLOCK_M
    end = tl.sum(tl.where(mine, ends, 0), 0)
    return bucket, start, end


@triton.jit
def _expert_tile_product(
    w_ptr,
    ws_ptr,
    x_ptr,
    xs_ptr,
    expert,
    offs_n,
    x_rows,
    x_row_ok,
    N,
    K,
    stride_we,
    stride_wn,
    stride_wse,
    stride_wsn,
    stride_wsk,
    stride_xm,
    stride_xsm,
    stride_xsk,
    scale_block_n,
    BLOCK_N: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_K: tl.constexpr,
    PER_K_SCALE: tl.constexpr,
    WS_UE8M0: tl.constexpr,
    EVEN_K: tl.constexpr,
    MASK_X_ROWS: tl.constexpr,
):
    """``scaled_tile_product`` of expert ``expert``'s weight rows ``offs_n`` [BLOCK_N] (past N: wrapped,
    for the store to drop) with token rows ``x_rows`` [BLOCK_M] int64 of x: float32 [BLOCK_N, BLOCK_M]."""
    expert = expert.to(tl.int64)
    rows_n = offs_n % N
    return scaled_tile_product(
        w_ptr + expert * stride_we + rows_n.to(tl.int64)[:, None] * stride_wn,
        ws_ptr + expert * stride_wse + (rows_n // scale_block_n) * stride_wsn,
        x_ptr + x_rows[:, None] * stride_xm,
        x_row_ok,
        xs_ptr + x_rows * stride_xsm,
        K,
        0,
        tl.cdiv(K, BLOCK_K),
        stride_wsk,
        stride_xsk,
        BLOCK_N,
        BLOCK_M,
        BLOCK_K,
        PER_K_SCALE,
        WS_UE8M0,
        EVEN_K,
        MASK_X_ROWS,
    )


@triton.jit
def _expert_gemm_kernel(
    w_ptr,
    ws_ptr,
    x_ptr,
    xs_ptr,
    out_ptr,
    ends_ptr,
    perm_ptr,
    S,
    N,
    K,
    num_experts,
    num_buckets,
    tiles_m,
    stride_we,
    stride_wn,
    stride_wse,
    stride_wsn,
    stride_wsk,
    stride_xm,
    stride_xsm,
    stride_xsk,
    stride_om,
    scale_block_n,
    BLOCK_N: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_E: tl.constexpr,
    GROUP_N: tl.constexpr,
    PER_K_SCALE: tl.constexpr,
    WS_UE8M0: tl.constexpr,
    EVEN_K: tl.constexpr,
    SCATTER: tl.constexpr,
    PDL: tl.constexpr,
):
    """One program: BLOCK_M rows of one bucket x BLOCK_N output columns, over all of K.

    w (E, N, K) e4m3 through strides (K contiguous); ws weight scales [e, n // scale_block_n, k block]
    through strides. x (S, K) e4m3 codes with scales xs [s, k block] through strides, one row per
    position; out (S, N). The output row of a position is ``perm[position]`` (SCATTER) or the
    position itself. Buckets >= num_experts (the batched sentinel bucket) store zeros.
    """
    wait_for_previous_kernel(PDL)
    pid_n, pid_m = tile_coordinates(tl.program_id(0), tl.cdiv(N, BLOCK_N), tiles_m, GROUP_N)
    bucket, start, end = _expert_tile(pid_m, ends_ptr, num_buckets, BLOCK_M, BLOCK_E)
    if bucket < num_buckets:
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        pos = start + tl.arange(0, BLOCK_M)
        row_ok = (pos < end) & (pos < S)
        # Positions past the tile's last row repeat a valid one: loads need no mask, the store drops them.
        pos = tl.maximum(tl.minimum(pos, tl.minimum(end, S) - 1), 0).to(tl.int64)
        if SCATTER:
            rows = tl.load(perm_ptr + pos).to(tl.int64)  # needed only by the store: off the main loop's path
        else:
            rows = pos
        out_ptrs = out_ptr + rows[None, :] * stride_om + offs_n[:, None]
        out_mask = (offs_n < N)[:, None] & row_ok[None, :]
        if bucket < num_experts:
            # Partial expert tiles read repeated rows unmasked: masking them measured no faster.
            acc = _expert_tile_product(
                w_ptr, ws_ptr, x_ptr, xs_ptr, bucket, offs_n, pos, row_ok,
                N, K, stride_we, stride_wn, stride_wse, stride_wsn, stride_wsk, stride_xm, stride_xsm, stride_xsk,
                scale_block_n, BLOCK_N, BLOCK_M, BLOCK_K, PER_K_SCALE, WS_UE8M0, EVEN_K, False,
            )  # fmt: skip
            tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=out_mask)
        else:
            tl.store(out_ptrs, tl.zeros((BLOCK_N, BLOCK_M), dtype=out_ptr.dtype.element_ty), mask=out_mask)


@triton.jit
def _few_rows_kernel(
    w_ptr,
    ws_ptr,
    x_ptr,
    xs_ptr,
    ids_ptr,
    out_ptr,
    S,
    N,
    K,
    num_experts,
    stride_we,
    stride_wn,
    stride_wse,
    stride_wsn,
    stride_wsk,
    stride_xm,
    stride_xsm,
    stride_xsk,
    stride_om,
    scale_block_n,
    BLOCK_N: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_K: tl.constexpr,
    PER_K_SCALE: tl.constexpr,
    WS_UE8M0: tl.constexpr,
    EVEN_K: tl.constexpr,
    PDL: tl.constexpr,
):
    """Batched calls of at most BLOCK_M rows without a routing launch.

    Program (weight tile, slot r) serves the expert of row r when r is that expert's first row: it
    finds the expert's other rows by comparing the S ids and multiplies them all with its weight
    tile, so each touched expert's weights are read once; the programs of an expert's later rows exit
    at once, and a sentinel row's program stores that row's zeros. x (S, K) e4m3 codes in row order
    with scales xs [s, k block]; w, ws and out as in ``_expert_gemm_kernel``.
    """
    wait_for_previous_kernel(PDL)
    pid_n = tl.program_id(0)
    slot = tl.program_id(1)
    rows = tl.arange(0, BLOCK_M)
    present = rows < S
    buckets = bucket_of(ids_ptr, rows, present, num_experts)
    bucket = tl.sum(tl.where(rows == slot, buckets, 0), 0)
    mine = present & (buckets == bucket)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    if bucket >= num_experts:
        zeros = tl.zeros((BLOCK_N,), dtype=out_ptr.dtype.element_ty)
        tl.store(out_ptr + slot.to(tl.int64) * stride_om + offs_n, zeros, mask=offs_n < N)
    elif tl.min(tl.where(mine, rows, BLOCK_M), 0) == slot:
        x_rows = tl.where(present, rows, slot).to(tl.int64)
        acc = _expert_tile_product(
            w_ptr, ws_ptr, x_ptr, xs_ptr, bucket, offs_n, x_rows, mine,
            N, K, stride_we, stride_wn, stride_wse, stride_wsn, stride_wsk, stride_xm, stride_xsm, stride_xsk,
            scale_block_n, BLOCK_N, BLOCK_M, BLOCK_K, PER_K_SCALE, WS_UE8M0, EVEN_K, True,
        )  # fmt: skip
        out_ptrs = out_ptr + x_rows[None, :] * stride_om + offs_n[:, None]
        tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=(offs_n < N)[:, None] & mine[None, :])


def _weight_scale_args(ws: torch.Tensor, experts: int, scaling: Scaling) -> tuple[torch.Tensor, bool, int, int, int]:
    """(scales as the kernels read them, whether they are UE8M0 codes, and their (expert, row block,
    k block) strides); per-tensor scales are one per expert."""
    ue8m0 = ws.dtype == torch.float8_e8m0fnu
    ws = ws.view(torch.uint8) if ue8m0 else ws
    if not scaling.per_block:
        ws = ws.reshape(experts)
        return ws, ue8m0, ws.stride(0), 0, 0
    return (ws, ue8m0, *ws.stride())


def launch_expert_gemm(
    x: torch.Tensor,
    w: torch.Tensor,
    ws: torch.Tensor,
    out: torch.Tensor,
    ends: torch.Tensor,
    perm: torch.Tensor | None,
    scaling: Scaling,
    zero_sentinels: bool,
    tiles: GemmTiles | None = None,
) -> None:
    """``out[row] = dequant(quant(x[row])) @ dequant(w[expert]).T`` for each row ``ends`` assigns to an expert.

    x (S, K) raw, unit stride along K; w (E, N, K) e4m3; ws weight scales (see ``matmul_grouped``);
    out (S, N). ``ends`` holds the inclusive cumulative row count of each expert (plus the sentinel
    bucket when ``zero_sentinels``, whose rows get zeros). ``perm`` maps positions to rows (None: identity).
    ``tiles`` overrides the shape-based choice (for tile sweeps).
    """
    s, k = x.shape
    experts, n, _ = w.shape
    explicit_tiles = tiles is not None
    tiles = tiles or expert_tiles(s, experts, k, scaling.k_step(), x.device)
    num_buckets = experts + int(zero_sentinels)
    tiles_m = cdiv(s, tiles.block_m) + min(num_buckets, s)
    xq, xs = quantize_2d(x, scaling.activation_group(k), source_rows=perm)
    gluon = perm is None and not explicit_tiles and hopper_gemm is not None
    if gluon and hopper_gemm.serves(xq, w, out, scaling, True):
        hopper_gemm.launch(xq, w, xs, ws, out, ends)  # the caller's scales: it tells UE8M0 codes by their dtype
        return
    ws, ws_ue8m0, stride_wse, stride_wsn, stride_wsk = _weight_scale_args(ws, experts, scaling)
    launch_kernel(
        _expert_gemm_kernel,
        (cdiv(n, tiles.block_n) * tiles_m,),
        (
            w, ws, xq, xs, out, ends, ends if perm is None else perm,
            s, n, k, experts, num_buckets, tiles_m,
            w.stride(0), w.stride(1), stride_wse, stride_wsn, stride_wsk,
            xq.stride(0), xs.stride(0), xs.stride(1), out.stride(0),
            scaling.weight_rows_per_scale(n),
        ),
        x.device,
        BLOCK_N=tiles.block_n, BLOCK_M=tiles.block_m, BLOCK_K=tiles.block_k,
        BLOCK_E=next_power_of_two(num_buckets), GROUP_N=tiles.group_n,
        PER_K_SCALE=scaling.per_block, WS_UE8M0=ws_ue8m0, EVEN_K=k % tiles.block_k == 0,
        SCATTER=perm is not None,
        num_warps=tiles.num_warps, num_stages=tiles.num_stages, **dependent_launch_options(x.device),
    )  # fmt: skip


def launch_few_rows(
    x: torch.Tensor,
    w: torch.Tensor,
    ws: torch.Tensor,
    out: torch.Tensor,
    expert_ids: torch.Tensor,
    scaling: Scaling,
) -> None:
    """``matmul_batched`` of at most ``FEW_ROWS_MAX`` rows: quantization, then ``_few_rows_kernel``.

    x (S, K) raw, unit stride along K; w (E, N, K) e4m3; ws as in ``matmul_batched``; out (S, N);
    expert_ids (S,) contiguous int32 or int64.
    """
    s, k = x.shape
    experts, n, _ = w.shape
    tiles = expert_tiles(s, experts, k, scaling.k_step(), x.device)
    ws, ws_ue8m0, stride_wse, stride_wsn, stride_wsk = _weight_scale_args(ws, experts, scaling)
    xq, xs = quantize_2d(x, scaling.activation_group(k))
    launch_kernel(
        _few_rows_kernel,
        (cdiv(n, tiles.block_n), s),
        (
            w, ws, xq, xs, expert_ids, out,
            s, n, k, experts,
            w.stride(0), w.stride(1), stride_wse, stride_wsn, stride_wsk,
            xq.stride(0), xs.stride(0), xs.stride(1), out.stride(0),
            scaling.weight_rows_per_scale(n),
        ),
        x.device,
        BLOCK_N=tiles.block_n, BLOCK_M=FEW_ROWS_MAX, BLOCK_K=tiles.block_k,
        PER_K_SCALE=scaling.per_block, WS_UE8M0=ws_ue8m0, EVEN_K=k % tiles.block_k == 0,
        num_warps=tiles.num_warps, num_stages=tiles.num_stages, **dependent_launch_options(x.device),
    )  # fmt: skip


def _expert_matmul(
    a: torch.Tensor,
    b: torch.Tensor,
    b_s: torch.Tensor,
    block_n: int,
    block_k: int,
    output_dtype: torch.dtype,
    expert_ids: torch.Tensor | None = None,
    offsets: torch.Tensor | None = None,
) -> torch.Tensor:
    """C (S, N) for rows routed by ``expert_ids`` (batched: sorted here, sentinel rows zeroed) or by
    ``offsets`` (grouped: rows already sorted, the tail left unwritten)."""
    s, n = a.shape[0], b.shape[1]
    out = torch.empty((s, n), dtype=output_dtype, device=a.device)
    if s == 0 or n == 0:
        return out
    batched = expert_ids is not None
    if a.shape[1] == 0:  # an empty sum: every routed row is zeros
        if batched:
            return out.zero_()
        routed = torch.arange(s, device=a.device) < offsets[-1]  # rows past offsets[-1] stay unwritten
        return out.masked_fill_(routed[:, None], 0)
    scaling = Scaling(block_n, block_k)
    a, b = with_unit_k_stride(a), with_unit_k_stride(b)
    if batched and s <= FEW_ROWS_MAX:
        launch_few_rows(a, b, b_s, out, expert_ids.contiguous(), scaling)
        return out
    perm, ends = route(expert_ids.contiguous(), b.shape[0]) if batched else (None, offsets.contiguous())
    launch_expert_gemm(a, b, b_s, out, ends, perm, scaling, batched)
    return out


@registered_op("fp8_matmul_batched")
def _fp8_matmul_batched(
    a: torch.Tensor,
    b: torch.Tensor,
    b_s: torch.Tensor,
    expert_ids: torch.Tensor,
    block_n: int,
    block_k: int,
    output_dtype: torch.dtype,
) -> torch.Tensor:
    return _expert_matmul(a, b, b_s, block_n, block_k, output_dtype, expert_ids=expert_ids)


@registered_op("fp8_matmul_grouped")
def _fp8_matmul_grouped(
    a: torch.Tensor,
    b: torch.Tensor,
    b_s: torch.Tensor,
    offsets: torch.Tensor,
    block_n: int,
    block_k: int,
    output_dtype: torch.dtype,
) -> torch.Tensor:
    return _expert_matmul(a, b, b_s, block_n, block_k, output_dtype, offsets=offsets)


def _check_experts(
    A: torch.Tensor, B: torch.Tensor, Bs: torch.Tensor, block_size: object, output_dtype: torch.dtype | None
) -> tuple[tuple[int, int], torch.dtype]:
    """Validate raw rows A (S, K), stacked weights B (E, N, K) and their scales; return (the scaling's op
    ints, out dtype)."""
    check_tensor("A", A, ACTIVATION_DTYPES, ndim=2)
    scaling = check_weights(A, B, Bs, block_size, stacked=True)
    out_dtype = check_output_dtype("output_dtype", A.dtype if output_dtype is None else output_dtype)
    return scaling.op_args, out_dtype


def matmul_batched(
    A: torch.Tensor,
    B: torch.Tensor,
    Bs: torch.Tensor,
    expert_ids: torch.Tensor,
    block_size: list[int] | tuple[int, int] | None,
    output_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Expert matmul for rows in any order: ``C[s] = dequant(quant(A[s])) @ dequant(B[expert_ids[s]]).T``.

    Args:
        A: (S, K) bfloat16, float16 or float32 raw activations (S = tokens * top_k); quantized
            exactly as ``fp8_act_quant`` would (per ``block_k`` group, or per row in per-tensor mode).
        B: (E, N, K) ``float8_e4m3fn`` stacked expert weights, K contiguous.
        Bs: weight dequant scales, float32 or ``float8_e8m0fnu``: (E, ceil(N/block_n), ceil(K/block_k))
            in block mode; one per expert, (E,) or (E, 1, 1), in per-tensor mode.
        expert_ids: (S,) int32 or int64. Ids outside [0, E) (expert-parallel sentinels) cost no GEMM
            work and their rows of C are zeros.
        block_size: [block_n, block_k]; None or [N, K] selects per-tensor mode.
        output_dtype: None means A's dtype.

    Returns:
        C (S, N). Each expert's weights are read once per tile of the rows routed to it. Three
        launches: routing, quantization (which gathers the rows into expert order), expert GEMM;
        two (quantization, expert GEMM) for at most ``FEW_ROWS_MAX`` (16) rows.
    """
    scaling_args, out_dtype = _check_experts(A, B, Bs, block_size, output_dtype)
    check_vector("expert_ids", expert_ids, ID_DTYPES, A.shape[0], "one per row of A")
    check_devices(A=A, B=B, Bs=Bs, expert_ids=expert_ids)
    return _fp8_matmul_batched(A, B, Bs, expert_ids, *scaling_args, out_dtype)


def matmul_grouped(
    A: torch.Tensor,
    B: torch.Tensor,
    Bs: torch.Tensor,
    offsets: torch.Tensor,
    tokens_per_expert: torch.Tensor,
    block_size: list[int] | tuple[int, int] | None,
    output_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Expert matmul for rows sorted by expert: rows [offsets[e-1], offsets[e]) use expert e.

    Args:
        A: (S, K) bfloat16, float16 or float32 raw activations, rows sorted by expert; quantized
            exactly as ``fp8_act_quant`` would.
        B, Bs, block_size, output_dtype: as in ``matmul_batched``.
        offsets: (E,) int32 (or int64) inclusive cumulative row ends, ``cumsum(tokens_per_expert)``.
        tokens_per_expert: (E,) int32, int64 or float32 row counts. Only its shape is checked: the
            kernel reads the same information from ``offsets``.

    Returns:
        C (S, N). Rows at or after ``offsets[-1]`` (expert-parallel sentinels sorted to the tail)
        cost no GEMM work and are left unwritten (uninitialized memory): callers mask them. Two
        launches: quantization, expert GEMM.
    """
    scaling_args, out_dtype = _check_experts(A, B, Bs, block_size, output_dtype)
    experts = B.shape[0]
    check_vector("offsets", offsets, ID_DTYPES, experts, "one per expert of B")
    check_vector("tokens_per_expert", tokens_per_expert, TOKENS_PER_EXPERT_DTYPES, experts, "one per expert of B")
    check_devices(A=A, B=B, Bs=Bs, offsets=offsets, tokens_per_expert=tokens_per_expert)
    return _fp8_matmul_grouped(A, B, Bs, offsets, *scaling_args, out_dtype)
