"""Launch helpers shared by every op: op registration with its eager path, device guard, device facts,
and programmatic dependent launch."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from typing import TypeVar

import torch
import triton
import triton.language as tl
from torch.library import triton_op
from torch.utils._python_dispatch import _get_current_dispatch_mode
from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait

try:  # what triton_op's own eager backend does: launch wrap_triton kernels directly, not as a HOP
    from torch._library.triton import is_wrap_triton_enabled, set_wrap_triton_enabled
except ImportError:  # a torch without it: every call goes through the op
    is_wrap_triton_enabled = set_wrap_triton_enabled = None

from ._ops import add_op_namespace_prefix

_Impl = TypeVar("_Impl", bound=Callable[..., object])
# Tensor types an eager call may hand straight to the implementation (module weights are Parameters).
_PLAIN_TENSOR_TYPES = (torch.Tensor, torch.nn.Parameter)


def is_plain_eager_call(args: tuple) -> bool:
    """An eager call on ordinary tensors: no compile, export or jit trace, no dispatch mode watching,
    no fake or functional tensor subclass, no autograd graph to record."""
    if set_wrap_triton_enabled is None or torch.compiler.is_compiling() or torch.jit.is_tracing():
        return False
    if _get_current_dispatch_mode() is not None:
        return False
    grad = torch.is_grad_enabled()
    return all(
        type(a) in _PLAIN_TENSOR_TYPES and not (grad and a.requires_grad) for a in args if isinstance(a, torch.Tensor)
    )


def registered_op(name: str) -> Callable[[_Impl], _Impl]:
    """Register ``impl`` as the ``triton_op`` ``name`` (what torch.compile, export, fake tensors and
    ``torch.ops`` see) and return a caller that runs ``impl`` directly on plain eager calls, skipping
    torch's op dispatch, whose host cost per call is several times a decode kernel's GPU time."""

    def register(impl: _Impl) -> _Impl:
        op = triton_op(add_op_namespace_prefix(name), mutates_args=())(impl)

        @functools.wraps(impl)
        def call(*args):
            if not is_plain_eager_call(args):
                return op(*args)
            with set_wrap_triton_enabled(False):  # else each launch is a higher-order op (~1 ms)
                return impl(*args)

        return call  # type: ignore[return-value]

    return register


def on_device_of(t: torch.Tensor) -> contextlib.AbstractContextManager:
    """Make ``t``'s GPU current for the launches inside (no-op for CPU tensors under the interpreter)."""
    if t.device.type == "cuda":
        return torch.cuda.device(t.device)
    return contextlib.nullcontext()


@functools.cache
def _device_facts(device_type: str, index: int | None) -> tuple[int, tuple[int, int] | None]:
    """(SM count, compute capability) of a GPU; a small fixed SM count and no capability for the CPU."""
    if device_type == "cuda":
        props = torch.cuda.get_device_properties(index)
        return props.multi_processor_count, (props.major, props.minor)
    return 4, None


def _facts_of(device: torch.device) -> tuple[int, tuple[int, int] | None]:
    index = (
        device.index if device.index is not None else (torch.cuda.current_device() if device.type == "cuda" else None)
    )
    return _device_facts(device.type, index)


def multiprocessor_count(device: torch.device) -> int:
    """Number of SMs of ``device`` (a small fixed number for the CPU interpreter). Queried lazily, once."""
    return _facts_of(device)[0]


def compute_capability(device: torch.device) -> tuple[int, int] | None:
    """(major, minor) of a CUDA ``device``, None for the CPU. Queried lazily, once."""
    return _facts_of(device)[1]


def supports_dependent_launch(device: torch.device) -> bool:
    """Whether ``device`` has programmatic dependent launch (Hopper and later)."""
    return (compute_capability(device) or (0, 0)) >= (9, 0)


def dependent_launch_options(device: torch.device) -> dict:
    """Launch arguments of a kernel that calls ``wait_for_previous_kernel(PDL)`` first: on Hopper and
    later, on the direct eager path (kernels launched by Triton itself, not traced), the kernel is
    launched while the previous one finishes (its setup overlaps that kernel's tail). H100, one call
    of a CUDA graph: batched MoE at 1 token 1-2 us faster (Qwen3-30B 13.4 -> 11.6 us).

    Not for persistent kernels (the Gluon GEMM): programs launched early land on whichever SMs have
    room, so some SMs get more than their share (H100, M = 128: 60 us -> 74-91 us)."""
    enabled = is_wrap_triton_enabled is not None and not is_wrap_triton_enabled() and supports_dependent_launch(device)
    return {"PDL": True, "launch_pdl": True} if enabled else {"PDL": False}


@triton.jit
def wait_for_previous_kernel(PDL: tl.constexpr):
    """With PDL: wait until the kernel before this one in the stream has finished and its writes are
    visible. Called first, so the kernel behaves as if launched after the previous one ended. No-op
    without PDL (the CPU interpreter cannot run it)."""
    if PDL:
        gdc_wait()


@triton.jit
def let_next_kernel_launch(PDL: tl.constexpr):
    """With PDL: let the next kernel launch now (its programs wait in ``wait_for_previous_kernel``)
    rather than when this one's last program exits. For kernels of many short programs (quantization,
    routing): the GEMMs after them start on every SM. GEMMs do not call it: the programs of the GEMM
    after them would take the SMs that free up first, unevenly (H100, back-to-back M = 1 decode
    GEMMs: 55 -> 60-62 us)."""
    if PDL:
        gdc_launch_dependents()


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
