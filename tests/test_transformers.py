"""Transformers' FP8 modules on our kernels, for both call generations (README.md: "With Transformers").

- Generation 2 (Transformers 5.13+, here 5.17: ``matmul_2d``, ``matmul_batched``,
  ``matmul_grouped``), loader path: Transformers' own
  ``transformers.integrations.hub_kernels.lazy_load_kernel("finegrained-fp8")`` calls
  ``kernels.get_kernel`` with ``LOCAL_KERNELS`` pointing at this run's build (set by the ``fp8``
  fixture); nothing is injected.
- Generation 1 (Transformers 5.4-5.10, here 5.9: ``fp8_act_quant``, ``w8a8_fp8_matmul*``), injection
  path: that release needs a ``kernels`` release older than 0.13, which cannot read this build, so the
  build is imported as a plain package and put into ``hub_kernels._KERNEL_MODULE_MAPPING``, where
  Transformers' loader finds it. ``scripts/test_pinned.sh requirements-gen1.txt`` runs this file that way.

The ``transformers_fp8`` fixture checks that the functions Transformers resolved are this build's.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from checks import TOL, assert_matches, make_activation, make_expert_weights, make_weight
from conftest import import_build, requires_cuda
from reference import dequantize_activation, dequantize_weight, matmul_reference, quantize, quantize_static
from tiny_model import load_fp8_model, tiny_qwen3_moe
from transformers import Qwen3MoeConfig
from transformers.integrations import finegrained_fp8 as tf_fp8
from transformers.integrations import hub_kernels

GENERATION = 2 if hasattr(tf_fp8, "load_finegrained_fp8_kernel") else 1
requires_generation_2 = pytest.mark.skipif(GENERATION == 1, reason="Transformers 5.17 behaviour (generation 2)")
EXPERT_IMPLEMENTATIONS = ["eager", "batched_mm", "grouped_mm"]


@pytest.fixture(autouse=True)
def no_deepgemm(monkeypatch):
    """Transformers' FP8Linear tries DeepGEMM first on Hopper; it is not installed here (and a failed
    Hub lookup inside a torch.compile trace is an error), so use its documented switch to skip it."""
    monkeypatch.setenv("TRANSFORMERS_DISABLE_DEEPGEMM_LINEAR", "1")


@pytest.fixture(scope="module")
def transformers_fp8(request, build_dir):
    """Make Transformers load this run's build (see the module docstring for the two paths)."""
    hub_kernels._KERNEL_MODULE_MAPPING.pop("finegrained-fp8", None)
    if GENERATION == 2:
        package = request.getfixturevalue("fp8")
        tf_fp8._FINEGRAINED_FP8 = None
        loaded = hub_kernels.lazy_load_kernel("finegrained-fp8")
        assert loaded is not None, "Transformers could not load the package through kernels.get_kernel"
        assert loaded.__file__ == package.__file__, f"Transformers loaded {loaded.__file__}, not this run's build"
        bundle = tf_fp8.load_finegrained_fp8_kernel()
        resolved = {bundle.matmul: loaded.matmul_2d, bundle.grouped_matmul: loaded.matmul_grouped}
    else:
        loaded = import_build(build_dir)
        hub_kernels._KERNEL_MODULE_MAPPING["finegrained-fp8"] = loaded
        tf_fp8._load_finegrained_fp8_kernel.cache_clear()
        bundle = tf_fp8._load_finegrained_fp8_kernel()
        resolved = {
            bundle.fp8_act_quant: loaded.fp8_act_quant,
            bundle.batched_fp8_matmul: loaded.w8a8_fp8_matmul_batched,
        }
    assert all(got is ours for got, ours in resolved.items())
    return loaded


def fp8_linear_module(n, k, block, scheme, bias, gen, device):
    """A Transformers FP8Linear with random quantized weights; returns (module, codes, scales)."""
    layer = tf_fp8.FP8Linear(k, n, block_size=block, activation_scheme=scheme, has_bias=bias)
    q, s = make_weight(n, k, block, gen, "cpu")
    with torch.no_grad():
        layer.weight.copy_(q)
        layer.weight_scale_inv = torch.nn.Parameter(s.reshape(layer.weight_scale_inv.shape), requires_grad=False)
        if bias:
            layer.bias.copy_(torch.randn(n, generator=gen))
    return layer.to(device), q, s


