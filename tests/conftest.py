"""Test fixtures: pick the device, build the package once, load it the way users do.

On a machine without a CUDA GPU the kernels run through Triton's interpreter on CPU tensors
(``TRITON_INTERPRET=1``, set here before Triton is imported) with the exact-conversion shim of
``interpreter_shim.py``. The package is built once per run with ``scripts/build.py`` into a
temporary directory and obtained through ``kernels.get_kernel`` with ``LOCAL_KERNELS``.
"""

from __future__ import annotations

import collections
import contextlib
import importlib.metadata
import os
import subprocess
import sys
import zlib
from pathlib import Path

import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
import interpreter_shim  # noqa: E402

interpreter_shim.install()

ROOT = Path(__file__).resolve().parent.parent
REPO_ID = "kernels-community/finegrained-fp8"
BACKEND = "cuda" if HAS_CUDA else "cpu"

# The interpreter runs kernels even on FakeTensors (it reads their data pointers), so the
# FakeTensor part of opcheck only runs on the GPU, where wrap_triton skips the launch.
OPCHECK_UTILS = ("test_schema", "test_autograd_registration") + (("test_faketensor",) if HAS_CUDA else ())

requires_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
requires_hopper = pytest.mark.skipif(
    not HAS_CUDA or torch.cuda.get_device_capability() != (9, 0), reason="the Gluon kernels run on Hopper (sm_90)"
)


def build_package(out: Path, tree_id: str | None = None) -> Path:
    """Run the repository's build script; return the directory that holds the variants."""
    cmd = [sys.executable, str(ROOT / "scripts" / "build.py"), "--backend", BACKEND, "--out", str(out)]
    if tree_id:
        cmd += ["--tree-id", tree_id]
    subprocess.run(cmd, check=True, capture_output=True)
    return out


def import_build(build_dir: Path, name: str = "finegrained_fp8"):
    """Import this run's build of the package as a plain Python package (no ``kernels`` involved)."""
    import importlib.util

    package = build_dir / f"torch-{BACKEND}"
    spec = importlib.util.spec_from_file_location(
        name, package / "__init__.py", submodule_search_locations=[str(package)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def build_dir(tmp_path_factory) -> Path:
    return build_package(tmp_path_factory.mktemp("build"))


@pytest.fixture(scope="session")
def fp8(build_dir):
    """The package, loaded through kernels.get_kernel with LOCAL_KERNELS pointing at the build."""
    import kernels

    os.environ["LOCAL_KERNELS"] = f"{REPO_ID}={build_dir}"
    return kernels.get_kernel(REPO_ID, version=1)


@pytest.fixture(scope="session")
def device() -> str:
    return "cuda" if HAS_CUDA else "cpu"


# Drawn once, by the first process: pytest-xdist's workers inherit it through the environment, so
# the seed the header and the failure summary name is the one every worker's data came from.
RUN_SEED = int(os.environ.setdefault("FP8_TEST_SEED", str(int.from_bytes(os.urandom(4), "little"))))


def pytest_report_header(config) -> str:
    import kernels

    loader = f"kernels {importlib.metadata.version('kernels')} ({Path(kernels.__file__).parent})"
    return f"finegrained-fp8: backend={BACKEND}, {loader}, random data seed FP8_TEST_SEED={RUN_SEED}"


def _skip_reason(report) -> str:
    longrepr = report.longrepr
    reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
    return reason.removeprefix("Skipped: ")


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    """One line counting the skipped tests by reason, and the data seed when something failed, also
    under ``-q`` (which drops the header and the skip reasons)."""
    skipped = collections.Counter(_skip_reason(r) for r in terminalreporter.stats.get("skipped", []))
    if skipped:
        counts = "; ".join(f"{count} {reason}" for reason, count in skipped.most_common())
        terminalreporter.write_line(f"skipped: {counts}")
    if terminalreporter.stats.get("failed") or terminalreporter.stats.get("error"):
        terminalreporter.write_line(f"failed with random data seed FP8_TEST_SEED={RUN_SEED} (set it to rerun them)")


@contextlib.contextmanager
def unwritten_memory_is_nan():
    """Inside, ``torch.empty`` fills float tensors with NaN (torch's deterministic mode, warnings
    only), so an output that a call allocates and leaves unwritten shows as NaN, not as whatever
    the allocator's block held (a previous call's identical result, say)."""
    enabled = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(enabled, warn_only=warn_only)


# The kernel tests: every call of theirs allocates its outputs NaN-filled (``outputs_start_as_nan``).
# The Transformers tests run whole models, which may read memory they never wrote (masked padding).
_KERNEL_TEST_MODULES = {"test_act_quant", "test_matmul", "test_moe", "test_reliability"}


@pytest.fixture(autouse=True)
def outputs_start_as_nan(request):
    """Kernel tests run under ``unwritten_memory_is_nan``: an output element that a call leaves
    unwritten fails the comparison with the reference (``checks.assert_matches`` refuses NaN)."""
    if request.module.__name__ not in _KERNEL_TEST_MODULES:
        yield
        return
    with unwritten_memory_is_nan():
        yield


@pytest.fixture
def gen(request) -> torch.Generator:
    """A CPU generator seeded from the run seed and the test id: fresh data every run,
    reproducible with FP8_TEST_SEED=<seed printed in the header>."""
    g = torch.Generator()
    g.manual_seed((RUN_SEED ^ zlib.crc32(request.node.nodeid.encode())) % (2**63))
    return g
