"""Launch helpers shared by every op: op registration with its eager path, kernel launches (with a
direct path for eager calls), and programmatic dependent launch."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TypeVar

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton
from torch.utils._python_dispatch import _get_current_dispatch_mode
from triton import knobs
from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait
from triton.runtime import driver

try:  # what triton_op's own eager backend does: launch wrap_triton kernels directly, not as a HOP
    from torch._library.triton import is_wrap_triton_enabled, set_wrap_triton_enabled
except ImportError:  # a torch without it: every call goes through the op
    is_wrap_triton_enabled = set_wrap_triton_enabled = None

from ._device import device_facts, on_device
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


def traced() -> bool:
    """Whether launches are being traced (torch.compile, export, or an op call's own dispatch), rather
    than made by Triton directly on the eager path of ``registered_op``."""
    return is_wrap_triton_enabled is None or is_wrap_triton_enabled()


def dependent_launch_options(device: torch.device) -> dict:
    """Launch arguments of a kernel that calls ``wait_for_previous_kernel(PDL)`` first: where the device
    has dependent launch, on the direct eager path (kernels launched by Triton itself, not traced), the
    kernel is launched while the previous one finishes (its setup overlaps that kernel's tail). Not for
    persistent kernels (the Gluon GEMM): programs launched early land on whichever SMs have room, so
    some SMs get more than their share (docs/DESIGN.md, "Launches and host cost")."""
    if traced() or not device_facts(device).dependent_launch:
        return {"PDL": False}
    return {"PDL": True, "launch_pdl": True}


# Compiled kernels of direct eager launches, by kernel, device, compile-time arguments and argument
# specialization (see ``_specialization``).
_COMPILED: dict[tuple, tuple[object, tuple]] = {}


def _specialization(arg: object) -> object:
    """What Triton may compile into a kernel about one runtime argument, or more: a tensor's dtype and
    16-byte alignment; an int's width, and whether it is 1 or a multiple of 16; a TMA descriptor's block,
    layout, base and the alignment of its shape and strides."""
    if isinstance(arg, torch.Tensor):
        return arg.dtype, arg.data_ptr() % 16 == 0
    if isinstance(arg, bool) or arg is None:
        return arg
    if isinstance(arg, int):
        return -(2**31) <= arg < 2**31, arg == 1, arg % 16 == 0
    base = getattr(arg, "base", None)
    if isinstance(base, torch.Tensor):  # a host TensorDescriptor
        return (
            _specialization(base),
            tuple(arg.block_shape),
            arg.layout,
            arg.padding,
            getattr(arg, "round_f32_to_tf32", False),  # a field from Triton 3.9
            tuple(d % 16 == 0 for d in arg.shape),
            tuple(d % 16 == 0 for d in arg.strides),
        )
    return type(arg), arg


def _launch_hooks_set() -> bool:
    """Whether a profiler watches launches through Triton's hooks (chains of callables; empty by default)."""
    hooks = (knobs.runtime.launch_enter_hook, knobs.runtime.launch_exit_hook)
    return any(hook is not None and bool(getattr(hook, "calls", True)) for hook in hooks)


def launch_kernel(
    kernel, grid: tuple[int, ...], args: tuple, device: torch.device, traceable: bool = True, **meta
) -> None:
    """``kernel[grid](*args, **meta)`` on ``device``: the runtime arguments positionally, then the
    compile-time ones and launch options by name.

    Traced calls of a ``traceable`` kernel go through ``wrap_triton`` (Gluon kernels are not: they
    run inside an opaque op). Elsewhere, on a CUDA GPU without Triton's launch hooks, a kernel compiles
    through Triton once per specialization and then launches through its compiled launcher: Triton's
    JIT path would re-derive on every call what the cache key fixes.
    """
    with on_device(device):
        if traceable and traced():
            wrap_triton(kernel)[grid](*args, **meta)
            return
        if device.type != "cuda" or _launch_hooks_set():
            kernel[grid](*args, **meta)
            return
        key = (kernel, device, tuple(meta.items()), tuple(map(_specialization, args)))
        entry = _COMPILED.get(key)
        if entry is None:
            compiled = kernel[grid](*args, **meta)
            _COMPILED[key] = (compiled, tuple(meta[name] for name in kernel.arg_names[len(args) :]))
            return
        compiled, constants = entry
        grid = (*grid, 1, 1)
        stream = driver.active.get_current_stream(device.index)
        compiled.run(
            grid[0], grid[1], grid[2], stream, compiled.function, compiled.packed_metadata, None, None, None,
            *args, *constants,
        )  # fmt: skip


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
    after them would take the SMs that free up first, unevenly."""
    if PDL:
        gdc_launch_dependents()


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def next_power_of_two(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


def with_unit_k_stride(t: torch.Tensor) -> torch.Tensor:
    """``t`` itself when its last dimension (K) is contiguous, else a contiguous copy."""
    return t if t.shape[-1] <= 1 or t.stride(-1) == 1 else t.contiguous()
