"""The `kernels benchmark` workloads in benchmarks/ pass that runner's check; compare_builds.py
compares outputs bit for bit.

Each Benchmark class goes through the steps ``kernels benchmark <dir>`` takes per workload
(the `kernels` CLI): a fresh instance with ``kernel`` and ``device`` set, ``torch.manual_seed(seed)``,
``setup_<w>()``, ``benchmark_<w>()``, then ``torch.allclose(out, verify_<w>(), atol=1e-2)``. (The
runner itself is not imported: ``kernels.cli`` needs the signing packages, absent on the GPU machine.)
On a GPU at the real sizes; under the CPU interpreter at small sizes of the same structure.
"""

from __future__ import annotations

import functools
import importlib.util
import inspect
import os
import sys
import types

import pytest
import torch
from checks import make_activation, make_weight
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


@functools.cache
def _compare_builds_module():
    sys.path.insert(0, str(ROOT / "benchmarks"))  # for its `from run import ...`
    spec = importlib.util.spec_from_file_location("_compare_builds", ROOT / "benchmarks" / "compare_builds.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_compare_builds_checks_outputs_bitwise_and_times_every_build(fp8, device, gen, monkeypatch, capsys):
    """compare_builds' comparison on a small dense case, its timer replaced by one that runs each
    build's prepared call once: a build whose output differs in one bit is reported, and each build
    runs under its own environment setting, restored afterwards."""
    cb = _compare_builds_module()
    seen = []

    def one_call(make_call, bytes_each, replays):
        make_call()()
        seen.append(os.environ.get("FP8_COMPARE_TEST"))
        return 1e-3

    monkeypatch.setattr(cb, "bench", one_call)
    monkeypatch.delenv("FP8_COMPARE_TEST", raising=False)
    w, ws = make_weight(64, 256, (128, 128), gen, device)
    x = make_activation((3, 256), torch.bfloat16, gen, device)
    case = cb.Case("prequant 64x256 M=3", lambda: (x, w, ws), cb._prequantized_matmul, 64 * 256, 0, cb._quantized_rows)
    off_by_one_bit = types.SimpleNamespace(
        fp8_act_quant=fp8.fp8_act_quant,
        w8a8_block_fp8_matmul=lambda *a: (fp8.w8a8_block_fp8_matmul(*a).view(torch.int16) ^ 1).view(torch.bfloat16),
    )
    same = [cb.Build("A", fp8, {}), cb.Build("B", fp8, {"FP8_COMPARE_TEST": "1"})]
    cb.compare(case, same, reps=2)
    cb.compare(case, [cb.Build("A", fp8, {}), cb.Build("C", off_by_one_bit, {})], reps=1)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].endswith(" equal")
    assert lines[1].endswith("DIFFERENT")
    assert sorted(map(str, seen[:4])) == ["1", "1", "None", "None"] and "FP8_COMPARE_TEST" not in os.environ


@pytest.mark.parametrize("spec", ["A", "=dir", "A=dir:NOVALUE", "A=dir:=1"])
def test_compare_builds_refuses_malformed_build_specs(spec):
    with pytest.raises(SystemExit, match="is"):
        _compare_builds_module().parse_build(spec)
