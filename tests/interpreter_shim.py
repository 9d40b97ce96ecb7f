"""Exact float conversions, fmas and FP8 dots for Triton's CPU interpreter (tests and the CPU demo only).

Triton's interpreter (3.6) converts floats with its own bit arithmetic, which rounds float32 ->
float8e4nv wrong when rounding carries into the exponent (127.4 -> 64), does not round half to
even, and truncates float32 -> bfloat16 instead of rounding (explicit ``.to()`` and the implicit
cast of a store alike). It also computes ``tl.fma`` as a rounded product plus a rounded sum, and an
FP8 ``tl.dot`` through numpy's float32 matmul, whose summation order depends on where an element
lies in the tile (the same token row gave results one ulp apart in two tile positions), while on
the GPU a row's products do not depend on the position of the row in its tile. GPUs convert
correctly and fuse the fma (one rounding). ``install()`` replaces those three routines:
``triton.runtime.interpreter._convert_float`` with a conversion through torch (round to nearest
even), ``InterpreterBuilder.create_fma`` with a float32 fma rounded once, and
``InterpreterBuilder.create_dot`` of two e4m3 operands with an exact sum rounded once
(``fp8_dot``), so kernel and reference, and two kernels, can be compared bit for bit on the CPU. It
only acts when ``TRITON_INTERPRET=1`` and fails loudly if the internals it replaces are missing.
"""

from __future__ import annotations

import inspect
import os

import numpy as np
import torch


def _torch_dtype(tl_dtype) -> torch.dtype:
    import triton.language as tl

    table = {
        tl.float64: torch.float64,
        tl.float32: torch.float32,
        tl.float16: torch.float16,
        tl.bfloat16: torch.bfloat16,
        tl.float8e4nv: torch.float8_e4m3fn,
        tl.float8e5: torch.float8_e5m2,
    }
    if tl_dtype not in table:
        raise NotImplementedError(f"interpreter shim: no exact conversion for {tl_dtype}")
    return table[tl_dtype]


def _storage(dtype: torch.dtype) -> torch.dtype:
    return {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[dtype.itemsize]


def fused_multiply_add(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
    """float32 ``x * y + z`` rounded once to nearest even, as the GPU's fma.

    The product is exact in float64; the float64 sum is rounded to odd (its TwoSum error decides
    the last bit), and a round-to-odd result with 29 more bits than float32 rounds to float32
    exactly as the exact sum would.
    """
    addend = z.astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        product = x.astype(np.float64) * y.astype(np.float64)
        total = product + addend
        addend_part = total - product
        error = (product - (total - addend_part)) + (addend - addend_part)
    bits = total.view(np.int64)
    to_odd = np.isfinite(total) & (error != 0) & ((bits & 1) == 0)
    away_from_zero = (error > 0) == (total > 0)
    bits = np.where(to_odd, np.where(away_from_zero, bits + 1, bits - 1), bits)
    return bits.view(np.float64).astype(np.float32)


def _replace_routine(owner, owner_name: str, name: str, params: list[str], make_replacement) -> None:
    """Set ``owner.<name>`` to ``make_replacement(original)``, once, after checking that the routine
    exists with the parameters ``params``; ``owner_name`` names ``owner`` in the errors."""
    original = getattr(owner, name, None)
    if original is None or not callable(original):
        raise RuntimeError(f"interpreter shim: {owner_name}.{name} not found; update the shim")
    if getattr(original, "_exact_shim", False):
        return
    found = list(inspect.signature(original).parameters)
    if found != params:
        raise RuntimeError(f"interpreter shim: {name} signature changed to {found}; update the shim")
    replacement = make_replacement(original)
    replacement._exact_shim = True
    setattr(owner, name, replacement)


def _replace_builder_routine(interpreter, name: str, params: list[str], make_replacement) -> None:
    """``_replace_routine`` on a method of the interpreter's ``InterpreterBuilder`` (``params`` after ``self``)."""
    builder = getattr(interpreter, "InterpreterBuilder", None)
    _replace_routine(builder, "InterpreterBuilder", name, ["self", *params], make_replacement)


def _install_fused_fma(interpreter) -> None:
    def make_fma(original):
        def create_fma(self, x, y, z):
            if not (x.data.dtype == y.data.dtype == z.data.dtype == np.float32):
                return original(self, x, y, z)
            return interpreter.TensorHandle(fused_multiply_add(x.data, y.data, z.data), z.dtype.scalar)

        return create_fma

    _replace_builder_routine(interpreter, "create_fma", ["x", "y", "z"], make_fma)


def fp8_dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """float32 ``a @ b`` of FP8 values (any float arrays holding them), each element the exact sum
    rounded once to nearest even: the same wherever the element lies in the tile.

    Products of e4m3 values (2**-9 to 448) are multiples of 2**-18 below 2**18, so any sum of fewer
    than 2**17 of them is exact in float64 whatever the order of the additions.
    """
    if a.shape[-1] >= 2**17:
        raise ValueError(f"interpreter shim: an FP8 dot over K = {a.shape[-1]} may not be exact in float64")
    return np.matmul(a.astype(np.float64), b.astype(np.float64)).astype(np.float32)


def _install_exact_fp8_dot(interpreter) -> None:
    import triton.language as tl

    def values(operand) -> np.ndarray:
        return interpreter._convert_float(operand.data, operand.dtype, tl.float16, None).view(np.float16)

    def make_dot(original):
        def create_dot(self, a, b, d, input_precision, max_num_imprecise_acc):
            if a.dtype.scalar != tl.float8e4nv or b.dtype.scalar != tl.float8e4nv or d.data.dtype != np.float32:
                return original(self, a, b, d, input_precision, max_num_imprecise_acc)
            return interpreter.TensorHandle(fp8_dot(values(a), values(b)) + d.data, d.dtype.scalar)

        return create_dot

    params = ["a", "b", "d", "input_precision", "max_num_imprecise_acc"]
    _replace_builder_routine(interpreter, "create_dot", params, make_dot)


def _install_exact_conversion(interpreter) -> None:
    ir = getattr(interpreter, "_ir", None)
    if ir is None or not hasattr(ir, "ROUNDING_MODE"):
        raise RuntimeError("interpreter shim: triton.runtime.interpreter._ir.ROUNDING_MODE not found; update the shim")
    rtne = ir.ROUNDING_MODE.RTNE

    def exact_convert_float(input, input_dtype, output_dtype, rounding_mode):
        if rounding_mode not in (None, rtne):
            raise NotImplementedError(f"interpreter shim: rounding mode {rounding_mode} is not supported")
        src, dst = _torch_dtype(input_dtype), _torch_dtype(output_dtype)
        raw = torch.from_numpy(np.array(input, copy=True)).view(_storage(src)).view(src)
        out = raw.to(dst).view(_storage(dst)).numpy()
        width = output_dtype.primitive_bitwidth
        return out.view(getattr(np, f"uint{width}"))

    params = ["input", "input_dtype", "output_dtype", "rounding_mode"]
    _replace_routine(interpreter, "triton.runtime.interpreter", "_convert_float", params, lambda _: exact_convert_float)


def install() -> bool:
    """Patch the interpreter's float conversion, fma and FP8 dot; returns False (and does nothing) when
    not interpreting."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        return False
    from triton.runtime import interpreter

    _install_exact_conversion(interpreter)
    _install_fused_fma(interpreter)
    _install_exact_fp8_dot(interpreter)
    return True
