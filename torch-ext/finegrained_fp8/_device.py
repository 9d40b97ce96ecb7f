"""What a device is and what it can run, decided once per device from its facts.

Every launcher asks here: the SM count and shared memory that size its tiles, whether programmatic
dependent launch (PDL) exists, whether the Hopper Gluon kernel applies, and whether the device can
run FP8 at all. Nothing here touches the GPU before the first call that needs it.

``FINEGRAINED_FP8_PORTABLE=1`` (read at import) switches the Hopper-only paths off (the Gluon kernel
and PDL), so a Hopper GPU runs the code that Ada, Blackwell, ROCm and XPU GPUs run.
"""

from __future__ import annotations

import contextlib
import functools
import os
from dataclasses import dataclass

import torch

PORTABLE = os.environ.get("FINEGRAINED_FP8_PORTABLE", "0") == "1"

# Shared memory one program may use where the runtime does not say (bytes): the CPU interpreter has no limit
# that matters, so it gets Hopper's, and the tile choices of the CPU tests are those of the H100.
_HOPPER_SHARED_MEMORY = 232448
# AMD architectures whose Triton backend has e4m3 (float8_e4m3fn): CDNA3 (MI300) and CDNA4 (MI350).
_AMD_FP8_ARCHS = ("gfx942", "gfx950")
# AMD LDS per workgroup where torch does not report it.
_AMD_SHARED_MEMORY = {"gfx942": 65536, "gfx950": 163840}


@dataclass(frozen=True)
class DeviceFacts:
    """One device as the launchers see it."""

    vendor: str  # "nvidia", "amd", "intel", or "cpu" (Triton's interpreter)
    name: str  # what the runtime calls it, for error messages
    arch: str  # "sm_90", "gfx942", "xpu" or "cpu"
    capability: tuple[int, int] | None  # NVIDIA compute capability; None elsewhere
    multiprocessors: int  # SMs (NVIDIA), CUs (AMD), Xe cores (Intel)
    shared_memory_per_block: int  # bytes of shared memory (LDS, SLM) one program may use

    @property
    def fp8_problem(self) -> str | None:
        """Why Triton cannot run e4m3 kernels here, or None when it can."""
        if self.vendor == "nvidia" and self.capability < (8, 9):
            return "it has no e4m3 support in Triton (needs sm_89 or later: Ada, Hopper, Blackwell)"
        if self.vendor == "amd" and not self.arch.startswith(_AMD_FP8_ARCHS):
            return f"its architecture {self.arch} has no e4m3 support in Triton (needs {' or '.join(_AMD_FP8_ARCHS)})"
        return None

    @property
    def dependent_launch(self) -> bool:
        """Programmatic dependent launch: NVIDIA sm_90 and later (the AMD assembler rejects its instructions,
        and ptxas rejects them below sm_90)."""
        return not PORTABLE and self.vendor == "nvidia" and self.capability >= (9, 0)

    @property
    def hopper_wgmma(self) -> bool:
        """Whether the Hopper Gluon GEMM (wgmma, TMA; sm_90 only) may serve this device."""
        return not PORTABLE and self.vendor == "nvidia" and self.capability == (9, 0)


CPU_FACTS = DeviceFacts("cpu", "Triton interpreter", "cpu", None, 4, _HOPPER_SHARED_MEMORY)


def facts_from_properties(device_type: str, props: object, is_rocm: bool = False) -> DeviceFacts:
    """DeviceFacts from the runtime's device properties (``torch.cuda.get_device_properties`` or
    ``torch.xpu.get_device_properties``); ``is_rocm`` for a ROCm build of torch, whose "cuda" devices are AMD."""
    name = getattr(props, "name", device_type)
    if device_type == "xpu":
        units = getattr(props, "gpu_subslice_count", 0) or getattr(props, "max_compute_units", 0) or 1
        shared = getattr(props, "local_mem_size", 0) or 65536
        return DeviceFacts("intel", name, "xpu", None, units, shared)
    shared = getattr(props, "shared_memory_per_block_optin", 0)
    if is_rocm:
        arch = getattr(props, "gcnArchName", "gfx").split(":")[0]
        shared = shared or _AMD_SHARED_MEMORY.get(arch, 65536)
        return DeviceFacts("amd", name, arch, None, props.multi_processor_count, shared)
    capability = (props.major, props.minor)
    arch = f"sm_{props.major}{props.minor}"
    return DeviceFacts("nvidia", name, arch, capability, props.multi_processor_count, shared or 101376)


@functools.cache
def _facts(device_type: str, index: int) -> DeviceFacts:
    if device_type == "xpu":
        return facts_from_properties("xpu", torch.xpu.get_device_properties(index))
    return facts_from_properties("cuda", torch.cuda.get_device_properties(index), torch.version.hip is not None)


def device_facts(device: torch.device) -> DeviceFacts:
    """The facts of ``device``, queried once per device; CPU_FACTS for the CPU (the interpreter)."""
    if device.type not in ("cuda", "xpu"):
        return CPU_FACTS
    index = device.index
    if index is None:
        index = torch.cuda.current_device() if device.type == "cuda" else torch.xpu.current_device()
    return _facts(device.type, index)


def multiprocessor_count(device: torch.device) -> int:
    """SMs (or their equivalent) of ``device``; a small fixed number for the CPU interpreter."""
    return device_facts(device).multiprocessors


def on_device(device: torch.device) -> contextlib.AbstractContextManager:
    """Make ``device`` the current GPU for the launches inside; nothing to do when it already is (or for the CPU)."""
    if device.type == "cuda":
        return contextlib.nullcontext() if device.index == torch.cuda.current_device() else torch.cuda.device(device)
    if device.type == "xpu":
        return contextlib.nullcontext() if device.index == torch.xpu.current_device() else torch.xpu.device(device)
    return contextlib.nullcontext()
