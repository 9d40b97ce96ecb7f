"""Every GPU that Triton targets: the capability decisions on faked device facts, and the compile matrix.

The decisions (``_device.DeviceFacts``) are unit-tested on the facts an MI300, an sm_120, an sm_80 and an
XPU report. The compile matrix (``compile_targets.py``) compiles every kernel variant the launchers pick
for sm_89, sm_90a, sm_100a, sm_120, gfx942 and gfx950 through Triton's bundled backends: evidence of the
code each target gets, not of its results. CI runs this file under the pinned Triton and the newest one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import triton
from checks import make_activation, make_weight
from conftest import BACKEND

compile_matrix = pytest.mark.compile_matrix


@pytest.fixture
def device_module(fp8):
    return sys.modules[f"{fp8.__name__}._device"]


def cuda_props(major: int, minor: int, sms: int, shared: int, arch: str = "") -> SimpleNamespace:
    return SimpleNamespace(
        name=f"GPU sm_{major}{minor}",
        major=major,
        minor=minor,
        multi_processor_count=sms,
        shared_memory_per_block_optin=shared,
        gcnArchName=arch,
    )


def test_mi300_reporting_capability_9_4_gets_no_hopper_paths(device_module):
    """ROCm torch reports an MI300 as "cuda" with capability (9, 4): it is AMD, and gets neither
    dependent launch (the AMD assembler rejects griddepcontrol) nor the Gluon Hopper kernel."""
    facts = device_module.facts_from_properties("cuda", cuda_props(9, 4, 304, 65536, "gfx942:sramecc+:xnack-"), True)
    assert (facts.vendor, facts.arch, facts.multiprocessors, facts.shared_memory_per_block) == (
        "amd",
        "gfx942",
        304,
        65536,
    )
    assert not facts.dependent_launch and not facts.hopper_wgmma
    assert facts.fp8_problem is None


def test_amd_without_fp8_is_refused(device_module):
    facts = device_module.facts_from_properties("cuda", cuda_props(9, 0, 110, 65536, "gfx90a:sramecc+:xnack-"), True)
    assert "gfx90a" in facts.fp8_problem


def test_blackwell_consumer_gets_dependent_launch_but_not_the_hopper_kernel(device_module):
    facts = device_module.facts_from_properties("cuda", cuda_props(12, 0, 170, 101376))
    assert (facts.vendor, facts.arch, facts.capability) == ("nvidia", "sm_120", (12, 0))
    assert facts.dependent_launch == (not device_module.PORTABLE)
    assert not facts.hopper_wgmma
    assert facts.fp8_problem is None


def test_hopper_gets_both_hopper_paths_unless_portable(device_module):
    facts = device_module.facts_from_properties("cuda", cuda_props(9, 0, 132, 232448))
    assert facts.dependent_launch == facts.hopper_wgmma == (not device_module.PORTABLE)


def test_ada_has_no_dependent_launch(device_module):
    facts = device_module.facts_from_properties("cuda", cuda_props(8, 9, 142, 101376))
    assert not facts.dependent_launch and not facts.hopper_wgmma and facts.fp8_problem is None


def test_ampere_is_refused(device_module):
    facts = device_module.facts_from_properties("cuda", cuda_props(8, 0, 108, 166912))
    assert "sm_89" in facts.fp8_problem


def test_xpu_gets_its_own_facts(device_module):
    props = SimpleNamespace(name="Intel Data Center GPU Max 1550", gpu_subslice_count=128, local_mem_size=131072)
    facts = device_module.facts_from_properties("xpu", props)
    assert (facts.vendor, facts.arch, facts.multiprocessors, facts.shared_memory_per_block) == (
        "intel",
        "xpu",
        128,
        131072,
    )
    assert not facts.dependent_launch and not facts.hopper_wgmma and facts.fp8_problem is None


@pytest.mark.parametrize("function", ["fp8_act_quant", "matmul_2d", "matmul_batched", "matmul_grouped"])
def test_a_gpu_without_fp8_gets_a_clear_error_before_any_launch(fp8, device, gen, monkeypatch, function):
    """On an sm_80 (faked), every entry point raises a ValueError that names the argument, the device and
    what it lacks, instead of failing inside Triton."""
    device_module = sys.modules[f"{fp8.__name__}._device"]
    validation = sys.modules[f"{fp8.__name__}._validation"]
    ampere = device_module.facts_from_properties("cuda", cuda_props(8, 0, 108, 166912))
    monkeypatch.setattr(validation, "device_facts", lambda d: ampere)
    x = make_activation((4, 256), torch.bfloat16, gen, device)
    w, ws = make_weight(128, 256, (128, 128), gen, device)
    counts = torch.full((1,), 4, dtype=torch.int32, device=device)
    calls = {
        "fp8_act_quant": lambda: fp8.fp8_act_quant(x, 128),
        "matmul_2d": lambda: fp8.matmul_2d(x, w, ws, [128, 128]),
        "matmul_batched": lambda: fp8.matmul_batched(
            x, w[None], ws[None], torch.zeros(4, dtype=torch.int64, device=device), [128, 128]
        ),
        "matmul_grouped": lambda: fp8.matmul_grouped(x, w[None], ws[None], counts, counts, [128, 128]),
    }
    with pytest.raises(ValueError, match=r"^(x|A) is on .*sm_80.*sm_89"):
        calls[function]()


def test_portable_switch_turns_the_hopper_paths_off(build_dir):
    """``FINEGRAINED_FP8_PORTABLE=1`` (read at import) gives a Hopper the paths every other GPU runs."""
    module = build_dir / f"torch-{BACKEND}" / "_device.py"
    script = (
        "import importlib.util as u, sys; from types import SimpleNamespace as N; "
        f"s = u.spec_from_file_location('device', {str(module)!r}); d = sys.modules['device'] = u.module_from_spec(s); "
        "s.loader.exec_module(d); "
        "f = d.facts_from_properties('cuda', N(name='H100', major=9, minor=0, multi_processor_count=132, "
        "shared_memory_per_block_optin=232448)); print(d.PORTABLE, f.dependent_launch, f.hopper_wgmma)"
    )
    env = dict(os.environ, FINEGRAINED_FP8_PORTABLE="1")
    run = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
    assert run.stdout.split() == ["True", "False", "False"]


def test_gluon_is_used_under_the_running_triton_only_if_compile_checked(fp8):
    backends = sys.modules[f"{fp8.__name__}._backends"]
    release = tuple(int(p) for p in triton.__version__.split(".")[:2])
    assert (backends.hopper_gemm is not None) == (release in backends.GLUON_TRITONS)


# Kernels every target gets, and those only some get.
PLAIN_KERNELS = {
    "_act_quant_kernel",
    "_gemm_kernel",
    "_sum_splits_kernel",
    "_route_kernel",
    "_expert_gemm_kernel",
    "_few_rows_kernel",
}
DEPENDENT_LAUNCH_TARGETS = {"sm_90a", "sm_100a", "sm_120"}


@compile_matrix
@pytest.mark.parametrize("target", ["sm_89", "sm_90a", "sm_100a", "sm_120", "gfx942", "gfx950"])
def test_every_kernel_variant_compiles_and_fits(build_dir, target):
    """Each variant the launchers pick for ``target`` compiles through Triton's backend for it, and its
    shared memory fits that target; dependent launch only on NVIDIA sm_90 and later; the Gluon kernel
    only on sm_90a. Prints the shared memory of each variant (pytest -s)."""
    env = {name: value for name, value in os.environ.items() if name != "TRITON_INTERPRET"}
    script = Path(__file__).parent / "compile_targets.py"
    package = build_dir / f"torch-{BACKEND}"
    run = subprocess.run(
        [sys.executable, str(script), str(package), target], env=env, capture_output=True, text=True, timeout=1200
    )
    results = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    failures = [r for r in results if "error" in r or not r["fits"]]
    assert run.returncode == 0 and results and not failures, (failures[:5], run.stderr[-2000:])
    for r in results:
        print(f"{r['target']:<8} {r['kernel']:<20} shared {r['shared']:>6}  {r['constants']} {r['options']}")
    kernels = {r["kernel"] for r in results}
    assert PLAIN_KERNELS <= kernels, PLAIN_KERNELS - kernels
    assert ("_gemm_wgmma_kernel" in kernels) == (target == "sm_90a")
    pdl = {r["constants"]["PDL"] for r in results if "PDL" in r["constants"]}
    assert pdl == {target in DEPENDENT_LAUNCH_TARGETS}