@pytest.mark.parametrize("block", [(128, 128), None])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("shape", [(7, 200), (2, 5, 200)])
@pytest.mark.parametrize("scheme, bias", [("dynamic", False), ("dynamic", True), ("static", False)])
def test_fp8_linear(transformers_fp8, device, gen, block, dtype, shape, scheme, bias):
    n, k = 96, shape[-1]
    layer, q, s = fp8_linear_module(n, k, block, scheme, bias, gen, device)
    x = make_activation(shape, dtype, gen, device)
    static_scale = x.float().abs().amax().cpu() / 300  # the largest values clamp at 448
    with torch.no_grad():
        if scheme == "static":
            layer.activation_scale.fill_(static_scale)
        out = layer(x)
    if scheme == "static":
        if GENERATION == 1:  # Transformers 5.9 quantizes static activations itself, in the input dtype
            q_static = (x.cpu() / static_scale).clamp(-448, 448).to(torch.float8_e4m3fn)
        else:
            q_static = quantize_static(x.cpu(), static_scale)
        x_deq = dequantize_activation(q_static, static_scale, k)
    else:
        group = k if block is None else block[1]
        x_deq = dequantize_activation(*quantize(x.cpu(), group), group)
    ref = matmul_reference(x_deq, dequantize_weight(q, s, block))
    if bias:
        ref = ref + layer.bias.detach().cpu().double()
    assert out.shape == (*shape[:-1], n)
    assert_matches(out, ref, dtype)


def moe_config(hidden, intermediate, experts, top_k, implementation):
    config = Qwen3MoeConfig(
        hidden_size=hidden,
        moe_intermediate_size=intermediate,
        num_experts=experts,
        num_experts_per_tok=top_k,
        hidden_act="silu",
    )
    config._experts_implementation = implementation
    return config


class _Experts(tf_fp8.FP8Experts):
    """FP8Experts with Transformers' experts-implementation dispatch, as its FP8 quantizer builds it."""


tf_fp8.use_experts_implementation(experts_class=_Experts, experts_interface=tf_fp8.ALL_FP8_EXPERTS_FUNCTIONS)


def fp8_experts_module(config, block, gen, device):
    """Transformers' FP8Experts with random weights; returns (module, dequantized gate_up, dequantized down)."""
    experts = _Experts(config, block_size=block)
    e, h, i = config.num_experts, config.hidden_size, config.moe_intermediate_size
    gate_up, gate_up_s = make_expert_weights(e, 2 * i, h, block, gen, "cpu")
    down, down_s = make_expert_weights(e, h, i, block, gen, "cpu")
    with torch.no_grad():
        for name, value in [("gate_up_proj", gate_up), ("down_proj", down)]:
            getattr(experts, name).copy_(value)
        for name, value in [("gate_up_proj_scale_inv", gate_up_s), ("down_proj_scale_inv", down_s)]:
            setattr(experts, name, torch.nn.Parameter(value.reshape(getattr(experts, name).shape), requires_grad=False))
    return experts.to(device), dequantize_weight(gate_up, gate_up_s, block), dequantize_weight(down, down_s, block)


def dequantized_experts_reference(hidden, top_k_index, top_k_weights, gate_up, down, group=128):
    """SwiGLU experts with dequantized weights, rounded where the module rounds: each projection's
    input is quantized per row and ``group`` as fp8_act_quant does, the gate/up output is rounded to
    ``hidden.dtype`` and the SwiGLU runs in that dtype (as FP8Experts does between its two matmuls);
    the matmuls and the weighted sum are float64. Ids >= E (another rank's experts) contribute 0."""

    def through_fp8(x):
        return dequantize_activation(*quantize(x.double(), group), group)

    x = through_fp8(hidden.cpu())
    out = torch.zeros_like(x)
    for t in range(x.shape[0]):
        for e, w in zip(top_k_index[t].tolist(), top_k_weights[t].cpu().double().tolist(), strict=True):
            if e >= gate_up.shape[0]:
                continue
            gate, up = (gate_up[e] @ x[t]).to(hidden.dtype).chunk(2)
            out[t] += w * (down[e] @ through_fp8(F.silu(gate) * up))
    return out


