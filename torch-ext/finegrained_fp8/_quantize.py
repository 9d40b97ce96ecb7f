"""The activation quantization kernel and its launcher, ``quantize_2d``: ``fp8_act_quant`` and the fused
matmuls (dense and expert) all quantize their rows with it, so their codes and scales agree bit for bit.
Dynamic per-row groups, or the static per-tensor scheme."""

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
    wait_for_previous_kernel,
    with_unit_k_stride,
)
from ._quant import quantize_rows, quantize_static
from ._validation import FP8_DTYPE

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
