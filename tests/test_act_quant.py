"""fp8_act_quant: exact codes and scales against the plain-torch reference."""

from __future__ import annotations

import sys

import pytest
import torch
from conftest import HAS_CUDA, OPCHECK_UTILS, requires_cuda
from reference import FP8, quantize, quantize_static


def _randn(shape, dtype, gen, device, scale=3.0):
    x = torch.randn(shape, generator=gen) * scale
    # vary magnitudes between groups so that scales differ by orders of magnitude
    x = x * torch.exp2(torch.randint(-8, 9, (*shape[:-1], 1), generator=gen).float())
    return x.to(dtype).to(device)


def _assert_exact(q, s, x, group, pow2=False):
    q_ref, s_ref = quantize(x.cpu(), group, pow2)
    assert q.dtype == FP8 and s.dtype == torch.float32
    assert q.shape == x.shape and s.shape == s_ref.shape
    torch.testing.assert_close(s.cpu(), s_ref, rtol=0, atol=0)
    assert torch.equal(q.cpu().view(torch.uint8), q_ref.view(torch.uint8))


@pytest.mark.kernels_ci
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("shape", [(1, 128), (17, 384), (3, 5, 200), (2, 64)])
def test_codes_and_scales_exact(fp8, device, gen, dtype, shape):
    x = _randn(shape, dtype, gen, device)
    q, s = fp8.fp8_act_quant(x, 128)
    _assert_exact(q, s, x, 128)


@pytest.mark.parametrize("k", [768, 5632, 100])
def test_one_group_per_row_any_k(fp8, device, gen, k):
    x = _randn((5, k), torch.bfloat16, gen, device)
    q, s = fp8.fp8_act_quant(x, k)
    assert s.shape == (5, 1)
    _assert_exact(q, s, x, k)


@pytest.mark.parametrize("group", [32, 64, 96])
def test_other_group_sizes(fp8, device, gen, group):
    x = _randn((9, 300), torch.float32, gen, device)
    q, s = fp8.fp8_act_quant(x, group)
    _assert_exact(q, s, x, group)


def test_zero_groups_get_the_floor_not_nan(fp8, device, gen):
    x = _randn((4, 256), torch.bfloat16, gen, device)
    x[1] = 0
    x[2, 128:] = 0
    q, s = fp8.fp8_act_quant(x, 128)
    _assert_exact(q, s, x, 128)
    assert s[1, 0].item() == pytest.approx(1e-12) and s[2, 1].item() == pytest.approx(1e-12)
    assert not torch.isnan(q.float()).any()


def test_rounding_carries_into_exponent_and_ties_to_even(fp8, device):
    """Values chosen so that x / s lands on fp8 rounding edges (127.4 -> 128, ties to even)."""
    row = torch.tensor([448.0, 127.4, 120.0, 124.0, 132.0, 9.5, 11.5, -13.5, 0.0, 1e-3], dtype=torch.float32)
    x = torch.nn.functional.pad(row, (0, 118)).reshape(1, 128).to(device)
    q, s = fp8.fp8_act_quant(x, 128)
    assert s.item() == 1.0
    expected = [448.0, 128.0, 120.0, 128.0, 128.0, 10.0, 12.0, -14.0, 0.0, 0.001953125]
    assert q.float()[0, :10].cpu().tolist() == expected
    _assert_exact(q, s, x, 128)


def _every_finite_value(dtype: torch.dtype) -> torch.Tensor:
    values = torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16).view(dtype)
    return values[values.isfinite()]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_every_finite_value_of_the_dtype(fp8, device, gen, dtype):
    """Every finite value (zeros, subnormals and -0 included), 127 consecutive bit patterns (about
    one binade) per group, led once by the group's own amax and once by a multiple of it up to
    2**14 (at most the dtype's largest), so that the quotients reach every fp8 binade."""
    values = _every_finite_value(dtype).float()
    values = torch.nn.functional.pad(values, (0, -values.numel() % 127)).reshape(-1, 127)
    amax = values.abs().amax(1, keepdim=True)
    larger = (amax * torch.exp2(torch.rand(amax.shape, generator=gen) * 14)).clamp(max=torch.finfo(dtype).max)
    x = torch.cat([torch.cat([leader, values], 1) for leader in (amax, larger)]).to(dtype)
    x = x.reshape(-1, 512) if x.shape[0] % 4 == 0 else x
    q, s = fp8.fp8_act_quant(x.to(device), 128)
    _assert_exact(q, s, x, 128)


