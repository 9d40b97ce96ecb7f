"""Dense FP8 matmul: every mode against the float64 reference; fused equals pre-quantized bitwise."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from checks import assert_matches, make_activation, make_weight
from conftest import BACKEND, HAS_CUDA, OPCHECK_UTILS, requires_cuda, requires_hopper
from reference import (
    FP8,
    dequantize_activation,
    dequantize_weight,
    matmul_reference,
    quantize,
    quantize_static,
)


def block_reference(a_q, a_s, b, b_s, block, group):
    return matmul_reference(
        dequantize_activation(a_q.cpu(), a_s.cpu(), group), dequantize_weight(b.cpu(), b_s.cpu(), block)
    )


BLOCKS = [(128, 128), (64, 128), (32, 32), (128, 64)]
SHAPES = [(1, 256, 384), (15, 200, 300), (17, 96, 130), (70, 160, 256), (130, 64, 1024)]


@pytest.mark.kernels_ci
@pytest.mark.parametrize("block", BLOCKS)
@pytest.mark.parametrize("m, n, k", SHAPES)
def test_block_matmul(fp8, device, gen, block, m, n, k):
    b, b_s = make_weight(n, k, block, gen, device)
    a_q, a_s = quantize(make_activation((m, k), torch.float32, gen, device).cpu(), block[1])
    out = fp8.w8a8_block_fp8_matmul(a_q.to(device), b, a_s.to(device), b_s, list(block), torch.bfloat16)
    assert_matches(out, block_reference(a_q, a_s, b, b_s, block, block[1]), torch.bfloat16)


@pytest.mark.parametrize("out_dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_output_dtypes_and_leading_dims(fp8, device, gen, out_dtype):
    block = (128, 128)
    b, b_s = make_weight(192, 320, block, gen, device)
    a_q, a_s = quantize(make_activation((2, 9, 320), torch.float32, gen, device, out_dtype).cpu(), 128)
    out = fp8.w8a8_fp8_matmul(a_q.to(device), b, a_s.to(device), b_s, [128, 128], output_dtype=out_dtype)
    assert out.shape == (2, 9, 192)
    assert_matches(out, block_reference(a_q, a_s, b, b_s, block, 128), out_dtype)


def test_ue8m0_weight_scales(fp8, device, gen):
    block = (128, 128)
    b, b_s = make_weight(256, 512, block, gen, device, ue8m0=True)
    assert b_s.dtype == torch.float8_e8m0fnu
    x = make_activation((5, 512), torch.bfloat16, gen, device)
    out = fp8.matmul_2d(x, b, b_s, [128, 128])
    a_q, a_s = quantize(x.cpu(), 128)
    assert_matches(out, block_reference(a_q, a_s, b, b_s, block, 128), torch.bfloat16)


@pytest.mark.parametrize("m", [1, 33, 100])
def test_static_activation_scale_block_mode(fp8, device, gen, m):
    block = (128, 128)
    b, b_s = make_weight(160, 256, block, gen, device)
    x = make_activation((m, 256), torch.bfloat16, gen, device)
    scale = (x.float().abs().amax() / 448).reshape(())
    q = quantize_static(x, scale)
    ref = block_reference(q, scale, b, b_s, block, 128)
    assert_matches(fp8.matmul_2d(x, b, b_s, [128, 128], activation_scale=scale), ref, torch.bfloat16)
    assert_matches(fp8.w8a8_fp8_matmul(q, b, scale, b_s, [128, 128], torch.bfloat16), ref, torch.bfloat16)


@pytest.mark.kernels_ci
@pytest.mark.parametrize("m", [1, 20, 90])
@pytest.mark.parametrize("as_shape", ["row", "row1", "scalar"])
def test_per_tensor_matmul(fp8, device, gen, m, as_shape):
    n, k = 144, 400
    b, b_s = make_weight(n, k, None, gen, device)
    a_q, a_s = quantize(make_activation((m, k), torch.float32, gen, device).cpu(), k)  # one scale per row
    if as_shape == "row":
        a_s = a_s.reshape(m)
    elif as_shape == "scalar":  # static scheme: one scale for the whole tensor
        x = make_activation((m, k), torch.float32, gen, device).cpu()
        a_s = (x.abs().amax() / 448).reshape(())
        a_q = torch.clamp(x / a_s, -448, 448).to(FP8)
    ref = matmul_reference(dequantize_activation(a_q, a_s, k), dequantize_weight(b.cpu(), b_s.cpu(), None))
    out = fp8.w8a8_tensor_fp8_matmul(a_q.to(device), b, a_s.to(device), b_s, torch.float32)
    assert_matches(out, ref, torch.float32)
    out = fp8.w8a8_fp8_matmul(a_q.to(device), b, a_s.to(device), b_s, [n, k], torch.float32)
    assert_matches(out, ref, torch.float32)


@pytest.mark.parametrize("m", [3, 80])
def test_matmul_2d_per_tensor(fp8, device, gen, m):
    n, k = 100, 272
    b, b_s = make_weight(n, k, None, gen, device)
    x = make_activation((m, k), torch.bfloat16, gen, device)
    a_q, a_s = quantize(x.cpu(), k)
    ref = matmul_reference(dequantize_activation(a_q, a_s, k), dequantize_weight(b.cpu(), b_s.cpu(), None))
    assert_matches(fp8.matmul_2d(x, b, b_s, None), ref, torch.bfloat16)
    assert_matches(fp8.matmul(x, b, b_s, [n, k], torch.float32), ref, torch.float32)


@pytest.mark.kernels_ci
@pytest.mark.parametrize("m", [1, 16, 17, 64, 65, 200])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_fused_equals_prequantized_bitwise(fp8, device, gen, m, dtype):
    """matmul_2d quantizes exactly as fp8_act_quant, on every tile path (decode, Gluon, 64 x 64 padded)."""
    b, b_s = make_weight(136, 520, (128, 128), gen, device)
    x = make_activation((m, 520), dtype, gen, device)
    fused = fp8.matmul_2d(x, b, b_s, [128, 128], torch.float32)
    q, s = fp8.fp8_act_quant(x, 128)
    unfused = fp8.w8a8_block_fp8_matmul(q, b, s, b_s, [128, 128], torch.float32)
    assert torch.equal(fused, unfused)
    assert_matches(fused, block_reference(q, s, b, b_s, (128, 128), 128), torch.float32)


def test_split_k_is_deterministic(fp8, device, gen):
    """Few output tiles and a long K select split-K; results are bitwise stable."""
    b, b_s = make_weight(64, 2048, (128, 128), gen, device)
    x = make_activation((4, 2048), torch.bfloat16, gen, device)
    first = fp8.matmul_2d(x, b, b_s, [128, 128], torch.float32)
    assert torch.equal(first, fp8.matmul_2d(x, b, b_s, [128, 128], torch.float32))
    q, s = quantize(x.cpu(), 128)
    assert_matches(first, block_reference(q, s, b, b_s, (128, 128), 128), torch.float32)


def test_empty_m(fp8, device, gen):
    b, b_s = make_weight(64, 128, (128, 128), gen, device)
    out = fp8.matmul_2d(torch.empty(0, 128, dtype=torch.bfloat16, device=device), b, b_s, [128, 128])
    assert out.shape == (0, 64) and out.dtype == torch.bfloat16


def test_empty_n(fp8, device, gen):
    """N = 0 (with rows and K): an empty (..., 0) result from the fused and pre-quantized matmuls."""
    b = torch.zeros(0, 128, dtype=torch.float8_e4m3fn, device=device)
    b_s = torch.ones(0, 1, device=device)
    a = make_activation((2, 3, 128), torch.bfloat16, gen, device)
    q, s = fp8.fp8_act_quant(a, 128)
    assert fp8.matmul_2d(a, b, b_s, [128, 128]).shape == (2, 3, 0)
    assert fp8.w8a8_block_fp8_matmul(q, b, s, b_s, [128, 128], torch.bfloat16).shape == (2, 3, 0)


def test_empty_k_is_an_empty_sum(fp8, device):
    """K = 0: every output element is 0 in every mode (outputs left unwritten would be NaN), and the
    quantization returns empty codes and scales."""
    b = torch.zeros(64, 0, dtype=torch.float8_e4m3fn, device=device)
    b_s = torch.ones(1, 0, device=device)
    a = torch.empty(2, 3, 0, dtype=torch.bfloat16, device=device)
    q, s = fp8.fp8_act_quant(a, 128)
    assert q.shape == (2, 3, 0) and s.shape == (2, 3, 0)
    calls = {
        "matmul_2d": lambda: fp8.matmul_2d(a, b, b_s, [128, 128], torch.float32),
        "w8a8_block_fp8_matmul": lambda: fp8.w8a8_block_fp8_matmul(q, b, s, b_s, [128, 128], torch.float32),
        "w8a8_tensor_fp8_matmul": lambda: fp8.w8a8_tensor_fp8_matmul(
            q, b, torch.ones((), device=device), torch.ones((), device=device), torch.float32
        ),
    }
    for name, call in calls.items():
        out = call()  # allocated NaN-filled (conftest.outputs_start_as_nan): unwritten elements would show
        assert out.shape == (2, 3, 64) and torch.equal(out, torch.zeros_like(out)), name


def test_opcheck(fp8, device, gen):
    # opcheck's schema test compares inputs with torch.allclose, which torch lacks for fp8 tensors.
    utils = tuple(u for u in OPCHECK_UTILS if u != "test_schema")
    b, b_s = make_weight(64, 256, (128, 128), gen, device)
    x = make_activation((3, 256), torch.bfloat16, gen, device)
    torch.library.opcheck(fp8.ops.fp8_matmul_fused, (x, b, b_s, None, 128, 128, torch.bfloat16), test_utils=utils)
    q, s = fp8.fp8_act_quant(x)
    torch.library.opcheck(fp8.ops.fp8_matmul, (q, b, s, b_s, 128, 128, torch.float32), test_utils=utils)


def test_bad_prequantized_input_is_refused(fp8, device):
    b = torch.zeros(64, 256, device=device).to(FP8)
    bs = torch.ones(1, 2, device=device)
    q = torch.zeros(3, 256, device=device).to(FP8)
    with pytest.raises(TypeError, match=r"^A\b"):
        fp8.w8a8_fp8_matmul(q.float(), b, torch.ones(3, 2, device=device), bs, [128, 128])
    with pytest.raises(ValueError, match=r"^As\b"):
        fp8.w8a8_fp8_matmul(q, b, torch.ones(3, 3, device=device), bs, [128, 128])
    with pytest.raises(TypeError, match=r"^As\b"):
        fp8.w8a8_fp8_matmul(q, b, torch.ones(3, 2, device=device, dtype=torch.float16), bs, [128, 128])
    with pytest.raises(TypeError, match=r"^output_dtype\b"):
        fp8.w8a8_fp8_matmul(q, b, torch.ones(3, 2, device=device), bs, [128, 128], torch.int32)
    with pytest.raises(ValueError, match=r"^block_size\b"):
        fp8.w8a8_block_fp8_matmul(q, b, torch.ones(3, 2, device=device), bs, None)
    with pytest.raises(ValueError, match=r"^activation_scale\b"):
        fp8.matmul_2d(
            torch.ones(3, 256, device=device), b, bs, [128, 128], activation_scale=torch.ones(2, device=device)
        )


@requires_cuda
def test_tensors_on_different_devices_are_refused(fp8, gen):
    b, b_s = make_weight(64, 256, (128, 128), gen, "cuda")
    with pytest.raises(ValueError, match=r"^B is on"):
        fp8.matmul_2d(torch.ones(3, 256, device="cuda"), b.cpu(), b_s, [128, 128])


@pytest.mark.skipif(HAS_CUDA, reason="checks the refusal of CPU tensors outside the interpreter")
def test_cpu_tensors_refused_when_not_interpreting(fp8, gen, monkeypatch):
    b, b_s = make_weight(64, 256, (128, 128), gen, "cpu")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match=r"^A is a CPU tensor"):
        fp8.matmul_2d(torch.ones(3, 256), b, b_s, [128, 128])


@requires_cuda
@pytest.mark.parametrize("m", [7, 256])  # 256: the Hopper Gluon kernel, reached through its opaque op
def test_compile_fullgraph(fp8, gen, m):
    b, b_s = make_weight(256, 2048, (128, 128), gen, "cuda")
    x = make_activation((m, 2048), torch.bfloat16, gen, "cuda")
    compiled = torch.compile(lambda t: fp8.matmul_2d(t, b, b_s, [128, 128]), fullgraph=True)
    assert torch.equal(compiled(x), fp8.matmul_2d(x, b, b_s, [128, 128]))


@requires_cuda
@pytest.mark.parametrize("m", [4, 300])
def test_cuda_graph_replay_with_new_values(fp8, gen, m):
    """Captured once (split-K at m=4), replayed on new activations: same as eager calls."""
    b, b_s = make_weight(256, 2048, (128, 128), gen, "cuda")
    x = make_activation((m, 2048), torch.bfloat16, gen, "cuda")
    fp8.matmul_2d(x, b, b_s, [128, 128])  # compile outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fp8.matmul_2d(x, b, b_s, [128, 128])
    for _ in range(2):
        x.copy_(make_activation((m, 2048), torch.bfloat16, gen, "cuda"))
        out.fill_(float("nan"))
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(out, fp8.matmul_2d(x, b, b_s, [128, 128]))


def _dense_module(fp8):
    return sys.modules[fp8.matmul_2d.__module__]


@requires_hopper
@pytest.mark.parametrize(
    "m, n, k, out_dtype, ue8m0, static",
    [
        (65, 200, 1040, torch.bfloat16, False, False),  # 64 x 64 tiles, N and K tails, x copied to whole tiles
        (100, 13000, 512, torch.float32, False, False),  # 64 x 64 tiles, three programs per SM
        (80, 13000, 512, torch.bfloat16, True, False),  # the same, x copied to whole tiles
        (200, 328, 1040, torch.bfloat16, True, False),  # 64 x 128 tiles, N and K tails
        (300, 384, 2048, torch.float32, False, False),  # 128-token tiles, M tail
        (1000, 1000, 1024, torch.float16, True, False),
        (1050, 256, 2048, torch.bfloat16, False, False),  # the last tile's second warpgroup lies past M
        # 162 tiles: with 132 SMs (H100, H200) the last 30 are cut in halves, one of them past M
        (1050, 2304, 1024, torch.bfloat16, False, False),
        (1100, 2304, 512, torch.float32, True, False),
        (300, 333, 1024, torch.bfloat16, False, False),  # rows not 16-byte aligned: no TMA store
        (257, 256, 512, torch.bfloat16, False, True),  # one static activation scale
    ],
)
def test_wgmma_kernel_matches_plain_triton_twin(fp8, gen, m, n, k, out_dtype, ue8m0, static):
    """The Hopper Gluon kernel agrees with the plain-Triton kernel CI tests to the output's rounding.

    Not bitwise: the two put tokens and weights on opposite sides of the wgmma, and the tensor
    cores sum a K block's 128 products in an order of their own."""
    dense = _dense_module(fp8)
    b, b_s = make_weight(n, k, (128, 128), gen, "cuda", ue8m0=ue8m0)
    x = make_activation((m, k), torch.float32, gen, "cuda", out_dtype)
    if static:
        a_s = torch.tensor([x.abs().max().item() / 448.0], device="cuda")
        a_q = quantize_static(x.cpu(), a_s.cpu()).cuda()
    else:
        a_q, a_s = fp8.fp8_act_quant(x, 128)
    gluon_out = torch.full((m, n), float("nan"), dtype=out_dtype, device="cuda")
    twin_out = torch.full((m, n), float("nan"), dtype=out_dtype, device="cuda")
    scaling = dense.Scaling(128, 128)
    assert dense.hopper_gemm.serves(a_q, b, gluon_out, scaling)
    dense.launch_gemm(b, b_s, a_q, a_s, gluon_out, scaling)
    plain_tiles = dense.gemm_tiles(m, n, k, 128, a_q.device)
    dense.launch_gemm(b, b_s, a_q, a_s, twin_out, scaling, plain_tiles)
    assert not gluon_out.isnan().any()
    ulp = {torch.bfloat16: 2**-7, torch.float16: 2**-10, torch.float32: 2**-20}[out_dtype]
    torch.testing.assert_close(gluon_out, twin_out, rtol=ulp, atol=ulp * twin_out.abs().max().item())


