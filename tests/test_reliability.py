"""Reliability across every entry point: bad input refused by name, non-contiguous input handled,
non-finite input contained to its row, bitwise determinism, no writes outside the output, and
property-based comparison with the reference (hypothesis; HYPOTHESIS_PROFILE=long for a longer run).
"""

from __future__ import annotations

import os
import sys

import pytest
import torch
from checks import assert_matches, make_activation, make_expert_weights, make_weight
from conftest import HAS_CUDA, requires_cuda
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from reference import FP8, group_by_expert, moe_reference, quantize

settings.register_profile(
    "ci", max_examples=12, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
settings.register_profile(
    "long", max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

BLOCK = [128, 128]
DENSE = ["w8a8_fp8_matmul", "w8a8_block_fp8_matmul", "matmul_2d", "matmul"]
MOE = [
    "matmul_batched",
    "w8a8_fp8_matmul_batched",
    "w8a8_block_fp8_matmul_batched",
    "matmul_grouped",
    "w8a8_fp8_matmul_grouped",
    "w8a8_block_fp8_matmul_grouped",
]
PER_TENSOR = ["w8a8_tensor_fp8_matmul", "w8a8_tensor_fp8_matmul_batched", "w8a8_tensor_fp8_matmul_grouped"]
ENTRY_POINTS = ["fp8_act_quant", *DENSE, *MOE, *PER_TENSOR]


def valid_call(name: str, device: str, rows: int = 6) -> dict:
    """Keyword arguments of a valid call of entry point ``name`` (S = M = ``rows``, K = 256, N = 64, E = 4;
    every MoE row goes to expert 0)."""
    x = torch.randn(rows, 256, device=device, dtype=torch.bfloat16)
    if name == "fp8_act_quant":
        return {"x": x, "block_size": 128}
    experts = name.endswith(("batched", "grouped"))
    per_tensor = name in PER_TENSOR
    b = torch.zeros((4, 64, 256) if experts else (64, 256), device=device).to(FP8)
    bs = torch.ones((4,) if per_tensor else (4, 1, 2), device=device) if experts else None
    if not experts:
        bs = torch.ones((1,) if per_tensor else (1, 2), device=device)
    call = {"B": b, "Bs": bs}
    if not per_tensor:
        call["block_size"] = BLOCK
    if name.endswith("batched"):
        call |= {"A": x, "expert_ids": torch.zeros(rows, dtype=torch.int64, device=device)}
    elif name.endswith("grouped"):
        offsets = torch.tensor([rows] * 4, dtype=torch.int32, device=device)
        call |= {"A": x, "offsets": offsets, "tokens_per_expert": torch.tensor([rows, 0.0, 0, 0], device=device)}
    elif name.startswith("w8a8"):
        call |= {"A": x.to(FP8), "As": torch.ones((rows,) if per_tensor else (rows, 2), device=device)}
    else:
        call |= {"A": x}
    return call


def _replace(call: dict, key: str, value) -> dict:
    return {**call, key: value} if key in call else None


def _wrong_rank(a: torch.Tensor | None, experts: bool) -> torch.Tensor | None:
    """A rank the entry point refuses: 3-D rows for the MoE functions, a 0-D tensor for the dense ones."""
    if a is None:
        return None
    return a[None] if experts else a[0, 0]


# Each mutation returns the broken call (or None where it does not apply) and the argument it breaks.
MUTATIONS = {
    "A dtype": (lambda c: _replace(c, "A", c.get("A", torch.empty(0)).to(torch.int32)), TypeError, "A"),
    "A fp8 where raw rows are expected": (
        lambda c: _replace(c, "A", c.get("A", torch.empty(0)).to(FP8)) if "As" not in c else None,
        TypeError,
        "A",
    ),
    "A rank": (
        lambda c: _replace(c, "A", _wrong_rank(c.get("A"), "expert_ids" in c or "offsets" in c)),
        ValueError,
        "A",
    ),
    "x dtype": (lambda c: _replace(c, "x", c.get("x", torch.empty(0)).to(torch.int32)), TypeError, "x"),
    "B dtype": (lambda c: _replace(c, "B", c.get("B", torch.empty(0)).float()), TypeError, "B"),
    "B rank": (lambda c: _replace(c, "B", c.get("B", torch.empty(0))[None]), ValueError, "B"),
    "K mismatch": (lambda c: _replace(c, "B", c.get("B", torch.empty(1))[..., :128]), ValueError, "A"),
    "Bs shape": (
        lambda c: _replace(c, "Bs", torch.ones(5, 5, 5, device=c.get("B", torch.empty(0)).device)),
        ValueError,
        "Bs",
    ),
    "Bs dtype": (lambda c: _replace(c, "Bs", c.get("Bs", torch.empty(0)).double()), TypeError, "Bs"),
    "block_k": (lambda c: _replace(c, "block_size", [128, 96]) if "B" in c else None, ValueError, r"block_size\[1\]"),
    "block type": (lambda c: _replace(c, "block_size", 128) if "B" in c else None, TypeError, "block_size"),
    "group size": (lambda c: _replace(c, "block_size", 0) if "x" in c else None, ValueError, "block_size"),
    "As shape": (
        lambda c: _replace(c, "As", torch.ones(3, 3, device=c.get("As", torch.empty(0)).device)),
        ValueError,
        "As",
    ),
    "ids dtype": (
        lambda c: _replace(c, "expert_ids", c.get("expert_ids", torch.empty(0)).float()),
        TypeError,
        "expert_ids",
    ),
    "ids rank": (
        lambda c: _replace(c, "expert_ids", c.get("expert_ids", torch.empty(0))[:, None]),
        ValueError,
        "expert_ids",
    ),
    "block length": (lambda c: _replace(c, "block_size", [128]) if "B" in c else None, ValueError, "block_size"),
    "ids length": (
        lambda c: _replace(c, "expert_ids", c.get("expert_ids", torch.empty(1))[:-1]),
        ValueError,
        "expert_ids",
    ),
    "offsets dtype": (lambda c: _replace(c, "offsets", c.get("offsets", torch.empty(0)).float()), TypeError, "offsets"),
    "offsets length": (lambda c: _replace(c, "offsets", c.get("offsets", torch.empty(1))[:-1]), ValueError, "offsets"),
    "tpe length": (
        lambda c: _replace(c, "tokens_per_expert", c.get("tokens_per_expert", torch.empty(1))[:-1]),
        ValueError,
        "tokens_per_expert",
    ),
    "tpe dtype": (
        lambda c: _replace(c, "tokens_per_expert", c.get("tokens_per_expert", torch.empty(0)).half()),
        TypeError,
        "tokens_per_expert",
    ),
}


def _cases():
    for name in ENTRY_POINTS:
        for what, (mutate, exc, arg) in MUTATIONS.items():
            if mutate(valid_call(name, "meta")) is not None:
                yield pytest.param(name, what, exc, arg, id=f"{name}-{what}")


@pytest.mark.kernels_ci
@pytest.mark.parametrize("name, what, exc, arg", list(_cases()))
def test_every_entry_point_refuses_bad_input_by_name(fp8, device, name, what, exc, arg):
    """Every kind of bad input, on every public function: the right exception, naming the argument."""
    call = MUTATIONS[what][0](valid_call(name, device))
    with pytest.raises(exc, match=rf"^{arg}(?!\w)"):
        getattr(fp8, name)(**call)


@pytest.mark.parametrize("name", [n for n in ENTRY_POINTS if n.startswith("w8a8_block")])
def test_block_functions_require_block_size(fp8, device, name):
    with pytest.raises(ValueError, match=r"^block_size\b"):
        getattr(fp8, name)(**{**valid_call(name, device), "block_size": None})


@pytest.mark.parametrize("name", ENTRY_POINTS)
def test_every_entry_point_accepts_its_valid_call(fp8, device, name):
    """The table's valid calls run, so every refusal above comes from the one broken argument."""
    getattr(fp8, name)(**valid_call(name, device))


@requires_cuda
@pytest.mark.parametrize("name", ENTRY_POINTS)
def test_tensors_on_another_device_are_refused(fp8, name):
    call = valid_call(name, "cuda")
    key = "x" if "x" in call else "B"
    call[key] = call[key].cpu()
    message = "x is a CPU tensor" if key == "x" else "B is on cpu"
    with pytest.raises(ValueError, match=rf"^{message}"):
        getattr(fp8, name)(**call)


def test_calls_here_allocate_their_outputs_nan_filled(device):
    """The harness under every kernel test (conftest.outputs_start_as_nan): what a call allocates
    starts as NaN, so an output element left unwritten cannot pass for a result."""
    assert torch.empty(64, device=device).isnan().all()
    assert torch.empty(8, 8, dtype=torch.bfloat16, device=device).isnan().all()


requires_two_gpus = pytest.mark.skipif(not HAS_CUDA or torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")


def _random_call(name: str, gen: torch.Generator, rows: int) -> dict:
    """``valid_call`` on the CPU with random activations and weight codes instead of ones and zeros."""
    call = valid_call(name, "cpu", rows)
    for key, value in call.items():
        if isinstance(value, torch.Tensor) and value.dtype in (FP8, torch.bfloat16):
            call[key] = torch.randn(value.shape, generator=gen).to(value.dtype)
    return call


def _on(call: dict, device: str) -> dict:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in call.items()}


def _outputs(result) -> tuple:
    return result if isinstance(result, tuple) else (result,)


@requires_two_gpus
@pytest.mark.parametrize("rows", [6, 320], ids=["decode", "prefill"])
@pytest.mark.parametrize("name", ENTRY_POINTS)
def test_launches_follow_the_inputs_gpu_not_the_current_one(fp8, gen, name, rows):
    """Inputs on cuda:1 while cuda:0 is current give, on cuda:1, what the call gives with cuda:1 current.
    6 rows take the decode kernels; 320 the prefill ones (on Hopper the Gluon GEMM with 128 x 128
    blocks, and batched calls the routing kernel)."""
    call = _random_call(name, gen, rows)
    with torch.cuda.device(1):
        expected = getattr(fp8, name)(**_on(call, "cuda:1"))
    with torch.cuda.device(0):
        got = getattr(fp8, name)(**_on(call, "cuda:1"))
    torch.cuda.synchronize(1)
    for g, e in zip(_outputs(got), _outputs(expected), strict=True):
        assert g.device == torch.device("cuda:1")
        assert torch.equal(g.cpu().float(), e.cpu().float())


@requires_two_gpus
@pytest.mark.parametrize("name", [n for n in ENTRY_POINTS if n != "fp8_act_quant"])
def test_tensors_on_two_gpus_are_refused(fp8, name):
    call = valid_call(name, "cuda:0")
    call["B"] = call["B"].to("cuda:1")
    with pytest.raises(ValueError, match=r"(^B is on cuda:1 but)|(but B is on cuda:1;)"):
        getattr(fp8, name)(**call)


@pytest.mark.skipif(HAS_CUDA, reason="checks the refusal of CPU tensors outside the interpreter")
@pytest.mark.parametrize("name", ENTRY_POINTS)
def test_cpu_tensors_are_refused_when_not_interpreting(fp8, monkeypatch, name):
    call = valid_call(name, "cpu")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match=r"is a CPU tensor"):
        getattr(fp8, name)(**call)


def test_non_contiguous_inputs_give_the_contiguous_result(fp8, device, gen):
    """Strided activations and weights are handled (copied where the kernels need unit K stride)."""
    b, bs = make_weight(96, 256, (128, 128), gen, device)
    x = make_activation((10, 512), torch.bfloat16, gen, device)
    strided_x = x[:, ::2]
    expected = fp8.matmul_2d(strided_x.contiguous(), b, bs, BLOCK)
    assert torch.equal(fp8.matmul_2d(strided_x, b, bs, BLOCK), expected)
    columns = torch.empty(256, 96, device=device, dtype=FP8).t()  # (96, 256) with K stride 96
    columns.copy_(b)
    assert torch.equal(fp8.matmul_2d(strided_x.contiguous(), columns, bs, BLOCK), expected)
    q, s = fp8.fp8_act_quant(strided_x, 128)
    q_ref, s_ref = fp8.fp8_act_quant(strided_x.contiguous(), 128)
    assert torch.equal(q.view(torch.uint8), q_ref.view(torch.uint8)) and torch.equal(s, s_ref)
    experts, experts_s = make_expert_weights(3, 64, 256, (128, 128), gen, device)
    ids = torch.randint(0, 3, (10,), generator=gen).to(device)
    assert torch.equal(
        fp8.matmul_batched(strided_x, experts, experts_s, ids, BLOCK),
        fp8.matmul_batched(strided_x.contiguous(), experts, experts_s, ids, BLOCK),
    )


@pytest.mark.parametrize("rows", [10, 40])  # the few-rows path, then the routed one
def test_strided_expert_ids_and_offsets_give_the_contiguous_result(fp8, device, gen, rows):
    experts, experts_s = make_expert_weights(3, 64, 256, BLOCK, gen, device)
    x = make_activation((rows, 256), torch.bfloat16, gen, device)
    ids = torch.randint(0, 3, (rows, 2), generator=gen).to(device)[:, 1]  # stride 2
    expected = fp8.matmul_batched(x, experts, experts_s, ids.contiguous(), BLOCK)
    assert torch.equal(fp8.matmul_batched(x, experts, experts_s, ids, BLOCK), expected)
    counts = torch.bincount(ids, minlength=3).to(torch.int32)
    offsets = torch.cumsum(counts, 0, dtype=torch.int32)
    strided_offsets = torch.stack([offsets, torch.zeros_like(offsets)], 1)[:, 0]
    x_sorted = x[torch.sort(ids, stable=True).indices]
    expected = fp8.matmul_grouped(x_sorted, experts, experts_s, offsets, counts, BLOCK)
    assert torch.equal(fp8.matmul_grouped(x_sorted, experts, experts_s, strided_offsets, counts, BLOCK), expected)


@pytest.mark.parametrize("poison", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_input_stays_in_its_row(fp8, device, gen, poison):
    """A NaN or Inf in one row's activations changes only that row's outputs (and its own group
    scales), which become non-finite; every other row is bitwise what it is without the poison.
    Codes and scales follow the torch reference exactly (NaN propagates through amax and clamp)."""
    b, bs = make_weight(64, 256, (128, 128), gen, device)
    experts, experts_s = make_expert_weights(2, 64, 256, (128, 128), gen, device)
    x = make_activation((9, 256), torch.bfloat16, gen, device)
    bad = x.clone()
    bad[4, 17] = poison
    ids = torch.tensor([0, 1, 1, 0, 1, 0, 0, 1, 1], device=device)
    offsets = torch.tensor([4, 9], dtype=torch.int32, device=device)
    others = torch.arange(9, device=device) != 4
    calls = {
        "act_quant": lambda t: fp8.fp8_act_quant(t, 128)[1],
        "matmul_2d": lambda t: fp8.matmul_2d(t, b, bs, BLOCK),
        "batched": lambda t: fp8.matmul_batched(t, experts, experts_s, ids, BLOCK),
        "grouped": lambda t: fp8.matmul_grouped(t, experts, experts_s, offsets, offsets, BLOCK),
    }
    q, s = fp8.fp8_act_quant(bad, 128)
    q_ref, s_ref = quantize(bad.cpu(), 128)  # torch's semantics: NaN propagates through amax and clamp
    torch.testing.assert_close(s.cpu(), s_ref, rtol=0, atol=0, equal_nan=True)
    torch.testing.assert_close(q.cpu().float(), q_ref.float(), rtol=0, atol=0, equal_nan=True)
    for name, call in calls.items():
        clean, poisoned = call(x), call(bad)
        assert torch.equal(poisoned[others], clean[others]), f"{name}: the poison leaked into other rows"
        if name == "act_quant":
            assert torch.equal(poisoned[4, 1], clean[4, 1]), "the poison leaked into the row's other group"
        else:
            assert not poisoned[4].isfinite().any(), f"{name}: the poisoned row looks finite"


@pytest.mark.parametrize("name", ENTRY_POINTS)
def test_bitwise_deterministic(fp8, device, gen, name):
    call = valid_call(name, device)
    key = "x" if "x" in call else "A"
    call[key] = make_activation(tuple(call[key].shape), torch.float32, gen, device).to(call[key].dtype)
    if "B" in call:
        call["B"] = torch.randn(call["B"].shape, generator=gen).to(device).to(FP8)
    first, second = getattr(fp8, name)(**call), getattr(fp8, name)(**call)
    first, second = (first[0], second[0]) if name == "fp8_act_quant" else (first, second)
    assert torch.equal(first.view(torch.uint8), second.view(torch.uint8))


def _module_of(fp8, function_name: str):
    return sys.modules[getattr(fp8, function_name).__module__]


def _chained_calls(fp8, x, w, ws, experts_w, experts_ws, ids, offsets, tokens_per_expert) -> list[torch.Tensor]:
    """Calls that each take the previous call's output as activations: every launch reads what the
    one before it wrote (quantization -> GEMM -> split-K sum; routing -> gathering quantization ->
    expert GEMM)."""
    outs = []
    for _ in range(3):
        x = fp8.matmul_2d(x, w, ws, BLOCK)
        x = fp8.matmul_batched(x, experts_w, experts_ws, ids, BLOCK)
        x = fp8.matmul_grouped(x, experts_w, experts_ws, offsets, tokens_per_expert, BLOCK)
        outs.append(x)
    return outs


@requires_cuda
def test_dependent_launches_read_what_the_previous_kernel_wrote(fp8, gen, monkeypatch):
    """On Hopper, eager launches overlap the previous kernel's tail (programmatic dependent launch)
    and wait for it before reading anything: a chain of calls gives bitwise the results of the
    same launches without it."""
    device_module = sys.modules[f"{fp8.__name__}._device"]
    facts = device_module.device_facts(torch.device("cuda"))
    if not facts.dependent_launch:
        pytest.skip(f"{facts.arch} has no dependent launch here (before sm_90, or FINEGRAINED_FP8_PORTABLE=1)")
    w, ws = make_weight(512, 512, (128, 128), gen, "cuda")
    experts_w, experts_ws = make_expert_weights(4, 512, 512, (128, 128), gen, "cuda")
    x = make_activation((16, 512), torch.bfloat16, gen, "cuda")
    ids = torch.randint(0, 4, (16,), generator=gen).to("cuda")
    _, offsets, tokens_per_expert, _, _ = group_by_expert(x, ids, 4)
    args = (x, w, ws, experts_w, experts_ws, ids, offsets.to("cuda"), tokens_per_expert.to("cuda"))
    overlapped = _chained_calls(fp8, *args)
    for name in ("_quantize", "dense", "moe", "_routing"):
        monkeypatch.setattr(
            sys.modules[f"{fp8.__name__}.{name}"], "dependent_launch_options", lambda device: {"PDL": False}
        )
    serialized = _chained_calls(fp8, *args)
    for got, expected in zip(overlapped, serialized, strict=True):
        assert torch.isfinite(expected).all()
        assert torch.equal(got, expected)


CANARY = 12345.0


def _guarded(rows: int, cols: int, device: str, margin: int = 257) -> tuple[torch.Tensor, torch.Tensor]:
    """An output view of (rows, cols) inside a buffer of canaries; returns (buffer, view)."""
    buffer = torch.full((rows * cols + 2 * margin,), CANARY, device=device)
    return buffer, buffer[margin : margin + rows * cols].view(rows, cols)


def _canaries_intact(buffer: torch.Tensor, margin: int = 257) -> bool:
    return bool((buffer[:margin] == CANARY).all() and (buffer[-margin:] == CANARY).all())


# The last two take the Hopper Gluon kernel on an H100 (prefill sizes, TMA-aligned K).
@pytest.mark.parametrize("m, n, k", [(1, 70, 200), (17, 130, 136), (65, 96, 384), (200, 130, 1040), (300, 200, 256)])
def test_gemm_writes_nothing_outside_its_output(fp8, device, gen, m, n, k):
    dense = _module_of(fp8, "matmul_2d")
    b, bs = make_weight(n, k, (128, 128), gen, device)
    q, s = quantize(make_activation((m, k), torch.float32, gen, device).cpu(), 128)
    buffer, out = _guarded(m, n, device)
    dense.launch_gemm(b, bs, q.to(device), s.to(device), out, dense.Scaling(128, 128))
    assert _canaries_intact(buffer)
    assert not (out == CANARY).any(), "part of the output was not written"


@pytest.mark.parametrize("rows, experts, n, k", [(1, 3, 70, 200), (30, 4, 130, 136), (150, 2, 96, 384)])
def test_expert_gemm_writes_nothing_outside_its_output(fp8, device, gen, rows, experts, n, k):
    moe = _module_of(fp8, "matmul_grouped")
    b, bs = make_expert_weights(experts, n, k, (128, 128), gen, device)
    x = make_activation((rows, k), torch.bfloat16, gen, device)
    ids = torch.randint(0, experts + 1, (rows,), generator=gen).to(device)  # some sentinels
    buffer, out = _guarded(rows, n, device)
    perm, ends = sys.modules[f"{fp8.__name__}._routing"].route(ids, experts)
    moe.launch_expert_gemm(x, b, bs, out, ends, perm, moe.Scaling(128, 128), True)
    assert _canaries_intact(buffer) and not (out == CANARY).any()
    _, offsets, _, _, _ = group_by_expert(x, ids, experts)
    buffer, out = _guarded(rows, n, device)
    moe.launch_expert_gemm(x, b, bs, out, offsets.to(device), None, moe.Scaling(128, 128), False)
    routed = int(offsets[-1])
    assert _canaries_intact(buffer)
    assert not (out[:routed] == CANARY).any() and (out[routed:] == CANARY).all(), "sentinel tail was touched"


# -- Property-based comparison with the reference -----------------------------------------------

blocks = st.sampled_from([(128, 128), (64, 128), (32, 32), (128, 64), None])
dtypes = st.sampled_from([torch.bfloat16, torch.float16, torch.float32])


@given(
    m=st.integers(1, 40),
    n=st.integers(1, 160),
    k=st.integers(1, 300),
    block=blocks,
    dtype=dtypes,
    seed=st.integers(0, 2**31),
)
# Found on the H100: one output whose 32 products cancel to 1e-4 of their sum of magnitudes.
@example(m=2, n=1, k=32, block=(128, 128), dtype=torch.bfloat16, seed=0)
def test_property_matmul_2d(fp8, device, m, n, k, block, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    b, bs = make_weight(n, k, block, gen, device)
    x = make_activation((m, k), dtype, gen, device)
    group = k if block is None else block[1]
    _, s = quantize(x.cpu(), group)
    weights = (b[None], bs[None] if block is not None else bs)
    ids = torch.zeros(m, dtype=torch.int64)
    ref = moe_reference(x, *weights, ids, block)
    out = fp8.matmul_2d(x, b, bs, list(block) if block else None, torch.float32)
    assert_matches(out, ref, torch.float32, moe_reference(x, *weights, ids, block, absolute=True))
    assert torch.equal(fp8.fp8_act_quant(x, group)[1].cpu(), s)


@given(
    rows=st.integers(1, 60),
    experts=st.integers(1, 9),
    n=st.integers(1, 140),
    k=st.integers(1, 280),
    block=blocks,
    sentinels=st.integers(0, 5),
    seed=st.integers(0, 2**31),
)
# Found on the CPU (300 examples): grouped rows sorted unstably sit elsewhere in their tile than the
# batched ones, and the interpreter's FP8 dot then differed by one ulp (interpreter_shim.fp8_dot).
@example(rows=17, experts=1, n=2, k=126, block=(128, 128), sentinels=0, seed=0)
def test_property_moe(fp8, device, rows, experts, n, k, block, sentinels, seed):
    gen = torch.Generator().manual_seed(seed)
    b, bs = make_expert_weights(experts, n, k, block, gen, device)
    x = make_activation((rows, k), torch.bfloat16, gen, device)
    ids = torch.randint(0, experts + (1 if sentinels else 0), (rows,), generator=gen)
    ids[ids == experts] += torch.randint(0, sentinels + 1, (int((ids == experts).sum()),), generator=gen)
    ids = ids.to(device)
    ref = moe_reference(x, b, bs, ids, block)
    block_arg = list(block) if block else None
    batched = fp8.matmul_batched(x, b, bs, ids, block_arg, torch.float32)
    assert_matches(batched, ref, torch.float32, moe_reference(x, b, bs, ids, block, absolute=True))
    x_sorted, offsets, tpe, _, perm = group_by_expert(x, ids, experts)
    grouped = fp8.matmul_grouped(x_sorted, b, bs, offsets.to(device), tpe.to(device), block_arg, torch.float32)
    routed = int(offsets[-1])
    assert torch.equal(grouped[:routed], batched[perm.to(device)][:routed])