def _assert_same_codes_any_nan(q: torch.Tensor, q_ref: torch.Tensor) -> None:
    """Codes bit for bit, except that a NaN matches a NaN of either sign (CPU and GPU divisions
    give NaNs of different signs; e4m3 has two NaN codes, 0x7f and 0xff)."""
    got, want = q.cpu().view(torch.uint8), q_ref.view(torch.uint8)
    nan_got, nan_want = (got & 0x7F) == 0x7F, (want & 0x7F) == 0x7F
    assert torch.equal(nan_got, nan_want)
    assert torch.equal(got[~nan_got], want[~nan_want])


@pytest.mark.parametrize(
    "scale",
    [
        1.0,
        3.3e-3,
        -0.37,
        7.1e5,
        1e-20,
        1.5 * 2.0**-90,
        2.0**126,
        2.0**-95,
        1e-40,
        2.0**127,
        0.0,
        float("inf"),
        float("nan"),
    ],
)
def test_static_codes_exact_for_every_bf16_value(fp8, device, scale):
    """The static scheme's codes (the quantization inside ``matmul_2d(..., activation_scale=)``) for
    every finite bf16 value, with ordinary scales and extreme ones (near either end of the normal
    range, subnormal, huge, 0, Inf, NaN), where quotients also overflow and give NaN."""
    quantize_2d = sys.modules[f"{fp8.__name__}._quantize"].quantize_2d
    x = _every_finite_value(torch.bfloat16).reshape(-1, 128)
    s = torch.tensor(scale, dtype=torch.float32)
    q, s_used = quantize_2d(x.to(device), 128, s.to(device))
    assert s_used.item() == s.item() or scale != scale
    _assert_same_codes_any_nan(q, quantize_static(x, s))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_power_of_two_scales(fp8, device, gen, dtype):
    x = _randn((6, 384), dtype, gen, device)
    x[0, :128] = 448.0  # amax / 448 == 1 exactly: already a power of two
    q, s = fp8.fp8_act_quant(x, 128, power_of_two_scale=True)
    mantissa, _ = torch.frexp(s)
    assert (mantissa == 0.5).all()
    assert s[0, 0].item() == 1.0
    _assert_exact(q, s, x, 128, pow2=True)


def test_empty_and_noncontiguous(fp8, device, gen):
    q, s = fp8.fp8_act_quant(torch.empty(0, 256, dtype=torch.bfloat16, device=device), 128)
    assert q.shape == (0, 256) and s.shape == (0, 2)
    base = _randn((256, 12), torch.bfloat16, gen, device)
    x = base.t()  # (12, 256), stride along K is 12
    q, s = fp8.fp8_act_quant(x, 128)
    _assert_exact(q, s, x, 128)


@pytest.mark.kernels_ci
@pytest.mark.parametrize(
    "x, kwargs, exc, name",
    [
        (torch.ones(2, 128, dtype=torch.int32), {}, TypeError, "x"),
        (torch.ones(2, 128).to(FP8), {}, TypeError, "x"),
        (torch.tensor(1.0), {}, ValueError, "x"),
        (torch.ones(2, 128), {"block_size": 0}, ValueError, "block_size"),
        (torch.ones(2, 128), {"block_size": -128}, ValueError, "block_size"),
        (torch.ones(2, 128), {"block_size": 128.0}, TypeError, "block_size"),
        ([1.0, 2.0], {}, TypeError, "x"),
    ],
)
def test_bad_input_is_refused(fp8, device, x, kwargs, exc, name):
    if isinstance(x, torch.Tensor):
        x = x.to(device)
    with pytest.raises(exc, match=rf"^{name}(?!\w)"):
        fp8.fp8_act_quant(x, **kwargs)


@pytest.mark.skipif(HAS_CUDA, reason="checks the refusal of CPU tensors outside the interpreter")
def test_cpu_tensor_refused_when_not_interpreting(fp8, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match=r"^x is a CPU tensor"):
        fp8.fp8_act_quant(torch.ones(2, 128), 128)


def test_opcheck(fp8, device, gen):
    x = _randn((5, 256), torch.bfloat16, gen, device)
    torch.library.opcheck(fp8.ops.fp8_act_quant, (x, 128, False), test_utils=OPCHECK_UTILS)


@requires_cuda
def test_compile_fullgraph(fp8, gen):
    x = _randn((33, 7168), torch.bfloat16, gen, "cuda")
    compiled = torch.compile(lambda t: fp8.fp8_act_quant(t, 128), fullgraph=True)
    q, s = compiled(x)
    _assert_exact(q, s, x, 128)


@requires_cuda
def test_large_shape_exact_on_gpu(fp8, gen):
    x = _randn((4096, 7168), torch.bfloat16, gen, "cuda")
    q, s = fp8.fp8_act_quant(x, 128)
    _assert_exact(q, s, x, 128)