def relative_error(out, ref):
    return ((out.cpu().double() - ref).norm() / ref.norm()).item()


def route(tokens, experts, top_k, gen, device, sentinels=0):
    """Random distinct top-k expert ids (the first ``sentinels`` tokens get one id >= E) and softmax weights."""
    index = torch.rand(tokens, experts, generator=gen).topk(top_k, dim=1).indices
    index[:sentinels, 0] = experts + torch.arange(sentinels) % 3
    weights = torch.softmax(torch.randn(tokens, top_k, generator=gen), dim=1)
    return index.to(device), weights.to(device)


# Against the reference that rounds where the module rounds, what is left is the bf16 output and
# float32 (on the GPU, wgmma) against float64 accumulation, which can move a gate/up value across a
# bf16 rounding boundary and, rarely, a group's amax with it (a step in every FP8 code of that
# group: about 1e-2 here per row it hits). Measured at most 4.9e-3 over 40 seeds of each case on the
# CPU (Transformers 5.9) and 1.1e-2 on an H200 (5.17); the reference that skipped the module's bf16
# rounding measured up to 7.5e-2. A wrong expert, row or scale is off by order 1 (test_moe.py
# checks the kernels themselves to float32 accuracy).
DEQUANTIZED_TOLERANCE = 3e-2


@pytest.mark.parametrize("implementation", EXPERT_IMPLEMENTATIONS)
@pytest.mark.parametrize("block", [(128, 128), (64, 128)])
def test_fp8_experts(transformers_fp8, device, gen, implementation, block):
    config = moe_config(hidden=200, intermediate=72, experts=6, top_k=2, implementation=implementation)
    experts, gate_up, down = fp8_experts_module(config, block, gen, device)
    hidden = make_activation((9, 200), torch.bfloat16, gen, device)
    index, weights = route(9, 6, 2, gen, device)
    with torch.no_grad():
        out = experts(hidden, index, weights)
    assert out.shape == hidden.shape and out.dtype == torch.bfloat16
    err = relative_error(out, dequantized_experts_reference(hidden, index, weights, gate_up, down))
    assert err < DEQUANTIZED_TOLERANCE, f"relative error {err:.3g} against the dequantized experts"


@pytest.mark.parametrize("implementation", ["batched_mm", "grouped_mm"])
def test_fp8_experts_agree_with_eager(transformers_fp8, device, gen, implementation):
    """The fused MoE paths quantize exactly as the eager loop over matmul_2d does."""
    config = moe_config(hidden=256, intermediate=128, experts=4, top_k=2, implementation="eager")
    experts, _, _ = fp8_experts_module(config, (128, 128), gen, device)
    hidden = make_activation((11, 256), torch.float32, gen, device)
    index, weights = route(11, 4, 2, gen, device)
    with torch.no_grad():
        eager = experts(hidden, index, weights)
        config._experts_implementation = implementation
        fused = experts(hidden, index, weights)
    assert relative_error(fused, eager.cpu().double()) <= TOL[torch.float32] * math.sqrt(256)


@requires_generation_2  # 5.9 clamps sentinel ids and relies on the router zeroing their weights
@pytest.mark.parametrize("implementation", ["batched_mm", "grouped_mm"])
def test_fp8_experts_expert_parallel_sentinels(transformers_fp8, device, gen, implementation):
    """Ids >= num_experts (tokens routed to another rank's experts) contribute nothing."""
    config = moe_config(hidden=200, intermediate=72, experts=6, top_k=2, implementation=implementation)
    experts, gate_up, down = fp8_experts_module(config, (128, 128), gen, device)
    hidden = make_activation((10, 200), torch.bfloat16, gen, device)
    index, weights = route(10, 6, 2, gen, device, sentinels=4)
    with torch.no_grad():
        out = experts(hidden, index, weights)
    assert not out.isnan().any()
    err = relative_error(out, dequantized_experts_reference(hidden, index, weights, gate_up, down))
    assert err < DEQUANTIZED_TOLERANCE, f"relative error {err:.3g} against the dequantized experts"


# ---------------------------------------------------------------------------------------------
# GPU: a small random Qwen3-MoE causal LM, quantized on load, generating with every experts path.
# ---------------------------------------------------------------------------------------------


