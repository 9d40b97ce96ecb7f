"""The activation-quantization arithmetic every kernel shares (Triton device functions).

Dynamic scheme (the contract in README.md): per row and per group of ``block_k`` elements,
``s = max(amax(|x|) / 448, 1e-12)`` and ``q = e4m3(clamp(x / s, -448, 448))``, rounded to nearest
even. The quotients are IEEE round-to-nearest (``tl.div_rn``, or ``divide_by_scale``, which gives
the same codes with one division per group): Triton's plain ``/`` on float32 is an approximate
division on NVIDIA GPUs and would not reproduce the reference bit for bit.

Non-finite input follows torch's semantics: the group amax and clamp propagate NaN (the GPU's
min/max instructions would otherwise drop it and turn a NaN activation into a finite +-448 code), so
a NaN gives its group a NaN scale and NaN codes, and an Inf an infinite scale; the row's outputs
become non-finite and no other row or group is touched.
"""

import triton
import triton.language as tl

FP8_MAX = tl.constexpr(448.0)
SCALE_FLOOR = tl.constexpr(1e-12)


@triton.jit
def round_scale_up_to_power_of_two(s):
    """Smallest power of two >= ``s`` (positive normal float32, or +Inf / NaN kept as they are): a UE8M0 scale."""
    bits = s.to(tl.int32, bitcast=True)
    exponent = (bits >> 23) & 0xFF
    exponent += ((bits & 0x7FFFFF) != 0).to(tl.int32)
    return tl.where(s == s, (exponent << 23).to(tl.float32, bitcast=True), s)  # NaN stays NaN


@triton.jit
def _max_keeping_nan(a, b):
    return tl.maximum(a, b, propagate_nan=tl.PropagateNan.ALL)


@triton.jit
def dynamic_scale(amax, POWER_OF_TWO_SCALE: tl.constexpr):
    """The dequantization scale of a group with largest magnitude ``amax``: ``max(amax / 448, 1e-12)``."""
    s = tl.maximum(tl.div_rn(amax, FP8_MAX), SCALE_FLOOR, propagate_nan=tl.PropagateNan.ALL)
    if POWER_OF_TWO_SCALE:
        s = round_scale_up_to_power_of_two(s)
    return s


@triton.jit
def divide_by_scale(x, s):
    """``x / s`` for a dynamic scale ``s`` (>= 1e-12, +Inf or NaN; broadcast against ``x``), float32.

    One IEEE division per scale instead of one per element (an IEEE division per element made the
    quantization kernel ALU-bound on the H200). With ``r = RN(1 / s)`` and ``q0 = RN(x r)``
    (within 1 ulp of ``x / s``), the residual ``e = x - q0 s`` is exact as an fma, and
    ``RN(q0 + e r) = RN(x / s)`` (Markstein's theorem). Where ``e`` is 0, ``q0`` is the exact
    quotient (this keeps the sign of a zero); where ``e`` is NaN (``s = +Inf``), ``q0 = x * 0`` is
    the quotient. So every fp8 code equals the one of ``tl.div_rn``: the quotients can differ only
    below 2**-62 (|x| < 2**-102, where the residual underflows), and those round to a zero code
    either way.
    """
    r = tl.div_rn(1.0, s)
    q0 = x * r
    e = tl.fma(-q0, s, x)
    return tl.where((e != 0) & (e == e), tl.fma(e, r, q0), q0)


@triton.jit
def quantize_rows(x, POWER_OF_TWO_SCALE: tl.constexpr):
    """Quantize each row of ``x`` ([R, G] float32, one group per row) to e4m3.

    Returns ``(q [R, G] float8e4nv, s [R] float32)`` with ``x ~= q * s[:, None]``. Masked-out
    elements must be loaded as 0 so that they do not change the row's amax.
    """
    s = dynamic_scale(tl.reduce(tl.abs(x), 1, _max_keeping_nan), POWER_OF_TWO_SCALE)
    quotient = divide_by_scale(x, s[:, None])
    q = tl.clamp(quotient, -FP8_MAX, FP8_MAX, propagate_nan=tl.PropagateNan.ALL).to(tl.float8e4nv)
    return q, s


@triton.jit
def quantize_static(x, scale):
    """Quantize ``x`` (float32) with a given ``scale`` (one per tensor, or broadcast per row):
    ``e4m3(clamp(x / scale))``."""
    return tl.clamp(tl.div_rn(x, scale), -FP8_MAX, FP8_MAX, propagate_nan=tl.PropagateNan.ALL).to(tl.float8e4nv)


@triton.jit
def decode_scale(raw, IS_UE8M0: tl.constexpr):
    """Scales as float32: UE8M0 codes (loaded as uint8) become ``2 ** (code - 127)``."""
    if IS_UE8M0:
        scale = (raw.to(tl.int32) << 23).to(tl.float32, bitcast=True)
    else:
        scale = raw
    return scale
