"""Dense W8A8 FP8 matmul: block-wise and per-tensor scales, pre-quantized or raw activations.

Raw activations (``matmul_2d``) are quantized by the ``fp8_act_quant`` kernel, then multiplied: inside
the GEMM every weight tile's program would repeat the quantization of the same rows (docs/DESIGN.md,
"Quantization stays a separate launch").

``out[m, n] = sum_k dequant(x)[m, k] * dequant(w)[n, k]``, float32 accumulation. In block mode each
K block of ``block_k`` is a fresh FP8 dot product, scaled by its activation and weight scales and
added to a float32 accumulator (DeepSeek-V3 numerics).
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
    registered_op,
    wait_for_previous_kernel,
    with_unit_k_stride,
)
from ._quantize import as_rows, quantize_2d
from ._scaling import Scaling
from ._tiles import GemmTiles, gemm_tiles
from ._validation import (
    ACTIVATION_DTYPES,
    FP8_DTYPE,
    check_devices,
    check_output_dtype,
    check_tensor,
    check_weights,
)


@triton.jit
def _gemm_kernel(
    w_ptr,
    ws_ptr,
    x_ptr,
    xs_ptr,
    out_ptr,
    M,
    N,
    K,
    stride_wn,
    stride_wsn,
    stride_wsk,
    stride_xm,
    stride_xsm,
    stride_xsk,
    stride_out_split,
    stride_om,
    scale_block_n,
    k_blocks_per_split,
    BLOCK_N: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_N: tl.constexpr,
    PER_K_SCALE: tl.constexpr,
    WS_UE8M0: tl.constexpr,
    EVEN_K: tl.constexpr,
    MASK_X_ROWS: tl.constexpr,
    PDL: tl.constexpr,
):
    """One program: an out tile of BLOCK_M tokens x BLOCK_N columns over one split of K.

    w (N, K) e4m3, K contiguous; ws weight scales indexed [n // scale_block_n, k block] through
    strides (0 strides broadcast a per-tensor scale); x (M, K) rows with unit stride along K (with
    MASK_X_ROWS, set when M is not a multiple of BLOCK_M, the token rows past M are not read);
    xs activation scales [m, k block] through strides. out is (M, N) when there is one split, else
    a float32 workspace (splits, M, N) reduced by ``_sum_splits_kernel``.
    """
    wait_for_previous_kernel(PDL)
    split = tl.program_id(1)
    pid_n, pid_m = tile_coordinates(tl.program_id(0), tl.cdiv(N, BLOCK_N), tl.cdiv(M, BLOCK_M), GROUP_N)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    # Rows past the edge wrap around to valid rows (weights: loads need no row mask; tokens: see MASK_X_ROWS);
    # the store drops them.
    rows_n = offs_n % N
    rows_m = offs_m % M
    kb_start = split * k_blocks_per_split
    acc = scaled_tile_product(
        w_ptr + rows_n.to(tl.int64)[:, None] * stride_wn,
        ws_ptr + (rows_n // scale_block_n) * stride_wsn,
        x_ptr + rows_m.to(tl.int64)[:, None] * stride_xm,
        offs_m < M,
        xs_ptr + rows_m.to(tl.int64) * stride_xsm,
        K,
        kb_start,
        min(kb_start + k_blocks_per_split, tl.cdiv(K, BLOCK_K)),
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
    out_ptrs = out_ptr + split * stride_out_split + offs_m.to(tl.int64)[None, :] * stride_om + offs_n[:, None]
    tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=(offs_n < N)[:, None] & (offs_m < M)[None, :])


@triton.jit
def _sum_splits_kernel(partials_ptr, out_ptr, numel, SPLITS: tl.constexpr, BLOCK: tl.constexpr, PDL: tl.constexpr):
    """out[i] = sum over s of partials[s, i], always in the order s = 0, 1, ... (bitwise reproducible)."""
    wait_for_previous_kernel(PDL)
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    acc = tl.load(partials_ptr + offs, mask=mask, other=0.0)
    for s in tl.static_range(1, SPLITS):
        acc += tl.load(partials_ptr + s * numel + offs, mask=mask, other=0.0)
    tl.store(out_ptr + offs, acc.to(out_ptr.dtype.element_ty), mask=mask)


def _scale_strides(s: torch.Tensor, rows: int) -> tuple[torch.Tensor, int, int]:
    """A scale tensor and its (row, k-block) strides; a single scale broadcasts with zero strides."""
    if s.numel() == 1:
        return s.reshape(1), 0, 0
    s2d = s.reshape(rows, -1)
    return s2d, s2d.stride(0), s2d.stride(1)


def launch_gemm(
    w: torch.Tensor,
    ws: torch.Tensor,
    x: torch.Tensor,
    xs: torch.Tensor,
    out: torch.Tensor,
    scaling: Scaling,
    tiles: GemmTiles | None = None,
) -> None:
    """Compute ``out (M, N) = x (M, K) @ w (N, K).T`` with scales; launch under x's device.

    ``scaling`` says how ``ws`` scales ``w`` (per block, or per tensor). ``xs``: activation scales
    (M, ceil(K / block_k)), per-row (M,) / (M, 1), or one element (static scheme). ``tiles``
    forces the plain-Triton kernel with those tiles (tile sweeps); else Hopper prefill sizes run
    the Gluon kernel (``_wgmma``, same numerics).
    """
    m, k = x.shape
    n = w.shape[0]
    if m == 0 or n == 0:
        return
    if k == 0:  # an empty sum
        out.zero_()
        return
    if tiles is None and hopper_gemm is not None and hopper_gemm.serves(x, w, out, scaling):
        hopper_gemm.launch(x, w, xs, ws, out)
        return
    tiles = tiles or gemm_tiles(m, n, k, scaling.k_step(), x.device)
    ws_ue8m0 = ws.dtype == torch.float8_e8m0fnu
    ws = ws.view(torch.uint8) if ws_ue8m0 else ws
    rows_per_scale = scaling.weight_rows_per_scale(n)
    ws, stride_wsn, stride_wsk = _scale_strides(ws, cdiv(n, rows_per_scale))
    xs, stride_xsm, stride_xsk = _scale_strides(xs, m)
    split = tiles.split_k
    target = out if split == 1 else torch.empty((split, m, n), dtype=torch.float32, device=out.device)
    overlap = dependent_launch_options(x.device)
    launch_kernel(
        _gemm_kernel,
        (cdiv(n, tiles.block_n) * cdiv(m, tiles.block_m), split),
        (
            w, ws, x, xs, target,
            m, n, k,
            w.stride(0), stride_wsn, stride_wsk,
            x.stride(0), stride_xsm, stride_xsk,
            m * n, out.stride(0),
            rows_per_scale, tiles.k_blocks_per_split,
        ),
        x.device,
        BLOCK_N=tiles.block_n, BLOCK_M=tiles.block_m, BLOCK_K=tiles.block_k, GROUP_N=tiles.group_n,
        PER_K_SCALE=scaling.per_block, WS_UE8M0=ws_ue8m0, EVEN_K=k % tiles.block_k == 0,
        MASK_X_ROWS=m % tiles.block_m != 0,
        num_warps=tiles.num_warps, num_stages=tiles.num_stages, **overlap,
    )  # fmt: skip
    if split > 1:
        block_elems = 1024
        launch_kernel(
            _sum_splits_kernel, (cdiv(m * n, block_elems),), (target, out, m * n), x.device,
            SPLITS=split, BLOCK=block_elems, num_warps=4, **overlap,
        )  # fmt: skip


@registered_op("fp8_matmul")
def _fp8_matmul(
    a: torch.Tensor,
    b: torch.Tensor,
    a_s: torch.Tensor,
    b_s: torch.Tensor,
    block_n: int,
    block_k: int,
    output_dtype: torch.dtype,
) -> torch.Tensor:
    n = b.shape[0]
    x = as_rows(a)
    out = torch.empty((*a.shape[:-1], n), dtype=output_dtype, device=a.device)
    launch_gemm(with_unit_k_stride(b), b_s, x, a_s, out.view(x.shape[0], n), Scaling(block_n, block_k))
    return out


@registered_op("fp8_matmul_fused")
def _fp8_matmul_fused(
    a: torch.Tensor,
    b: torch.Tensor,
    b_s: torch.Tensor,
    activation_scale: torch.Tensor | None,
    block_n: int,
    block_k: int,
    output_dtype: torch.dtype,
) -> torch.Tensor:
    n, k = b.shape
    scaling = Scaling(block_n, block_k)
    x = as_rows(a)
    out = torch.empty((*a.shape[:-1], n), dtype=output_dtype, device=a.device)
    q, x_s = quantize_2d(x, scaling.activation_group(k), activation_scale)
    launch_gemm(with_unit_k_stride(b), b_s, q, x_s, out.view(x.shape[0], n), scaling)
    return out


def _check_activation_scale(a: torch.Tensor, a_s: torch.Tensor, k: int, scaling: Scaling) -> None:
    """As: one element (static scheme), per K block (..., M, ceil(K/block_k)) or per row (..., M[, 1])."""
    check_tensor("As", a_s, (torch.float32,))
    if a_s.numel() == 1:
        return
    rows = a.shape[:-1]
    if scaling.per_block:
        allowed = [(*rows, cdiv(k, scaling.block_k))]
    else:
        allowed = [tuple(rows), (*rows, 1)]
    if tuple(a_s.shape) not in allowed:
        raise ValueError(
            f"As must have shape {' or '.join(str(list(s)) for s in allowed)} (or be a single per-tensor scale) "
            f"for A of shape {list(a.shape)}, got {list(a_s.shape)}"
        )


def matmul_prequantized(
    A: torch.Tensor,
    B: torch.Tensor,
    As: torch.Tensor,
    Bs: torch.Tensor,
    block_size: list[int] | tuple[int, int] | None,
    output_dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Matmul of pre-quantized FP8 activations with FP8 weights: ``dequant(A) @ dequant(B).T``.

    Args:
        A: (..., K) ``float8_e4m3fn`` activations (e.g. from ``fp8_act_quant``), K contiguous.
        B: (N, K) ``float8_e4m3fn`` weights.
        As: activation dequant scales, float32: (..., ceil(K/block_k)) in block mode, per row
            (...,) or (..., 1) in per-tensor mode, or one element (static activation scheme).
        Bs: weight dequant scales (``weight_scale_inv``), float32 or ``float8_e8m0fnu``:
            (ceil(N/block_n), ceil(K/block_k)) in block mode, one element in per-tensor mode.
        block_size: [block_n, block_k]; None or [N, K] selects per-tensor mode.
        output_dtype: float32, bfloat16 or float16.

    Returns:
        (..., N) tensor of ``output_dtype``.
    """
    check_tensor("A", A, (FP8_DTYPE,), min_ndim=1)
    scaling = check_weights(A, B, Bs, block_size, stacked=False)
    _check_activation_scale(A, As, B.shape[1], scaling)
    check_output_dtype("output_dtype", output_dtype)
    check_devices(A=A, B=B, As=As, Bs=Bs)
    return _fp8_matmul(A, B, As, Bs, *scaling.op_args, output_dtype)


def matmul_2d(
    A: torch.Tensor,
    B: torch.Tensor,
    Bs: torch.Tensor,
    block_size: list[int] | tuple[int, int] | None,
    output_dtype: torch.dtype | None = None,
    activation_scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """FP8 linear layer on raw activations: quantize A, then ``dequant(A_q) @ dequant(B).T``.

    Args:
        A: (..., K) bfloat16, float16 or float32.
        B, Bs, block_size: as in ``matmul_prequantized``.
        output_dtype: None means A's dtype.
        activation_scale: None for dynamic quantization (per row and block_k group in block mode,
            per row in per-tensor mode, exactly as ``fp8_act_quant``); a one-element float32 tensor
            for the static scheme (``q = clamp(A / activation_scale)``).

    Two launches: ``fp8_act_quant``'s kernel, then the matmul (see the module docstring for why),
    so the codes and scales are exactly those of ``fp8_act_quant``.
    """
    check_tensor("A", A, ACTIVATION_DTYPES, min_ndim=1)
    scaling = check_weights(A, B, Bs, block_size, stacked=False)
    if activation_scale is not None:
        check_tensor("activation_scale", activation_scale, (torch.float32,))
        if activation_scale.numel() != 1:
            raise ValueError(
                f"activation_scale must hold one per-tensor scale, got shape {list(activation_scale.shape)}"
            )
    out_dtype = check_output_dtype("output_dtype", A.dtype if output_dtype is None else output_dtype)
    check_devices(A=A, B=B, Bs=Bs, activation_scale=activation_scale)
    return _fp8_matmul_fused(A, B, Bs, activation_scale, *scaling.op_args, out_dtype)


matmul = matmul_2d
