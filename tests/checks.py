"""Shared test helpers: random operands and the tolerance check against the reference."""

from __future__ import annotations

import torch
from conftest import HAS_CUDA
from reference import quantize_weight
from torch.utils._python_dispatch import TorchDispatchMode

# Errors relative to the row's largest output. float32 output: the interpreter accumulates exactly
# in float32; Hopper's FP8 wgmma accumulates each 128-wide K block with about 14 mantissa bits before
# the float32 scale-and-add (the same numerics as DeepGEMM), measured at 4e-4 on the H100. On the
# H200 (2026-12-04), 150 seeds of each of four test_batched float32 cases reached 9.4e-4 (99th
# percentile 7.3e-4 to 8.2e-4), and one of four kernels_ci runs there failed once under the earlier
# 1e-3; 2e-3 still sits far below what a wrong scale, code or K block gives (1e-2 and up).
TOL = {torch.float32: 2e-3 if HAS_CUDA else 2e-5, torch.bfloat16: 8e-3, torch.float16: 2e-3 if HAS_CUDA else 1e-3}


def make_weight(n, k, block, gen, device, ue8m0=False):
    """(codes (N, K) e4m3, scales) of random weights whose rows span several binades."""
    w = torch.randn(n, k, generator=gen) * torch.exp2(torch.randint(-4, 5, (n, 1), generator=gen).float())
    q, s = quantize_weight(w, block, ue8m0)
    return q.to(device), s.to(device)


def make_expert_weights(experts, n, k, block, gen, device, ue8m0=False):
    """Stacked (codes (E, N, K), scales (E, ...)): each expert quantized on its own."""
    pairs = [make_weight(n, k, block, gen, device, ue8m0) for _ in range(experts)]
    return torch.stack([q for q, _ in pairs]), torch.stack([s for _, s in pairs]).reshape(experts, *pairs[0][1].shape)


def make_activation(shape, dtype, gen, device, out_dtype=None):
    """Random rows spanning several binades: up to 2**6, or 2**0 when the input or the product's
    ``out_dtype`` is float16, whose outputs would overflow."""
    top = 1 if torch.float16 in (dtype, out_dtype) else 7
    x = torch.randn(shape, generator=gen) * torch.exp2(torch.randint(-6, top, (*shape[:-1], 1), generator=gen).float())
    return x.to(dtype).to(device)


def assert_matches(out, ref, out_dtype, magnitude=None):
    """Elementwise within the output dtype's rounding, relative to the row's largest output.

    ``magnitude`` (optional, ref's shape): each output's sum of |products| (the reference run on
    absolute values). Where a row is short and its sums cancel, the row amax understates the scale
    of the accumulation error (Hopper's FP8 wgmma rounds relative to the summands, not the result),
    so the bound per element is the larger of the two.
    """
    assert out.dtype == out_dtype
    assert out.shape == ref.shape
    assert not torch.isnan(out).any(), "unwritten (NaN-poisoned) or NaN outputs"
    ref = ref.to(out_dtype).double()
    assert ref.isfinite().all(), f"the reference overflows {out_dtype}: the test's data are too large"
    scale = ref.abs().amax(dim=-1, keepdim=True).clamp_min(1e-30)
    if magnitude is not None:
        scale = torch.maximum(scale, magnitude.double())
    err = ((out.cpu().double() - ref) / scale).abs().max().item()
    assert err <= TOL[out_dtype], f"max error {err:.3g} relative to the row amax"


class SeesOps(TorchDispatchMode):
    """A dispatch mode that changes nothing but makes the package's calls go through their registered ops
    (the path torch.compile and export take) instead of the direct eager path."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        return func(*args, **(kwargs or {}))
