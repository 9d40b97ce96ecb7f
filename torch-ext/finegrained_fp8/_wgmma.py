"""Hopper (sm_90) block-scaled FP8 GEMM in Gluon, for prefill sizes.

Why a second kernel: with ``tl.dot`` every 128-wide K block's fresh FP8 product must be waited for
before it is scaled, and Triton 3.6 then leaves the tensor cores idle between blocks (the H100 ran
the plain-Triton kernel at 520-580 TFLOPS on DeepSeek-V3 prefill shapes). Here the pipeline is
explicit: TMA copies fill a ring of ``STAGES`` shared-memory slots, each ready slot feeds one
``wgmma`` per warpgroup (two warpgroups split the token tile), and the next copies are issued while
that wgmma runs. The numerics are those of the plain-Triton kernel (``_gemm_core``): a fresh FP8
product per K block, scaled by its activation and weight scales and added in float32.

Gluon does not run under Triton's interpreter, so the plain-Triton kernel is the twin CI tests;
a GPU test pins the two to each other. Gluon launches cannot be traced by torch.compile, so traced
calls reach this kernel through an opaque custom op (``gemm_wgmma``).
"""

from __future__ import annotations

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

from ._launch import cdiv, is_plain_eager_call, on_device_of
from ._ops import add_op_namespace_prefix
from ._quant import decode_scale
from ._tiles import wgmma_tiles

# The one block shape the kernel serves: a weight tile of 128 rows shares one scale per K block.
BLOCK_SHAPE = (128, 128)
# TMA moves rows whose start and stride are multiples of 16 bytes.
_TMA_ALIGN = 16


@gluon.jit
def _copy_k_block(x_desc, w_desc, x_ring, w_ring, ready, kb, off_m, off_n, k_blocks, STAGES: gl.constexpr):
    """Start the TMA copies of K block ``kb`` of both operands into ring slot ``kb % STAGES``."""
    slot = kb % STAGES
    valid = kb < k_blocks
    bar = ready.index(slot)
    block_k: gl.constexpr = x_desc.block_type.shape[1]
    mbarrier.expect(bar, x_desc.block_type.nbytes + w_desc.block_type.nbytes, pred=valid)
    tma.async_copy_global_to_shared(x_desc, [off_m, kb * block_k], bar, x_ring.index(slot), pred=valid)
    tma.async_copy_global_to_shared(w_desc, [off_n, kb * block_k], bar, w_ring.index(slot), pred=valid)


