"""finegrained-fp8: Triton kernels for DeepSeek-style block-wise FP8 inference.

Importing this package touches neither the GPU nor Triton's driver; kernels compile on first call.
The public API is ``__all__``; see README.md for the contract of each function.
"""

from ._ops import ops as ops  # the registered torch ops, for opcheck and introspection
from .act_quant import fp8_act_quant
from .compat import (
    w8a8_block_fp8_matmul,
    w8a8_block_fp8_matmul_batched,
    w8a8_block_fp8_matmul_grouped,
    w8a8_fp8_matmul,
    w8a8_fp8_matmul_batched,
    w8a8_fp8_matmul_grouped,
    w8a8_tensor_fp8_matmul,
    w8a8_tensor_fp8_matmul_batched,
    w8a8_tensor_fp8_matmul_grouped,
)
from .dense import matmul, matmul_2d
from .moe import matmul_batched, matmul_grouped

__all__ = [
    "fp8_act_quant",
    "matmul",
    "matmul_2d",
    "matmul_batched",
    "matmul_grouped",
    "w8a8_block_fp8_matmul",
    "w8a8_block_fp8_matmul_batched",
    "w8a8_block_fp8_matmul_grouped",
    "w8a8_fp8_matmul",
    "w8a8_fp8_matmul_batched",
    "w8a8_fp8_matmul_grouped",
    "w8a8_tensor_fp8_matmul",
    "w8a8_tensor_fp8_matmul_batched",
    "w8a8_tensor_fp8_matmul_grouped",
]
