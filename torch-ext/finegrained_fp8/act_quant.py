"""Activation quantization: ``fp8_act_quant`` (dynamic per-row groups) and the static per-tensor scheme."""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ._launch import (
    cdiv,
    dependent_launch_options,
    launch_kernel,
    let_next_kernel_launch,
    next_power_of_two,
    registered_op,
    wait_for_previous_kernel,
    with_unit_k_stride,
)
from ._quant import quantize_rows, quantize_static
from ._validation import ACTIVATION_DTYPES, FP8_DTYPE, check_devices, check_positive_int, check_tensor

# Elements one program quantizes: large enough to keep 16-byte loads in flight, small enough to
# give thousands of programs on prefill-sized inputs (16 rows of a 128-group; docs/DESIGN.md,
# "Activation quantization").
_ELEMENTS_PER_PROGRAM = 2048


@triton.jit
def _act_quant_kernel(
    x_ptr,
    q_ptr,
    s_ptr,
    source_rows_ptr,
    M,
    K,
    stride_xm,
    num_groups,
    GROUP: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_G: tl.constexpr,
    STATIC_SCALE: tl.constexpr,
    POWER_OF_TWO_SCALE: tl.constexpr,
    GATHER: tl.constexpr,
    PDL: tl.constexpr,
):
    """One program quantizes a [BLOCK_M rows, one group] tile of x (M, K); q is (M, K) contiguous.
    Consecutive programs take consecutive groups of the same rows, so neighbours read neighbouring
    bytes (one grid axis: with the groups on the first axis, the rows of MoE prefill would exceed the
    65535 programs that a second axis allows).

    Row i of q comes from row i of x, or from row source_rows[i] (GATHER; int32, a permutation).
    Dynamic: writes the group scales to s (M, num_groups). Static: reads the one scale at s_ptr.
    """
    wait_for_previous_kernel(PDL)
    let_next_kernel_launch(PDL)
    group = tl.program_id(0) % num_groups
    rows = (tl.program_id(0) // num_groups) * BLOCK_M + tl.arange(0, BLOCK_M)
    in_group = tl.arange(0, BLOCK_G)
    cols = group * GROUP + in_group
    row_ok = rows < M
    mask = row_ok[:, None] & (cols[None, :] < K) & (in_group[None, :] < GROUP)
    rows64 = rows.to(tl.int64)
    if GATHER:
        sources = tl.load(source_rows_ptr + rows, mask=row_ok, other=0).to(tl.int64)
    else:
        sources = rows64
    x = tl.load(x_ptr + sources[:, None] * stride_xm + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    if STATIC_SCALE:
        q = quantize_static(x, tl.load(s_ptr))
    else:
        q, s = quantize_rows(x, POWER_OF_TWO_SCALE)
        tl.store(s_ptr + rows64 * num_groups + group, s, mask=row_ok)
    tl.store(q_ptr + rows64[:, None] * K + cols[None, :], q, mask=mask)


def quantize_2d(
    x2d: torch.Tensor,
    group: int,
    static_scale: torch.Tensor | None = None,
    power_of_two_scale: bool = False,
    source_rows: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize ``x2d`` (M, K), unit stride along K, with one launch.

    Returns ``(q, s)``: q (M, K) e4m3 contiguous; s the (M, ceil(K / group)) float32 group scales
    (dynamic), or ``static_scale`` itself, the one per-tensor scale the kernel read (static).
    ``source_rows`` (M,) int32, a permutation of the rows: row i of q and s quantizes row
    ``source_rows[i]`` of x (the rows come out in that order).
    """
    m, k = x2d.shape
    static = static_scale is not None
    q = torch.empty((m, k), dtype=FP8_DTYPE, device=x2d.device)
    num_groups = cdiv(k, group)
    s = static_scale if static else torch.empty((m, num_groups), dtype=torch.float32, device=x2d.device)
    if m == 0 or k == 0:
        return q, s
    block_g = next_power_of_two(group)
    block_m = max(1, min(next_power_of_two(m), _ELEMENTS_PER_PROGRAM // block_g))
    launch_kernel(
        _act_quant_kernel,
        (num_groups * cdiv(m, block_m),),
        (x2d, q, s, q if source_rows is None else source_rows, m, k, x2d.stride(0), num_groups),
        x2d.device,
        GROUP=group,
        BLOCK_M=block_m,
        BLOCK_G=block_g,
        STATIC_SCALE=static,
        POWER_OF_TWO_SCALE=power_of_two_scale,
        GATHER=source_rows is not None,
        num_warps=8 if block_m * block_g >= 8192 else 4,
        **dependent_launch_options(x2d.device),
    )
    return q, s


def as_rows(x: torch.Tensor) -> torch.Tensor:
    """View ``x`` (..., K) as (M, K) with unit stride along K (copies only when it must); K may be 0."""
    return with_unit_k_stride(x.reshape(math.prod(x.shape[:-1]), x.shape[-1]))


@registered_op("fp8_act_quant")
def _fp8_act_quant(x: torch.Tensor, block_size: int, power_of_two_scale: bool) -> tuple[torch.Tensor, torch.Tensor]:
    q, s = quantize_2d(as_rows(x), block_size, power_of_two_scale=power_of_two_scale)
    return q.view(x.shape), s.view(*x.shape[:-1], s.shape[-1])


def fp8_act_quant(
    x: torch.Tensor, block_size: int = 128, power_of_two_scale: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize activations to FP8 per row and per group of ``block_size`` elements along K.

    Args:
        x: (..., K) bfloat16, float16 or float32, any leading dimensions. ``block_size`` need not
            divide K (the last group is partial); ``block_size == K`` gives one scale per row.
        block_size: group length along K.
        power_of_two_scale: round each scale up to a power of two (UE8M0 scales, as Blackwell-era
            checkpoints use). Off by default.

    Returns:
        ``(q, s)``: q (..., K) ``float8_e4m3fn``; s (..., ceil(K / block_size)) float32, the
        dequantization multiplier, ``x ~= q * s`` per group. ``s = max(amax / 448, 1e-12)``
        (rounded up to a power of two when asked); ``q = e4m3(clamp(x / s, -448, 448))`` rounded to
        nearest even.
    """
    check_tensor("x", x, ACTIVATION_DTYPES, min_ndim=1)
    check_positive_int("block_size", block_size)
    if not isinstance(power_of_two_scale, bool):
        raise TypeError(f"power_of_two_scale must be a bool, got {type(power_of_two_scale).__name__}")
    check_devices(x=x)
    return _fp8_act_quant(x, block_size, power_of_two_scale)