@gluon.jit
def _gemm_wgmma_kernel(
    x_desc,
    w_desc,
    xs_ptr,
    ws_ptr,
    out_ptr,
    M,
    N,
    K,
    stride_xsm,
    stride_xsk,
    stride_wsn,
    stride_wsk,
    stride_om,
    GROUP_M: gl.constexpr,
    STAGES: gl.constexpr,
    WS_UE8M0: gl.constexpr,
    num_warps: gl.constexpr,
):
    """One program: out tile [BLOCK_M tokens, BLOCK_N columns] over all of K.

    x_desc: (M, K) e4m3 codes, block [BLOCK_M, BLOCK_K]; w_desc: (N, K) e4m3, block [BLOCK_N,
    BLOCK_K] (BLOCK_N = the weight scale block). xs [m, k block] and ws [n block, k block] float32
    scales (ws UE8M0 codes when WS_UE8M0) through strides; out (M, N) through ``stride_om``.
    Out-of-range rows and K columns are zero-filled by TMA and never stored.
    """
    BLOCK_M: gl.constexpr = x_desc.block_type.shape[0]
    BLOCK_K: gl.constexpr = x_desc.block_type.shape[1]
    BLOCK_N: gl.constexpr = w_desc.block_type.shape[0]
    # GROUP_M consecutive programs walk the weight tiles of GROUP_M token tiles: both stay in L2.
    pid = gl.program_id(0)
    tiles_m = gl.cdiv(M, BLOCK_M)
    per_group = GROUP_M * gl.cdiv(N, BLOCK_N)
    first_m = (pid // per_group) * GROUP_M
    group_rows = min(tiles_m - first_m, GROUP_M)
    pid_m = first_m + (pid % per_group) % group_rows
    pid_n = (pid % per_group) // group_rows
    off_m = pid_m * BLOCK_M
    off_n = pid_n * BLOCK_N

    x_ring = gl.allocate_shared_memory(x_desc.dtype, [STAGES, BLOCK_M, BLOCK_K], x_desc.layout)
    w_ring = gl.allocate_shared_memory(w_desc.dtype, [STAGES, BLOCK_N, BLOCK_K], w_desc.layout)
    ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    for i in gl.static_range(STAGES):
        mbarrier.init(ready.index(i), count=1)
    fence_async_shared()
    k_blocks = gl.cdiv(K, BLOCK_K)
    for kb in gl.static_range(STAGES - 1):
        _copy_k_block(x_desc, w_desc, x_ring, w_ring, ready, kb, off_m, off_n, k_blocks, STAGES)

    # One warp per 16 token rows; a wgmma spans the whole weight tile (n = BLOCK_N).
    acc_layout: gl.constexpr = gl.NVMMADistributedLayout(
        version=[3, 0], warps_per_cta=[num_warps, 1], instr_shape=[16, BLOCK_N, 32]
    )
    rows = off_m + gl.arange(0, BLOCK_M, layout=gl.SliceLayout(1, acc_layout))
    xs_rows = xs_ptr + gl.minimum(rows, M - 1) * stride_xsm
    ws_tile = ws_ptr + pid_n * stride_wsn
    acc = gl.zeros((BLOCK_M, BLOCK_N), dtype=gl.float32, layout=acc_layout)
    for kb in range(k_blocks):
        slot = kb % STAGES
        mbarrier.wait(ready.index(slot), (kb // STAGES) & 1)
        x_tile = x_ring.index(slot)
        w_tile = w_ring.index(slot)
        product = warpgroup_mma(x_tile, w_tile.permute((1, 0)), acc, use_acc=False, is_async=True)
        # The slot read by the previous block's wgmma (finished) takes block kb + STAGES - 1.
        _copy_k_block(x_desc, w_desc, x_ring, w_ring, ready, kb + STAGES - 1, off_m, off_n, k_blocks, STAGES)
        scale = gl.load(xs_rows + kb * stride_xsk) * decode_scale(gl.load(ws_tile + kb * stride_wsk), WS_UE8M0)
        product = warpgroup_mma_wait(0, deps=(product, x_tile, w_tile))[0]
        acc += product * scale[:, None]
    for i in gl.static_range(STAGES):
        mbarrier.invalidate(ready.index(i))

    # Through shared memory to a row-major layout: each thread stores 8 consecutive columns.
    out_layout: gl.constexpr = gl.BlockedLayout([1, 8], [4, 8], [num_warps, 1], [1, 0])
    out = gl.convert_layout(acc.to(out_ptr.dtype.element_ty), out_layout)
    out_rows = off_m + gl.arange(0, BLOCK_M, layout=gl.SliceLayout(1, out_layout))
    out_cols = off_n + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, out_layout))
    out_ptrs = out_ptr + out_rows.to(gl.int64)[:, None] * stride_om + out_cols[None, :]
    gl.store(out_ptrs, out, mask=(out_rows < M)[:, None] & (out_cols < N)[None, :])


def _tma_ready(t: torch.Tensor) -> bool:
    """Rows of ``t`` (2-D, K contiguous) start on 16-byte boundaries (storage offsets: FakeTensor-safe)."""
    size = t.element_size()
    return (
        t.stride(-1) == 1 and (t.stride(0) * size) % _TMA_ALIGN == 0 and (t.storage_offset() * size) % _TMA_ALIGN == 0
    )


def serves(x: torch.Tensor, w: torch.Tensor, out: torch.Tensor, block: tuple[int, int] | None) -> bool:
    """Whether this kernel computes ``launch_gemm(w, ws, x, xs, out, block)``: a Hopper GPU, 128x128
    weight blocks, prefill sizes, TMA-aligned operands. Decided from metadata alone (FakeTensor-safe)."""
    return (
        x.device.type == "cuda"
        and torch.cuda.get_device_capability(x.device) == (9, 0)
        and block == BLOCK_SHAPE
        and wgmma_tiles(*x.shape) is not None
        and _tma_ready(x)
        and _tma_ready(w)
        and out.stride(-1) == 1
    )


def _launch(x: torch.Tensor, w: torch.Tensor, xs: torch.Tensor, ws: torch.Tensor, out: torch.Tensor) -> None:
    m, k = x.shape
    n = w.shape[0]
    block_m, stages, num_warps = wgmma_tiles(m, k)
    x_block = [block_m, BLOCK_SHAPE[1]]
    w_block = list(BLOCK_SHAPE)
    x_desc = TensorDescriptor.from_tensor(x, x_block, gl.NVMMASharedLayout.get_default_for(x_block, gl.float8e4nv))
    w_desc = TensorDescriptor.from_tensor(w, w_block, gl.NVMMASharedLayout.get_default_for(w_block, gl.float8e4nv))
    ws_ue8m0 = ws.dtype == torch.float8_e8m0fnu
    ws = ws.view(torch.uint8) if ws_ue8m0 else ws
    xs_strides = (0, 0) if xs.numel() == 1 else (xs.stride(0), xs.stride(1))
    with on_device_of(x):
        _gemm_wgmma_kernel[(cdiv(m, block_m) * cdiv(n, BLOCK_SHAPE[0]),)](
            x_desc, w_desc, xs, ws, out,
            m, n, k,
            *xs_strides, ws.stride(0), ws.stride(1), out.stride(0),
            GROUP_M=8, STAGES=stages, WS_UE8M0=ws_ue8m0, num_warps=num_warps,
        )  # fmt: skip


@torch.library.custom_op(add_op_namespace_prefix("gemm_wgmma"), mutates_args=("out",))
def _gemm_wgmma_op(x: torch.Tensor, w: torch.Tensor, xs: torch.Tensor, ws: torch.Tensor, out: torch.Tensor) -> None:
    _launch(x, w, xs, ws, out)


@torch.library.register_fake(add_op_namespace_prefix("gemm_wgmma"))
def _gemm_wgmma_fake(x: torch.Tensor, w: torch.Tensor, xs: torch.Tensor, ws: torch.Tensor, out: torch.Tensor) -> None:
    return None


def launch(x: torch.Tensor, w: torch.Tensor, xs: torch.Tensor, ws: torch.Tensor, out: torch.Tensor) -> None:
    """``out (M, N) = dequant(x (M, K)) @ dequant(w (N, K)).T`` where ``serves`` said yes.

    xs: (M, ceil(K/128)) float32 activation scales, or one element; ws: (ceil(N/128), ceil(K/128))
    float32 or ``float8_e8m0fnu``. Plain eager calls launch directly; traced calls go through the op.
    """
    xs = xs.reshape(1) if xs.numel() == 1 else xs.reshape(x.shape[0], -1)
    if is_plain_eager_call((x, w, xs, ws, out)):
        _launch(x, w, xs, ws, out)
    else:
        _gemm_wgmma_op(x, w, xs, ws, out)
