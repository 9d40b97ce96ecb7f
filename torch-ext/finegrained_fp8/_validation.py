"""Input validation shared by every public entry point.

Every check runs on shapes, dtypes and devices only (never on tensor values), so it is safe under
FakeTensor tracing and inside CUDA-graph capture, and it always runs before any kernel launch.
Wrong types raise ``TypeError``; wrong shapes, values and placements raise ``ValueError``. Each
message starts with the name of the offending argument.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import torch

from ._device import device_facts
from ._scaling import PER_TENSOR, Scaling

FP8_DTYPE = torch.float8_e4m3fn
ACTIVATION_DTYPES = (torch.bfloat16, torch.float16, torch.float32)
OUTPUT_DTYPES = (torch.bfloat16, torch.float16, torch.float32)
SCALE_DTYPES = (torch.float32, torch.float8_e8m0fnu)
SUPPORTED_BLOCK_K = (32, 64, 128, 256)


def interpreting() -> bool:
    """True when Triton runs kernels through its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _dtype_names(dtypes: Sequence[torch.dtype]) -> str:
    return ", ".join(str(d).removeprefix("torch.") for d in dtypes)


def check_tensor(
    name: str,
    t: object,
    dtypes: Sequence[torch.dtype],
    ndim: int | Sequence[int] | None = None,
    min_ndim: int | None = None,
) -> torch.Tensor:
    """Check that ``t`` is a tensor of one of ``dtypes`` with an allowed rank; return it."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in dtypes:
        raise TypeError(f"{name} must have dtype {_dtype_names(dtypes)}, got {t.dtype}")
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if t.dim() not in allowed:
            raise ValueError(
                f"{name} must have {' or '.join(map(str, allowed))} dimensions, got shape {tuple(t.shape)}"
            )
    if min_ndim is not None and t.dim() < min_ndim:
        raise ValueError(f"{name} must have at least {min_ndim} dimension(s), got shape {tuple(t.shape)}")
    return t


def check_output_dtype(name: str, dtype: object) -> torch.dtype:
    if not isinstance(dtype, torch.dtype) or dtype not in OUTPUT_DTYPES:
        raise TypeError(f"{name} must be one of {_dtype_names(OUTPUT_DTYPES)}, got {dtype!r}")
    return dtype


def check_devices(**tensors: torch.Tensor | None) -> None:
    """All given tensors share one device, and that device can run Triton kernels here."""
    named = [(n, t) for n, t in tensors.items() if t is not None]
    first_name, first = named[0]
    for name, t in named[1:]:
        if t.device != first.device:
            raise ValueError(
                f"{name} is on {t.device} but {first_name} is on {first.device}; all tensors must be on one device"
            )
    if first.device.type == "cpu" and not interpreting():
        raise ValueError(
            f"{first_name} is a CPU tensor; the kernels need a GPU tensor "
            "(or TRITON_INTERPRET=1 to run them through Triton's interpreter)"
        )
    facts = device_facts(first.device)
    if facts.fp8_problem is not None:
        raise ValueError(
            f"{first_name} is on {first.device} ({facts.name}, {facts.arch}), where finegrained-fp8 cannot run: "
            f"{facts.fp8_problem}"
        )


def check_positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value <= 0:
        raise ValueError(f"{name} must be positive, got {value}")
    return value


def resolve_block_size(block_size: object, n: int, k: int) -> Scaling:
    """The scaling of a weight of shape ``[n, k]`` that ``block_size`` asks for: per-tensor where it is
    None or equal to ``[n, k]``, else per ``[block_n, block_k]`` block."""
    if block_size is None:
        return PER_TENSOR
    if isinstance(block_size, torch.Tensor) or not isinstance(block_size, Sequence):
        raise TypeError(f"block_size must be a list or tuple [block_n, block_k] or None, got {block_size!r}")
    if len(block_size) != 2:
        raise ValueError(f"block_size must have two entries [block_n, block_k], got {list(block_size)}")
    block_n = check_positive_int("block_size[0]", block_size[0])
    block_k = check_positive_int("block_size[1]", block_size[1])
    if (block_n, block_k) == (n, k):
        return PER_TENSOR
    if block_k not in SUPPORTED_BLOCK_K:
        raise ValueError(
            f"block_size[1] (block_k) must be one of {SUPPORTED_BLOCK_K} for block-wise scaling, got {block_k}"
        )
    return Scaling(block_n, block_k)


def check_weight_scale(
    name: str, bs: torch.Tensor, leading: tuple[int, ...], n: int, k: int, scaling: Scaling
) -> torch.Tensor:
    """Check ``Bs`` (weight_scale_inv): ``[*leading, ceil(n/block_n), ceil(k/block_k)]`` or a per-tensor scale.

    Per-tensor scales may be given as one element per leading index (``[*leading]``, with any trailing
    dimensions of size 1).
    """
    check_tensor(name, bs, SCALE_DTYPES)
    if not scaling.per_block:
        if bs.numel() != math.prod(leading):
            raise ValueError(
                f"{name} must hold one per-tensor scale per weight matrix ({math.prod(leading)}), "
                f"got shape {tuple(bs.shape)}"
            )
        return bs
    expected = (*leading, math.ceil(n / scaling.block_n), math.ceil(k / scaling.block_k))
    if tuple(bs.shape) != expected:
        raise ValueError(
            f"{name} must have shape {list(expected)} for weights [{', '.join(map(str, (*leading, n, k)))}] "
            f"and block_size {list(scaling.op_args)}, got {list(bs.shape)}"
        )
    return bs


def check_k_matches(a_name: str, a: torch.Tensor, b_name: str, b: torch.Tensor) -> int:
    k = b.shape[-1]
    if a.shape[-1] != k:
        raise ValueError(f"{a_name} has K={a.shape[-1]} in its last dimension but {b_name} has K={k}; they must match")
    return k


def check_vector(name: str, t: object, dtypes: Sequence[torch.dtype], length: int, length_of: str) -> torch.Tensor:
    """Check that ``t`` is a 1-D tensor of one of ``dtypes`` holding ``length`` entries (``length_of`` says why)."""
    check_tensor(name, t, dtypes, ndim=1)
    if t.shape[0] != length:
        raise ValueError(f"{name} must have {length} entries ({length_of}), got {t.shape[0]}")
    return t


def check_weights(a: torch.Tensor, b: torch.Tensor, bs: torch.Tensor, block_size: object, stacked: bool) -> Scaling:
    """Check the FP8 weights ``B`` ((N, K), or (E, N, K) when ``stacked``), their K against ``A`` and
    their scales ``Bs`` against ``block_size``; return their scaling."""
    check_tensor("B", b, (FP8_DTYPE,), ndim=3 if stacked else 2)
    *leading, n, k = b.shape
    check_k_matches("A", a, "B", b)
    scaling = resolve_block_size(block_size, n, k)
    check_weight_scale("Bs", bs, tuple(leading), n, k, scaling)
    return scaling
