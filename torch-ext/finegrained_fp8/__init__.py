"""finegrained-fp8: Triton kernels for DeepSeek-style block-wise FP8 inference.

Importing this package touches neither the GPU nor Triton's driver; kernels compile on first call.
The public API is ``__all__``; see README.md for the contract of each function.
"""

from ._ops import ops as ops  # the registered torch ops, for opcheck and introspection
from .act_quant import fp8_act_quant

__all__ = [
    "fp8_act_quant",
]
