"""The package builds, loads the ways users load it, and imports without touching the GPU."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from checks import SeesOps
from conftest import BACKEND, REPO_ID, ROOT, build_package

pytestmark = pytest.mark.kernels_ci


def _run_python(code: str, **env: str) -> str:
    full_env = {**os.environ, **env}
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=full_env, check=False
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_build_layout(build_dir):
    variant = build_dir / f"torch-{BACKEND}"
    meta = json.loads((variant / "metadata.json").read_text())
    assert meta["name"] == "finegrained-fp8" and meta["version"] == 1 and meta["license"] == "Apache-2.0"
    assert meta["backend"] == {"type": BACKEND}
    assert meta["id"].startswith(f"_finegrained_fp8_{BACKEND}_")
    ops_py = (variant / "_ops.py").read_text()
    assert f"torch.ops.{meta['id']}" in ops_py
    sources = {p.name for p in (ROOT / "torch-ext" / "finegrained_fp8").glob("*.py")} - {"_ops.py"}
    assert sources <= {p.name for p in variant.glob("*.py")}


def test_get_kernel_with_local_kernels(fp8):
    assert callable(fp8.fp8_act_quant)
    assert set(fp8.__all__) <= set(dir(fp8))


def test_local_build_answers_both_hub_versions(fp8):
    """Transformers 5.4-5.10 ask for version 1, 5.15-5.25 for version 4: with LOCAL_KERNELS pointing at
    the build, both get this build, with the names each generation calls."""
    import kernels

    for version, names in ((1, ("fp8_act_quant", "w8a8_fp8_matmul_batched")), (4, ("matmul_2d", "matmul_grouped"))):
        loaded = kernels.get_kernel(REPO_ID, version=version)
        assert loaded.__file__ == fp8.__file__
        assert all(callable(getattr(loaded, name)) for name in names)


def test_get_local_kernel(build_dir):
    import kernels

    module = kernels.get_local_kernel(build_dir)
    assert "fp8_act_quant" in module.__all__


def test_plain_import_from_build_dir(build_dir, tmp_path):
    (tmp_path / "finegrained_fp8").symlink_to(build_dir / f"torch-{BACKEND}")
    out = _run_python(
        """
        import finegrained_fp8
        print(sorted(finegrained_fp8.__all__)[0])
        """,
        PYTHONPATH=str(tmp_path),
    )
    assert out.strip()


def test_import_touches_neither_gpu_nor_triton_driver(build_dir):
    out = _run_python(
        f"""
        import torch, kernels, triton.runtime
        m = kernels.get_local_kernel(__import__("pathlib").Path({str(build_dir)!r}))
        print(torch.cuda.is_initialized(), triton.runtime.driver._active is None)
        """
    )
    assert out.split() == ["False", "True"]


def test_two_builds_load_side_by_side(tmp_path, device):
    import kernels

    a = kernels.get_local_kernel(build_package(tmp_path / "a", tree_id="aaaaaaa"))
    b = kernels.get_local_kernel(build_package(tmp_path / "b", tree_id="bbbbbbb"))
    assert a is not b
    assert hasattr(torch.ops, f"_finegrained_fp8_{BACKEND}_aaaaaaa")
    assert hasattr(torch.ops, f"_finegrained_fp8_{BACKEND}_bbbbbbb")
    assert a.ops.fp8_act_quant is not b.ops.fp8_act_quant
    x = torch.randn(3, 256, device=device)
    qa, sa = a.fp8_act_quant(x)
    qb, sb = b.fp8_act_quant(x)
    assert torch.equal(qa.view(torch.uint8), qb.view(torch.uint8)) and torch.equal(sa, sb)


def _ops_dispatched(call) -> list[str]:
    """Names of this package's registered ops that went through torch's dispatcher during ``call()``."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        call()
    return sorted({e.name.split("::")[-1] for e in prof.events() if "finegrained_fp8" in e.name and "::" in e.name})


