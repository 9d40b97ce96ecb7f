"""Plain-torch references for every kernel: quantize, dequantize, block matmul, MoE routing.

Written for clarity, not speed: float32 quantization exactly as the contract in README.md states it, and float64
matmuls of dequantized operands.
"""

from __future__ import annotations

import math

import torch

FP8 = torch.float8_e4m3fn
FP8_MAX = 448.0


def _pad_last(x: torch.Tensor, multiple: int) -> torch.Tensor:
    pad = (-x.shape[-1]) % multiple
    return torch.nn.functional.pad(x, (0, pad)) if pad else x


def power_of_two_ceil(s: torch.Tensor) -> torch.Tensor:
    """Smallest power of two >= s (exact, through frexp); Inf and NaN stay as they are."""
    mantissa, exponent = torch.frexp(s)
    ceil = torch.ldexp(torch.ones_like(s), torch.where(mantissa == 0.5, exponent - 1, exponent))
    return torch.where(s.isfinite(), ceil, s)


def quantize(x: torch.Tensor, group: int, power_of_two_scale: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference fp8_act_quant: q (..., K) e4m3, s (..., ceil(K/group)) float32."""
    k = x.shape[-1]
    xg = _pad_last(x.float(), group).unflatten(-1, (-1, group))
    s = torch.clamp(xg.abs().amax(dim=-1) / FP8_MAX, min=1e-12)
    if power_of_two_scale:
        s = power_of_two_ceil(s)
    q = torch.clamp(xg / s.unsqueeze(-1), -FP8_MAX, FP8_MAX).to(FP8)
    return q.flatten(-2)[..., :k], s


def quantize_static(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return torch.clamp(x.float() / scale.float().reshape(()), -FP8_MAX, FP8_MAX).to(FP8)


def expand_groups(s: torch.Tensor, group: int, length: int) -> torch.Tensor:
    """Repeat each scale along the last dim ``group`` times and cut to ``length``."""
    return s.repeat_interleave(group, dim=-1)[..., :length]


def dequantize_activation(q: torch.Tensor, s: torch.Tensor, group: int) -> torch.Tensor:
    """float64 (..., K) from codes and per-group scales (s may also be a scalar or per-row)."""
    k = q.shape[-1]
    s = s.double()
    if s.dim() == q.dim() and s.shape[-1] == math.ceil(k / group):
        s = expand_groups(s, group, k)
    elif s.numel() != 1:
        s = s.reshape(*q.shape[:-1], 1)
    return q.double() * s


def weight_scales_float(bs: torch.Tensor) -> torch.Tensor:
    return bs.float() if bs.dtype == torch.float8_e8m0fnu else bs


def dequantize_weight(b: torch.Tensor, bs: torch.Tensor, block: tuple[int, int] | None) -> torch.Tensor:
    """float64 (..., N, K) weights from codes and block (or per-tensor) scales."""
    n, k = b.shape[-2:]
    bs = weight_scales_float(bs).double()
    if block is None:
        return b.double() * bs.reshape(*b.shape[:-2], 1, 1)
    full = expand_groups(bs, block[1], k)
    full = expand_groups(full.transpose(-1, -2), block[0], n).transpose(-1, -2)
    return b.double() * full


def quantize_weight(w: torch.Tensor, block: tuple[int, int] | None, ue8m0: bool = False):
    """Random-weight helper for tests: (codes e4m3, scales) with per-block amax scaling."""
    w = w.float()
    if block is None:
        s = torch.clamp(w.abs().amax() / FP8_MAX, min=1e-12)
        if ue8m0:
            s = power_of_two_ceil(s)
        return torch.clamp(w / s, -FP8_MAX, FP8_MAX).to(FP8), s.reshape(1)
    n, k = w.shape[-2:]
    bn, bk = block
    wp = torch.nn.functional.pad(w, (0, (-k) % bk, 0, (-n) % bn))
    tiles = wp.unflatten(-1, (-1, bk)).unflatten(-3, (-1, bn))  # [..., nb, bn, kb, bk]
    s = torch.clamp(tiles.abs().amax(dim=(-3, -1)) / FP8_MAX, min=1e-12)  # [..., nb, kb]
    if ue8m0:
        s = power_of_two_ceil(s)
    full = expand_groups(expand_groups(s, bk, k).transpose(-1, -2), bn, n).transpose(-1, -2)
    q = torch.clamp(w / full, -FP8_MAX, FP8_MAX).to(FP8)
    if ue8m0:
        s = s.to(torch.float8_e8m0fnu)
    return q, s


def matmul_reference(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """float64 ``a @ b.T`` for dequantized operands."""
    return a.double() @ b.double().transpose(-1, -2)


def moe_reference(
    a: torch.Tensor, b: torch.Tensor, bs: torch.Tensor, expert_ids: torch.Tensor, block, absolute: bool = False
) -> torch.Tensor:
    """float64 (S, N): row s quantized as fp8_act_quant (per block_k group, or per row in per-tensor
    mode), dequantized and multiplied by expert ``expert_ids[s]``; rows with ids outside [0, E) are 0.
    ``absolute``: multiply the absolute values instead (each output's sum of |products|)."""
    group = a.shape[-1] if block is None else block[1]
    q, s = quantize(a.cpu(), group)
    rows = dequantize_activation(q, s, group)
    weights = dequantize_weight(b.cpu(), bs.cpu(), block)
    if absolute:
        rows, weights = rows.abs(), weights.abs()
    ids = expert_ids.cpu()
    out = torch.zeros(a.shape[0], b.shape[1], dtype=torch.float64)
    for e in range(b.shape[0]):
        chosen = ids == e
        out[chosen] = matmul_reference(rows[chosen], weights[e])
    return out


def group_by_expert(a: torch.Tensor, expert_ids: torch.Tensor, num_experts: int):
    """Transformers' grouped-call protocol: (rows sorted by expert, offsets int32, tokens_per_expert
    float32, sorted ids, perm). Sentinel ids (>= E) sort to the tail and are not counted."""
    ids_sorted, perm = torch.sort(expert_ids)
    counts = torch.bincount(ids_sorted.clamp(max=num_experts), minlength=num_experts + 1)
    tokens_per_expert = counts[:num_experts].float()
    offsets = torch.cumsum(tokens_per_expert, 0, dtype=torch.int32)
    return a[perm], offsets, tokens_per_expert, ids_sorted, perm
