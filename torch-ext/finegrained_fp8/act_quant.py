"""Activation quantization, the public op: ``fp8_act_quant`` (dynamic per-row groups)."""

from __future__ import annotations

import torch

from ._launch import registered_op
from ._quantize import as_rows, quantize_2d
from ._validation import ACTIVATION_DTYPES, check_devices, check_positive_int, check_tensor


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
