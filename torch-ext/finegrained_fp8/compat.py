"""The generation-1 names (Hub version 1; Transformers 5.4 to 5.10 call them): thin wrappers over the
matmuls. ``w8a8_fp8_matmul*`` take the scaling mode from ``block_size`` (None or [N, K]: per-tensor);
the ``block`` and ``tensor`` names fix it. Expert results come in A's dtype."""

from __future__ import annotations

import torch

from .dense import matmul_prequantized
from .moe import matmul_batched, matmul_grouped

BlockSize = list[int] | tuple[int, int] | None


def _require_block(block_size: BlockSize, function: str) -> None:
    if block_size is None:
        raise ValueError(f"block_size must be [block_n, block_k] for {function}")


def w8a8_fp8_matmul(
    A: torch.Tensor,
    B: torch.Tensor,
    As: torch.Tensor,
    Bs: torch.Tensor,
    block_size: BlockSize,
    output_dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """``matmul_prequantized``: pre-quantized A (..., K) e4m3 with its scales As, weights B (N, K)."""
    return matmul_prequantized(A, B, As, Bs, block_size, output_dtype)


def w8a8_block_fp8_matmul(
    A: torch.Tensor,
    B: torch.Tensor,
    As: torch.Tensor,
    Bs: torch.Tensor,
    block_size: BlockSize,
    output_dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Block-scaled ``w8a8_fp8_matmul``; ``block_size`` is required."""
    _require_block(block_size, "w8a8_block_fp8_matmul")
    return matmul_prequantized(A, B, As, Bs, block_size, output_dtype)


def w8a8_tensor_fp8_matmul(
    A: torch.Tensor, B: torch.Tensor, As: torch.Tensor, Bs: torch.Tensor, output_dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Per-tensor ``w8a8_fp8_matmul``: As one element, (M,) or (M, 1); Bs one element."""
    return matmul_prequantized(A, B, As, Bs, None, output_dtype)


def w8a8_fp8_matmul_batched(
    A: torch.Tensor, B: torch.Tensor, Bs: torch.Tensor, expert_ids: torch.Tensor, block_size: BlockSize
) -> torch.Tensor:
    """``matmul_batched`` with C in A's dtype."""
    return matmul_batched(A, B, Bs, expert_ids, block_size)


def w8a8_block_fp8_matmul_batched(
    A: torch.Tensor, B: torch.Tensor, Bs: torch.Tensor, expert_ids: torch.Tensor, block_size: BlockSize
) -> torch.Tensor:
    """Block-scaled ``matmul_batched``; ``block_size`` is required."""
    _require_block(block_size, "w8a8_block_fp8_matmul_batched")
    return matmul_batched(A, B, Bs, expert_ids, block_size)


def w8a8_tensor_fp8_matmul_batched(
    A: torch.Tensor, B: torch.Tensor, Bs: torch.Tensor, expert_ids: torch.Tensor
) -> torch.Tensor:
    """Per-tensor ``matmul_batched``: Bs (E,) or (E, 1, 1); activations get one scale per row."""
    return matmul_batched(A, B, Bs, expert_ids, None)


def w8a8_fp8_matmul_grouped(
    A: torch.Tensor,
    B: torch.Tensor,
    Bs: torch.Tensor,
    offsets: torch.Tensor,
    tokens_per_expert: torch.Tensor,
    block_size: BlockSize,
) -> torch.Tensor:
    """``matmul_grouped`` with C in A's dtype."""
    return matmul_grouped(A, B, Bs, offsets, tokens_per_expert, block_size)


def w8a8_block_fp8_matmul_grouped(
    A: torch.Tensor,
    B: torch.Tensor,
    Bs: torch.Tensor,
    offsets: torch.Tensor,
    tokens_per_expert: torch.Tensor,
    block_size: BlockSize,
) -> torch.Tensor:
    """Block-scaled ``matmul_grouped``; ``block_size`` is required."""
    _require_block(block_size, "w8a8_block_fp8_matmul_grouped")
    return matmul_grouped(A, B, Bs, offsets, tokens_per_expert, block_size)


def w8a8_tensor_fp8_matmul_grouped(
    A: torch.Tensor, B: torch.Tensor, Bs: torch.Tensor, offsets: torch.Tensor, tokens_per_expert: torch.Tensor
) -> torch.Tensor:
    """Per-tensor ``matmul_grouped``: Bs (E,) or (E, 1, 1); activations get one scale per row."""
    return matmul_grouped(A, B, Bs, offsets, tokens_per_expert, None)
