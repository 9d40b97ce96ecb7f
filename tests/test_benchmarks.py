"""The `kernels benchmark` workloads in benchmarks/ pass that runner's check.

Each Benchmark class goes through the steps ``kernels benchmark <dir>`` takes per workload
(HUB_PACKAGE.md): a fresh instance with ``kernel`` and ``device`` set, ``torch.manual_seed(seed)``,
``setup_<w>()``, ``benchmark_<w>()``, then ``torch.allclose(out, verify_<w>(), atol=1e-2)``. (The
runner itself is not imported: ``kernels.cli`` needs the signing packages, absent on the GPU machine.)
On a GPU at the real sizes; under the CPU interpreter at small sizes of the same structure.
"""

from __future__ import annotations

import importlib.util
import inspect

import pytest
import torch
from conftest import HAS_CUDA, ROOT
from kernels.benchmark import Benchmark

SCRIPTS = sorted((ROOT / "benchmarks").glob("benchmark*.py"))
# Small sizes for the interpreter (multiples of 128 where the workloads need whole weight blocks).
SMALL = {
    "ActQuantBenchmark": {"m": 8, "k": 384},
    "MatmulBenchmark": {"n": 256, "k": 256, "decode_tokens": 3, "prefill_tokens": 70},
    "ExpertMatmulBenchmark": {
        "experts": 6,
        "n": 128,
        "k": 256,
        "top_k": 2,
        "decode_tokens": 1,
        "batch_tokens": 5,
        "prefill_tokens": 40,
    },
}


def _benchmark_classes(script) -> list[type[Benchmark]]:
    spec = importlib.util.spec_from_file_location(f"_bench_{script.stem}", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return [
        c for _, c in inspect.getmembers(module, inspect.isclass) if issubclass(c, Benchmark) and c is not Benchmark
    ]


def test_every_benchmark_class_is_covered():
    assert {cls.__name__ for script in SCRIPTS for cls in _benchmark_classes(script)} == set(SMALL)


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.stem)
def test_workloads_pass_the_runner_check(fp8, device, script):
    for cls in _benchmark_classes(script):
        sized = cls if HAS_CUDA else type(cls.__name__, (cls,), SMALL[cls.__name__])
        workloads = [name.removeprefix("benchmark_") for name in dir(sized) if name.startswith("benchmark_")]
        assert workloads
        for workload in workloads:
            bench = sized()
            bench.kernel, bench.device = fp8, device
            torch.manual_seed(bench.seed)
            getattr(bench, f"setup_{workload}")()
            getattr(bench, f"benchmark_{workload}")()
            reference = getattr(bench, f"verify_{workload}")()
            assert torch.allclose(bench.out, reference, atol=1e-2), f"{cls.__name__}.{workload}"
