"""The CPU tests' exact arithmetic (``interpreter_shim``) against exact rational arithmetic."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import torch
from interpreter_shim import fp8_dot, fused_multiply_add
from reference import FP8


def _nearest_float32_to(exact: Fraction) -> float:
    """The float32 nearest to ``exact``, ties to even (by comparing against both neighbours)."""
    guess = np.float32(float(exact))
    best = guess
    for candidate in (np.nextafter(guess, np.float32(-np.inf)), np.nextafter(guess, np.float32(np.inf))):
        d_best, d_candidate = abs(Fraction(float(best)) - exact), abs(Fraction(float(candidate)) - exact)
        even = int(np.array(candidate).view(np.int32)) % 2 == 0
        if d_candidate < d_best or (d_candidate == d_best and even):
            best = candidate
    return float(best)


def test_interpreter_shim_fma_rounds_once(gen):
    """The CPU tests' fma (interpreter_shim) against exact rational arithmetic, cancellations included."""
    x, y, z = (
        (torch.randn(3000, generator=gen) * torch.exp2(torch.randint(-30, 30, (3000,), generator=gen))).numpy()
        for _ in range(3)
    )
    z[:1500] = -(x[:1500] * y[:1500])  # the product's rounding error is what is left
    got = fused_multiply_add(x, y, z)
    for xi, yi, zi, gi in zip(x, y, z, got, strict=True):
        exact = Fraction(float(xi)) * Fraction(float(yi)) + Fraction(float(zi))
        assert float(gi) == _nearest_float32_to(exact), (xi, yi, zi)


def _random_fp8_values(shape, gen) -> np.ndarray:
    """Random e4m3 values from the whole range, subnormals and +-448 included."""
    codes = torch.randint(0, 256, shape, generator=gen, dtype=torch.int32).to(torch.uint8)
    codes[(codes & 0x7F) == 0x7F] = 0x7E  # the NaN codes become +-448
    return codes.view(FP8).float().numpy()


def test_interpreter_shim_fp8_dot_is_exact_wherever_the_element_lies(gen):
    """Each element of the CPU tests' FP8 dot is its exact sum rounded once, so a row's results do not
    depend on where the row lies in the tile (the interpreter's own dot gave one-ulp differences)."""
    a, b = _random_fp8_values((24, 128), gen), _random_fp8_values((128, 20), gen)
    got = fp8_dot(a, b)
    assert got.dtype == np.float32
    picked = zip(torch.randint(0, 24, (200,), generator=gen), torch.randint(0, 20, (200,), generator=gen), strict=True)
    for i, j in picked:
        exact = sum(Fraction(float(x)) * Fraction(float(y)) for x, y in zip(a[i], b[:, j], strict=True))
        assert float(got[i, j]) == _nearest_float32_to(exact), (i, j)
    rows, cols = torch.randperm(24, generator=gen).numpy(), torch.randperm(20, generator=gen).numpy()
    assert np.array_equal(fp8_dot(a[rows], b[:, cols]), got[rows][:, cols])