# H100 limits a launch must fit (per SM): registers, shared memory, and the 1 KB the hardware keeps per block.
_SM_REGISTERS = 65536
_SM_SHARED_BYTES = 228 * 1024
_BLOCK_RESERVED_SHARED_BYTES = 1024


@pytest.mark.compile_matrix
def test_gluon_kernel_compiles_for_hopper_within_sm_limits(build_dir):
    """Every tile configuration the Gluon kernel ships (dense and grouped) compiles for sm_90a, on any
    machine, with its arguments specialized as a launch specializes them, and its programs per SM fit
    an SM's registers and shared memory (a configuration over either fails only at launch, on the
    GPU), its tiles leave through one TMA copy per math warpgroup where ``stores_through_tma`` says
    so, else through stores from registers, and ptxas keeps the wgmmas of a K block in one chain (no
    serialization), with two K blocks' wgmmas in flight on 128-token tiles. Nothing spills registers
    (no instruction touches local memory): the grouped expert lookup over 256 experts spilled in the
    loader warp until it held the experts 8 to a thread."""
    # (m, k, dense n or None for grouped over 256 experts, UE8M0 weight scales, out dtype) -> the shipped
    # (block_m, block_n, stages, programs per SM), TMA stores per math warpgroup
    cases = {
        (100, 7168, 18432, False, "bf16"): ([64, 64, 4, 3], 1),
        (100, 7168, 18432, False, "fp32"): ([64, 64, 4, 3], 0),
        (200, 1040, 328, True, "fp32"): ([128, 128, 4, 1], 0),
        (200, 1040, 328, True, "bf16"): ([128, 128, 4, 1], 1),
        (180, 1040, 328, False, "bf16"): ([64, 128, 3, 2], 1),
        (250, 7168, 18432, False, "bf16"): ([128, 128, 4, 1], 1),
        (1000, 7168, 18432, False, "bf16"): ([128, 128, 4, 1], 1),
        (1000, 1536, 24576, False, "fp16"): ([128, 128, 4, 1], 1),
        (1100, 512, 2304, True, "fp32"): ([128, 128, 4, 1], 0),
        (100, 512, None, True, "bf16"): ([64, 128, 3, 2], 1),
        (100, 512, None, True, "fp32"): ([64, 128, 3, 2], 0),
        (600, 768, None, False, "bf16"): ([128, 128, 4, 1], 1),
        (600, 768, None, False, "fp32"): ([128, 128, 4, 1], 0),
        (300, 7168, None, False, "bf16"): ([128, 128, 4, 1], 0),
        (300, 2048, None, False, "bf16"): ([128, 128, 4, 1], 0),
    }
    env = {name: value for name, value in os.environ.items() if name != "TRITON_INTERPRET"}
    script = Path(__file__).parent / "compile_gluon.py"
    run = subprocess.run(
        [sys.executable, str(script), str(build_dir / f"torch-{BACKEND}"), json.dumps(list(cases))],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    results = [json.loads(line) for line in run.stdout.splitlines()]
    assert len(results) == len(cases)
    for (case, (expected, tma_stores)), result in zip(cases.items(), results, strict=True):
        *tiles, max_registers = result["tiles"]
        assert tiles == expected, case
        per_sm = tiles[3]
        assert result["wgmma"] > 0, case
        assert result["tma_stores"] == tma_stores * tiles[0] // 64, (case, result)
        assert result["local_memory_instructions"] == 0, (case, result)
        # 128-token tiles keep two K blocks' products in flight per math warpgroup, 64-token tiles one.
        assert (result["waits_leaving_one_wgmma"] > 0) == (tiles[0] == 128), (case, result)
        assert not result["wgmma_serialized"], (case, result)
        assert per_sm * result["threads"] * max_registers <= _SM_REGISTERS, (case, result)
        assert per_sm * (result["shared"] + _BLOCK_RESERVED_SHARED_BYTES) <= _SM_SHARED_BYTES, (case, result)


@requires_hopper
def test_wgmma_op_opcheck(fp8, gen):
    utils = tuple(u for u in OPCHECK_UTILS if u != "test_schema")
    b, b_s = make_weight(256, 512, (128, 128), gen, "cuda")
    a_q, a_s = fp8.fp8_act_quant(make_activation((130, 512), torch.bfloat16, gen, "cuda"), 128)
    out = torch.empty((130, 256), dtype=torch.bfloat16, device="cuda")
    torch.library.opcheck(fp8.ops.gemm_wgmma, (a_q, b, a_s, b_s, out, None), test_utils=utils)
