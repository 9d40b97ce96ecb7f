"""Launch helpers shared by every op: device guard and device facts."""

from __future__ import annotations

import contextlib
import functools

import torch


def on_device_of(t: torch.Tensor) -> contextlib.AbstractContextManager:
    """Make ``t``'s GPU current for the launches inside (no-op for CPU tensors under the interpreter)."""
    if t.device.type == "cuda":
        return torch.cuda.device(t.device)
    return contextlib.nullcontext()


@functools.cache
def _multiprocessor_count(device_type: str, index: int | None) -> int:
    if device_type == "cuda":
        return torch.cuda.get_device_properties(index).multi_processor_count
    return 4


def multiprocessor_count(device: torch.device) -> int:
    """Number of SMs of ``device`` (a small fixed number for the CPU interpreter). Queried lazily."""
    index = (
        device.index if device.index is not None else (torch.cuda.current_device() if device.type == "cuda" else None)
    )
    return _multiprocessor_count(device.type, index)


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def next_power_of_two(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


def with_unit_k_stride(t: torch.Tensor) -> torch.Tensor:
    """``t`` itself when its last dimension (K) is contiguous, else a contiguous copy."""
    return t if t.shape[-1] <= 1 or t.stride(-1) == 1 else t.contiguous()


def block_from_op_args(block_n: int, block_k: int) -> tuple[int, int] | None:
    """Ops carry the scaling mode as two ints: (0, 0) means per-tensor weight scales."""
    return None if block_n == 0 else (block_n, block_k)


def block_to_op_args(block: tuple[int, int] | None) -> tuple[int, int]:
    """The two op ints for ``block`` ((block_n, block_k), or None for per-tensor): see ``block_from_op_args``."""
    return block if block is not None else (0, 0)