def test_plain_eager_calls_skip_op_dispatch_and_others_use_the_op(fp8, device):
    """Eager calls on plain tensors (Parameters included) run the implementation directly; a call
    under a dispatch mode or on tensors that require grad goes through the registered op; the two
    paths give the same bits."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 256, generator=gen).to(device)
    w = torch.nn.Parameter(torch.randn(64, 256, generator=gen).to(torch.float8_e4m3fn).to(device), requires_grad=False)
    ws = torch.rand(1, 2, generator=gen).to(device)
    direct = fp8.matmul_2d(x, w, ws, [128, 128])
    assert _ops_dispatched(lambda: fp8.matmul_2d(x, w, ws, [128, 128])) == []
    assert _ops_dispatched(lambda: fp8.fp8_act_quant(x)) == []
    with SeesOps():
        assert torch.equal(fp8.matmul_2d(x, w, ws, [128, 128]), direct)
    assert _ops_dispatched(lambda: _call_under(SeesOps(), fp8.matmul_2d, x, w, ws, [128, 128])) == ["fp8_matmul_fused"]
    tracked = x.clone().requires_grad_(True)
    assert _ops_dispatched(lambda: fp8.fp8_act_quant(tracked)) == ["fp8_act_quant"]
    with torch.no_grad():
        assert _ops_dispatched(lambda: fp8.fp8_act_quant(tracked)) == []


def _call_under(mode, fn, *args):
    with mode:
        return fn(*args)


def _public_calls(fp8, gen, device) -> dict:
    """Every public function on small random operands: name -> (a valid call, a call with one bad argument)."""
    from checks import make_activation, make_expert_weights, make_weight
    from reference import group_by_expert

    x = make_activation((5, 256), torch.bfloat16, gen, device)
    q, s = fp8.fp8_act_quant(x)
    w, ws = make_weight(192, 256, (128, 128), gen, device)
    w_t, ws_t = make_weight(192, 256, None, gen, device)
    ew, ews = make_expert_weights(3, 192, 256, (128, 128), gen, device)
    ids = torch.randint(0, 3, (5,), generator=gen).to(device)
    x_sorted, offsets, tpe, _, _ = group_by_expert(x.cpu(), ids.cpu(), 3)
    x_sorted, offsets, tpe = x_sorted.to(device), offsets.to(device), tpe.to(device)
    per_tensor = ews[:, :1, :1].contiguous()
    block = [128, 128]
    return {
        "fp8_act_quant": (lambda: fp8.fp8_act_quant(x, 128), lambda: fp8.fp8_act_quant(x, 0)),
        "matmul_2d": (lambda: fp8.matmul_2d(x, w, ws, block), lambda: fp8.matmul_2d(x, w, ws[:1], block)),
        "w8a8_fp8_matmul": (
            lambda: fp8.w8a8_fp8_matmul(q, w, s, ws, block, torch.bfloat16),
            lambda: fp8.w8a8_fp8_matmul(q, w, s[:, :1], ws, block, torch.bfloat16),
        ),
        "w8a8_tensor_fp8_matmul": (
            lambda: fp8.w8a8_tensor_fp8_matmul(q, w_t, s[:, :1], ws_t),
            lambda: fp8.w8a8_tensor_fp8_matmul(q, w_t, s[:, :1], ws),
        ),
        "matmul_batched": (
            lambda: fp8.matmul_batched(x, ew, ews, ids, block),
            lambda: fp8.matmul_batched(x, ew, ews, ids[:4], block),
        ),
        "w8a8_tensor_fp8_matmul_batched": (
            lambda: fp8.w8a8_tensor_fp8_matmul_batched(x, ew, per_tensor, ids),
            lambda: fp8.w8a8_tensor_fp8_matmul_batched(x, ew, ews, ids),
        ),
        "matmul_grouped": (
            lambda: fp8.matmul_grouped(x_sorted, ew, ews, offsets, tpe, block),
            lambda: fp8.matmul_grouped(x_sorted, ew, ews, offsets[:2], tpe, block),
        ),
        "w8a8_fp8_matmul_grouped": (
            lambda: fp8.w8a8_fp8_matmul_grouped(x_sorted, ew, ews, offsets, tpe, block),
            lambda: fp8.w8a8_fp8_matmul_grouped(x_sorted, ew, ews.float().half(), offsets, tpe, block),
        ),
    }


@pytest.mark.parametrize(
    "name",
    [
        "fp8_act_quant",
        "matmul_2d",
        "w8a8_fp8_matmul",
        "w8a8_tensor_fp8_matmul",
        "matmul_batched",
        "w8a8_tensor_fp8_matmul_batched",
        "matmul_grouped",
        "w8a8_fp8_matmul_grouped",
    ],
)
def test_eager_path_and_op_path_agree(fp8, device, gen, name):
    """Each public function gives the same bits on its direct eager path and through its registered op
    (forced by a dispatch mode), and raises the same error for the same bad argument on both."""
    valid, invalid = _public_calls(fp8, gen, device)[name]
    eager = valid()
    with SeesOps():
        through_op = valid()
    eager, through_op = (eager, through_op) if isinstance(eager, tuple) else ((eager,), (through_op,))
    for got, expected in zip(through_op, eager, strict=True):  # no sentinels: grouped calls write every row
        assert torch.equal(got.view(torch.uint8), expected.view(torch.uint8))
    errors = []
    for mode in (contextlib.nullcontext(), SeesOps()):
        with mode, pytest.raises((TypeError, ValueError)) as raised:
            invalid()
        errors.append((type(raised.value), str(raised.value)))
    assert errors[0] == errors[1]
