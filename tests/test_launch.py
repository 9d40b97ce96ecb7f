"""The direct launch path of eager calls (``_launch.launch_kernel``): a kernel compiles through Triton
once per specialization, then launches through its compiled launcher.

On the CPU the cache logic runs against a stand-in kernel that records how it was launched; on the GPU
real calls whose shape, dtype, stride or device change between calls must give the bits the op path
(Triton's own JIT launch) gives.
"""

from __future__ import annotations

import contextlib
import sys
from types import SimpleNamespace

import pytest
import torch
from checks import SeesOps, make_activation, make_expert_weights, make_weight
from conftest import requires_cuda


class FakeCompiled:
    function = "function"
    packed_metadata = "metadata"

    def __init__(self, launches: list):
        self.launches = launches

    def run(self, *args):
        self.launches.append(("compiled", args))


class FakeKernel:
    """Stands in for a JITFunction of runtime arguments (x, n) and compile-time ones (BLOCK, PDL)."""

    def __init__(self):
        self.arg_names = ["x_ptr", "n", "BLOCK", "PDL"]
        self.launches: list = []

    def __getitem__(self, grid):
        def jit_launch(*args, **meta):
            self.launches.append(("jit", grid, args, meta))
            return FakeCompiled(self.launches)

        return jit_launch


@pytest.fixture
def launch_module(fp8, monkeypatch):
    """``_launch`` as it runs on a GPU: not traced, CUDA streams and device guard stubbed."""
    module = sys.modules[f"{fp8.__name__}._launch"]
    monkeypatch.setattr(module, "traced", lambda: False)
    monkeypatch.setattr(module, "on_device", lambda device: contextlib.nullcontext())
    monkeypatch.setattr(module, "driver", SimpleNamespace(active=SimpleNamespace(get_current_stream=lambda index: 7)))
    module._COMPILED.clear()
    yield module
    module._COMPILED.clear()


def test_second_launch_of_one_specialization_goes_through_the_compiled_launcher(launch_module):
    kernel, gpu = FakeKernel(), torch.device("cuda", 0)
    x = torch.empty(64)
    launch_module.launch_kernel(kernel, (3,), (x, 17), gpu, BLOCK=64, PDL=False, num_warps=4)
    launch_module.launch_kernel(kernel, (5, 2), (x, 33), gpu, BLOCK=64, PDL=False, num_warps=4)
    assert kernel.launches[0] == ("jit", (3,), (x, 17), {"BLOCK": 64, "PDL": False, "num_warps": 4})
    # grid padded to three axes, the stream, the compiled function and metadata, no launch metadata or
    # hooks, then every argument in the kernel's order: runtime ones, then compile-time ones.
    assert kernel.launches[1] == ("compiled", (5, 2, 1, 7, "function", "metadata", None, None, None, x, 33, 64, False))


@pytest.mark.parametrize(
    "change",
    [
        "int becomes a multiple of 16",
        "int becomes 1",
        "int leaves int32",
        "tensor dtype",
        "tensor alignment",
        "compile-time argument",
        "launch option",
        "device",
    ],
)
def test_a_change_triton_specializes_on_compiles_again(launch_module, change):
    """What Triton compiles into a kernel (argument types, 16-byte alignment, ints equal to 1 or divisible
    by 16, constexprs, options, the device) takes the JIT path again, never a launcher compiled for other
    arguments."""
    kernel = FakeKernel()
    base = torch.empty(64)
    call = {"args": (base, 17), "device": torch.device("cuda", 0), "meta": {"BLOCK": 64, "PDL": False}}
    launch_module.launch_kernel(kernel, (1,), call["args"], call["device"], **call["meta"])
    changed = {
        "int becomes a multiple of 16": {"args": (base, 32)},
        "int becomes 1": {"args": (base, 1)},
        "int leaves int32": {"args": (base, 2**40 + 1)},
        "tensor dtype": {"args": (base.half(), 17)},
        "tensor alignment": {"args": (base[1:], 17)},
        "compile-time argument": {"meta": {"BLOCK": 128, "PDL": False}},
        "launch option": {"meta": {"BLOCK": 64, "PDL": False, "num_warps": 8}},
        "device": {"device": torch.device("cuda", 1)},
    }[change]
    call |= changed
    launch_module.launch_kernel(kernel, (1,), call["args"], call["device"], **call["meta"])
    assert [entry[0] for entry in kernel.launches] == ["jit", "jit"]


def test_launch_hooks_take_the_jit_path(launch_module, monkeypatch):
    """A profiler's launch hooks see every launch: with one added to Triton's hook chain, launches go
    through Triton's JIT path."""
    kernel, gpu, x = FakeKernel(), torch.device("cuda", 0), torch.empty(64)
    hooks = launch_module.knobs.runtime.launch_enter_hook
    monkeypatch.setattr(hooks, "calls", [*hooks.calls, lambda metadata: None])
    for _ in range(2):
        launch_module.launch_kernel(kernel, (1,), (x, 17), gpu, BLOCK=64, PDL=False)
    assert [entry[0] for entry in kernel.launches] == ["jit", "jit"]


def _through_op(call):
    with SeesOps():
        return call()


@requires_cuda
def test_cached_launches_follow_changes_of_shape_dtype_stride_and_device(fp8, gen):
    """Eager calls in a row whose shape, dtype, stride or device change give the bits of the same calls
    through the op path (Triton's own launch), for every kernel family."""
    devices = [torch.device("cuda", i) for i in range(torch.cuda.device_count())]
    block = [128, 128]
    for device in devices:
        w, ws = make_weight(320, 512, (128, 128), gen, device)
        ew, ews = make_expert_weights(4, 320, 512, (128, 128), gen, device)
        for rows, dtype in ((1, torch.bfloat16), (17, torch.bfloat16), (17, torch.float16), (300, torch.float32)):
            x = make_activation((rows, 1024), dtype, gen, device)
            for a in (x[:, :512], x[:, 512:].contiguous(), x[:, ::2]):  # strides and alignments change
                ids = torch.randint(0, 4, (rows,), generator=gen).to(device)
                calls = [
                    lambda a=a: fp8.fp8_act_quant(a, 128),
                    lambda a=a, w=w, ws=ws: fp8.matmul_2d(a, w, ws, block),
                    lambda a=a, ids=ids, ew=ew, ews=ews: fp8.matmul_batched(a, ew, ews, ids, block),
                ]
                for call in calls:
                    eager, through_op = call(), _through_op(call)
                    eager, through_op = (eager, through_op) if isinstance(eager, tuple) else ((eager,), (through_op,))
                    for got, expected in zip(eager, through_op, strict=True):
                        assert got.device == device
                        assert torch.equal(got.view(torch.uint8), expected.view(torch.uint8)), (device, rows, dtype)