def dequantized_copy(path, fp8_model):
    """The bf16 model with every FP8 weight replaced by its dequantized value (the FP8 model's exact weights)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16, device_map="cuda")
    params = dict(model.named_parameters())
    fp8_params = dict(fp8_model.named_parameters())
    with torch.no_grad():
        for name, codes in fp8_params.items():
            if codes.dtype == torch.float8_e4m3fn:
                scales = fp8_params[name + "_scale_inv"]
                params[name].copy_(dequantize_weight(codes.cpu(), scales.cpu(), (128, 128)).to(torch.bfloat16))
    return model


# The dequantized model runs on unquantized activations: FP8 activation quantization in every layer
# moves the logits by a few percent.
MODEL_LOGITS_TOLERANCE = 0.1


@requires_cuda
@requires_generation_2
def test_small_moe_model_generates_on_every_path(transformers_fp8, tmp_path):
    """batched_mm and grouped_mm give the same 32 greedy tokens (our two kernels agree bitwise and
    Transformers reduces both in bf16). Transformers' eager loop accumulates the experts in float32
    instead, so its logits are compared on the same tokens rather than its free-running tokens."""
    tiny_qwen3_moe(tmp_path)
    prompt = torch.randint(0, 512, (2, 12), generator=torch.Generator().manual_seed(1)).cuda()
    tokens, models = {}, {}
    for implementation in EXPERT_IMPLEMENTATIONS:
        model = models[implementation] = load_fp8_model(tmp_path, implementation)
        assert any(isinstance(m, tf_fp8.FP8Experts) for m in model.modules())
        assert any(isinstance(m, tf_fp8.FP8Linear) for m in model.modules())
        with torch.no_grad():
            tokens[implementation] = model.generate(prompt, max_new_tokens=32, do_sample=False, min_new_tokens=32)
    assert torch.equal(tokens["batched_mm"], tokens["grouped_mm"])
    same = (tokens["eager"] == tokens["batched_mm"]).float().mean().item()
    print(f"eager and batched_mm free-running tokens agree at {same:.1%} of positions")

    sequence = tokens["batched_mm"]
    with torch.no_grad():
        logits = {name: model(sequence).logits.float() for name, model in models.items()}
        ref_logits = dequantized_copy(tmp_path, models["eager"])(sequence).logits.float()
    for name, value in logits.items():
        to_eager = ((value - logits["eager"]).norm() / logits["eager"].norm()).item()
        to_dequantized = ((value - ref_logits).norm() / ref_logits.norm()).item()
        print(f"{name}: logits relative error {to_eager:.2e} to eager, {to_dequantized:.4f} to the dequantized model")
        assert to_eager < 2e-2
        assert to_dequantized < MODEL_LOGITS_TOLERANCE


@requires_cuda
@requires_generation_2
@pytest.mark.parametrize("implementation", ["batched_mm", "grouped_mm"])
def test_small_moe_model_under_torch_compile(transformers_fp8, tmp_path, implementation):
    """The whole model under torch.compile, and generation with a static cache (which Transformers
    compiles): logits close to eager (not bitwise: the surrounding ops fuse differently)."""
    tiny_qwen3_moe(tmp_path)
    model = load_fp8_model(tmp_path, implementation)
    prompt = torch.randint(0, 512, (1, 10), generator=torch.Generator().manual_seed(2)).cuda()
    with torch.no_grad():
        eager_logits = model(prompt, use_cache=False).logits.float()
        compiled_logits = torch.compile(model)(prompt, use_cache=False).logits.float()
        eager = model.generate(prompt, max_new_tokens=16, min_new_tokens=16, do_sample=False)
        static = model.generate(
            prompt, max_new_tokens=16, min_new_tokens=16, do_sample=False, cache_implementation="static"
        )
    err = ((compiled_logits - eager_logits).norm() / eager_logits.norm()).item()
    print(f"{implementation}: compiled vs eager logits relative error {err:.2e}")
    # Measured 3.7e-2 on the H100: Inductor's fused bf16 elementwise ops round differently from eager,
    # and the FP8 quantization of the next projection turns those ulps into whole code steps.
    assert err < MODEL_LOGITS_TOLERANCE
    same = (eager == static).float().mean().item()
    print(f"{implementation}: static-cache (compiled) generation agrees with eager at {same:.1%} of positions")
    assert static.shape == eager.shape
