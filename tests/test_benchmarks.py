"""The `kernels benchmark` workloads in benchmarks/ pass that runner's own check.

Each Benchmark class runs through ``kernels.cli.benchmark.run_benchmark_class`` (what
``kernels benchmark <dir>`` calls per class: setup, the kernel call, then
``torch.allclose(out, verify(), atol=1e-2)``), with the package loaded from this run's build. On a
GPU at the real sizes; under the CPU interpreter at small sizes of the same structure.
"""

from __future__ import annotations

import pytest
from conftest import HAS_CUDA, ROOT

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


def test_every_benchmark_script_is_covered():
    from kernels.cli.benchmark import discover_benchmark_classes

    names = {cls.__name__ for script in SCRIPTS for cls in discover_benchmark_classes(script, ROOT)}
    assert names == set(SMALL)


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.stem)
def test_workloads_pass_the_runner_check(build_dir, script):
    from kernels.cli.benchmark import discover_benchmark_classes, run_benchmark_class

    for cls in discover_benchmark_classes(script, ROOT):
        sized = cls if HAS_CUDA else type(cls.__name__, (cls,), SMALL[cls.__name__])
        results, _ = run_benchmark_class(
            sized, iterations=1, warmup=0, repo_id=str(build_dir), is_local=True, revision="local"
        )
        assert results and all(r.verified for r in results.values()), results
