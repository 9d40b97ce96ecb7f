"""MoE expert matmuls (batched and grouped) against the per-row float64 reference."""

from __future__ import annotations

import sys

import pytest
import torch
from checks import assert_matches, make_activation, make_expert_weights
from conftest import OPCHECK_UTILS, requires_cuda, requires_hopper
from reference import expand_groups, group_by_expert, moe_reference

BLOCK = (128, 128)


def random_ids(rows, experts, gen, device, dtype=torch.int64, sentinels=0):
    """Expert ids in [0, E), the last ``sentinels`` rows replaced by ids >= E (other ranks' experts)."""
    ids = torch.randint(0, experts, (rows,), generator=gen)
    if sentinels:
        ids[-sentinels:] = experts + torch.randint(0, 3, (sentinels,), generator=gen)
    return ids[torch.randperm(rows, generator=gen)].to(dtype).to(device)


def grouped_call(fp8, a, b, bs, ids, block, tpe_dtype=torch.float32, output_dtype=None):
    """Run matmul_grouped the way Transformers does; return (output in original row order, routed mask)."""
    a_sorted, offsets, tpe, ids_sorted, perm = group_by_expert(a, ids, b.shape[0])
    out_sorted = fp8.matmul_grouped(a_sorted, b, bs, offsets, tpe.to(tpe_dtype), block, output_dtype)
    out = torch.empty_like(out_sorted)
    out[perm] = out_sorted
    routed = torch.empty_like(ids_sorted, dtype=torch.bool)
    routed[perm] = ids_sorted < b.shape[0]
    return out, routed


@pytest.mark.kernels_ci
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("block", [BLOCK, (64, 128), None])
@pytest.mark.parametrize(
    "rows, experts, n, k",
    [(1, 4, 96, 256), (37, 5, 200, 300), (90, 3, 64, 130), (200, 2, 136, 256)],  # the last: prefill tiles
)
def test_batched(fp8, device, gen, dtype, block, rows, experts, n, k):
    b, bs = make_expert_weights(experts, n, k, block, gen, device)
    a = make_activation((rows, k), dtype, gen, device)
    ids = random_ids(rows, experts, gen, device)
    assert_matches(fp8.matmul_batched(a, b, bs, ids, block), moe_reference(a, b, bs, ids, block), dtype)


@pytest.mark.kernels_ci
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("block", [BLOCK, (32, 32), None])
@pytest.mark.parametrize("rows, experts, n, k", [(1, 4, 96, 256), (70, 6, 160, 200), (150, 2, 130, 384)])
def test_grouped(fp8, device, gen, dtype, block, rows, experts, n, k):
    b, bs = make_expert_weights(experts, n, k, block, gen, device)
    a = make_activation((rows, k), dtype, gen, device)
    ids = random_ids(rows, experts, gen, device)
    out, _ = grouped_call(fp8, a, b, bs, ids, block)
    assert_matches(out, moe_reference(a, b, bs, ids, block), dtype)


@pytest.mark.kernels_ci
@pytest.mark.parametrize("id_dtype", [torch.int32, torch.int64])
def test_batched_sentinel_rows_are_zero(fp8, device, gen, id_dtype):
    b, bs = make_expert_weights(4, 128, 256, BLOCK, gen, device)
    a = make_activation((30, 256), torch.bfloat16, gen, device)
    ids = random_ids(30, 4, gen, device, id_dtype, sentinels=9)
    ids[0] = -1  # any id outside [0, E) is treated as another rank's expert
    out = fp8.matmul_batched(a, b, bs, ids, BLOCK)
    sentinel = (ids >= 4) | (ids < 0)
    assert sentinel.sum() >= 9
    assert torch.equal(out[sentinel], torch.zeros_like(out[sentinel]))
    assert_matches(out, moe_reference(a, b, bs, ids, BLOCK), torch.bfloat16)


@pytest.mark.parametrize("id_dtype", [torch.int32, torch.int64])
@pytest.mark.parametrize("rows, experts, chunk", [(70, 5, 4096), (601, 40, 64)])  # one step of ids; several, partial
def test_both_routing_paths_order_rows_stably(fp8, device, gen, monkeypatch, id_dtype, rows, experts, chunk):
    """The routing kernel and the torch path used past _ROUTE_MAX_ROWS give the same stable order
    and bucket ends (int32 both, so the expert GEMM gets the same inputs from either), and batched
    results through the kernel's routing match the reference."""
    routing = sys.modules[f"{fp8.__name__}._routing"]
    monkeypatch.setattr(routing, "_ROUTE_CHUNK", chunk)
    ids = random_ids(rows, experts, gen, device, id_dtype, sentinels=6)
    ids[3] = -2
    bucket = torch.where((ids >= 0) & (ids < experts), ids, experts).cpu()
    order = torch.sort(bucket, stable=True).indices
    ends = torch.cumsum(torch.bincount(bucket, minlength=experts + 1), 0)
    kernel_threshold = routing._ROUTE_MAX_ROWS
    for threshold in (kernel_threshold, 0):  # the kernel, then torch
        monkeypatch.setattr(routing, "_ROUTE_MAX_ROWS", threshold)
        perm, got_ends = routing.route(ids, experts)
        assert perm.dtype == got_ends.dtype == torch.int32
        assert torch.equal(perm.cpu().long(), order) and torch.equal(got_ends.cpu().long(), ends)
    monkeypatch.setattr(routing, "_ROUTE_MAX_ROWS", kernel_threshold)
    b, bs = make_expert_weights(experts, 64, 256, BLOCK, gen, device)
    a = make_activation((rows, 256), torch.bfloat16, gen, device)
    assert_matches(fp8.matmul_batched(a, b, bs, ids, BLOCK), moe_reference(a, b, bs, ids, BLOCK), torch.bfloat16)


@pytest.mark.parametrize("rows", [40, 300])  # 300: more than 64 rows per expert (Hopper: the Gluon kernel)
def test_int64_offsets_give_the_int32_result(fp8, device, gen, rows):
    b, bs = make_expert_weights(3, 128, 256, BLOCK, gen, device)
    a = make_activation((rows, 256), torch.bfloat16, gen, device)
    a_sorted, offsets, tpe, _, _ = group_by_expert(a, random_ids(rows, 3, gen, device), 3)
    expected = fp8.matmul_grouped(a_sorted, b, bs, offsets, tpe, BLOCK)
    assert torch.equal(fp8.matmul_grouped(a_sorted, b, bs, offsets.long(), tpe, BLOCK), expected)


def test_grouped_sentinel_tail_is_not_touched(fp8, device, gen):
    b, bs = make_expert_weights(4, 128, 256, BLOCK, gen, device)
    a = make_activation((30, 256), torch.bfloat16, gen, device)
    ids = random_ids(30, 4, gen, device, sentinels=7)
    out, routed = grouped_call(fp8, a, b, bs, ids, BLOCK, tpe_dtype=torch.int32)
    assert routed.sum() == 23
    assert_matches(out[routed], moe_reference(a, b, bs, ids, BLOCK)[routed.cpu()], torch.bfloat16)


@pytest.mark.parametrize(
    "routing", ["one expert takes all", "empty experts", "skewed", "single expert", "many experts"]
)
def test_routings(fp8, device, gen, routing):
    rows, n, k = 50, 96, 256
    experts = {"single expert": 1, "many experts": 256}.get(routing, 8)
    b, bs = make_expert_weights(experts, n, k, BLOCK, gen, device)
    a = make_activation((rows, k), torch.bfloat16, gen, device)
    if routing == "one expert takes all":
        ids = torch.full((rows,), 5)
    elif routing == "empty experts":
        ids = torch.randint(0, 2, (rows,), generator=gen) * 7  # experts 0 and 7 only
    elif routing == "skewed":
        ids = torch.where(torch.rand(rows, generator=gen) < 0.5, 3, torch.randint(0, experts, (rows,), generator=gen))
    else:
        ids = torch.randint(0, experts, (rows,), generator=gen)
    ids = ids.to(device)
    ref = moe_reference(a, b, bs, ids, BLOCK)
    batched = fp8.matmul_batched(a, b, bs, ids, BLOCK)
    grouped, _ = grouped_call(fp8, a, b, bs, ids, BLOCK)
    assert_matches(batched, ref, torch.bfloat16)
    assert torch.equal(batched, grouped), "batched and grouped differ on the same routing"


@pytest.mark.kernels_ci
@pytest.mark.parametrize("block", [BLOCK, None])
def test_batched_equals_grouped_bitwise(fp8, device, gen, block):
    b, bs = make_expert_weights(6, 136, 384, block, gen, device)
    a = make_activation((48, 384), torch.float32, gen, device)
    ids = random_ids(48, 6, gen, device)
    grouped, _ = grouped_call(fp8, a, b, bs, ids, block, output_dtype=torch.float32)
    assert torch.equal(fp8.matmul_batched(a, b, bs, ids, block, torch.float32), grouped)


@pytest.mark.kernels_ci
@pytest.mark.parametrize("block", [BLOCK, (32, 32), None])
@pytest.mark.parametrize("extra_rows", [-12, 0, 1])  # 0: the most rows without a routing launch; 1: routed
def test_few_rows_with_a_shared_expert_and_sentinels(fp8, device, gen, block, extra_rows):
    """Batched calls of few rows (no routing launch: each program compares the ids) where one
    expert takes several rows and some rows are sentinels: they match the reference, give the
    sentinel rows zeros, and equal the grouped kernel bit for bit."""
    rows = sys.modules[fp8.matmul_batched.__module__].FEW_ROWS_MAX + extra_rows
    b, bs = make_expert_weights(5, 136, 200, block, gen, device)  # tails in N and K
    a = make_activation((rows, 200), torch.float32, gen, device)
    ids = random_ids(rows, 5, gen, device, sentinels=2)
    routed_rows = (ids < 5).nonzero().flatten()
    ids[routed_rows[: max(2, routed_rows.numel() // 2)]] = 3
    out = fp8.matmul_batched(a, b, bs, ids, block, torch.float32)
    grouped, routed = grouped_call(fp8, a, b, bs, ids, block, output_dtype=torch.float32)
    assert (ids == 3).sum() >= 2 and (~routed).sum() == 2
    assert_matches(out, moe_reference(a, b, bs, ids, block), torch.float32)
    assert torch.equal(out[~routed], torch.zeros_like(out[~routed]))
    assert torch.equal(out[routed], grouped[routed])


@pytest.mark.kernels_ci
@pytest.mark.parametrize("block", [BLOCK, None])
@pytest.mark.parametrize("rows", [9, 40])  # batched: the few-rows kernel, then the routed expert GEMM
def test_identity_experts_return_fp8_act_quants_codes_exactly(fp8, device, gen, block, rows):
    """With identity weights (unit scales) every output is one code times its row's scale, a product
    the kernels round like torch: the codes and scales the expert calls make are exactly those of
    fp8_act_quant, for batched and grouped calls (K = 320: a partial last group)."""
    k = 320
    b = torch.eye(k).expand(2, k, k).to(torch.float8_e4m3fn).to(device)
    bs = torch.ones((2, 3, 3) if block else (2,), device=device)
    a = make_activation((rows, k), torch.bfloat16, gen, device)
    ids = random_ids(rows, 2, gen, device)
    group = block[1] if block else k
    q, s = fp8.fp8_act_quant(a, group)
    expected = q.float() * expand_groups(s, group, k)
    assert torch.equal(fp8.matmul_batched(a, b, bs, ids, block, torch.float32), expected)
    grouped, _ = grouped_call(fp8, a, b, bs, ids, block, output_dtype=torch.float32)
    assert torch.equal(grouped, expected)


def test_ue8m0_scales_and_strided_rows(fp8, device, gen):
    b, bs = make_expert_weights(3, 128, 256, BLOCK, gen, device, ue8m0=True)
    a = make_activation((12, 512), torch.bfloat16, gen, device)[:, ::2]  # K stride 2: copied, not misread
    ids = random_ids(12, 3, gen, device)
    assert_matches(fp8.matmul_batched(a, b, bs, ids, BLOCK), moe_reference(a, b, bs, ids, BLOCK), torch.bfloat16)
    out, _ = grouped_call(fp8, a, b, bs, ids, BLOCK)
    assert_matches(out, moe_reference(a, b, bs, ids, BLOCK), torch.bfloat16)


def test_gluon_kernel_gets_the_callers_ue8m0_scales(fp8, device, gen, monkeypatch):
    """Grouped calls hand the Hopper Gluon kernel the weight scales as given: it reads UE8M0 codes
    as such only when their dtype says so (the plain kernel's uint8 view would be read as floats)."""
    moe = _moe_module(fp8)
    if moe.hopper_gemm is None:
        pytest.skip("this Triton has no Gluon")
    handed = []
    monkeypatch.setattr(moe.hopper_gemm, "serves", lambda *args: True)
    monkeypatch.setattr(moe.hopper_gemm, "launch", lambda x, w, xs, ws, out, ends: handed.append(ws))
    b, bs = make_expert_weights(3, 128, 256, BLOCK, gen, device, ue8m0=True)
    a = make_activation((12, 256), torch.bfloat16, gen, device)
    grouped_call(fp8, a, b, bs, random_ids(12, 3, gen, device), BLOCK)
    assert len(handed) == 1 and handed[0].dtype == torch.float8_e8m0fnu


@requires_hopper
def test_grouped_wgmma_kernel_with_ue8m0_scales(fp8, gen):
    """UE8M0 weight scales on the Hopper Gluon kernel (more than 64 rows per expert) match the reference."""
    b, bs = make_expert_weights(3, 256, 512, BLOCK, gen, "cuda", ue8m0=True)
    a = make_activation((600, 512), torch.bfloat16, gen, "cuda")
    ids = random_ids(600, 3, gen, "cuda")
    moe = _moe_module(fp8)
    assert moe.hopper_gemm.serves(a.to(torch.float8_e4m3fn), b, a[:, :256], moe.Scaling(*BLOCK), True)
    out, _ = grouped_call(fp8, a, b, bs, ids, BLOCK)
    assert_matches(out, moe_reference(a, b, bs, ids, BLOCK), torch.bfloat16)


def test_dispatchers(fp8, device, gen):
    """The Transformers 5.4-5.10 names, called with that release's keywords."""
    b, bs = make_expert_weights(4, 128, 256, BLOCK, gen, device)
    bt, bst = make_expert_weights(4, 128, 256, None, gen, device)
    a = make_activation((10, 256), torch.bfloat16, gen, device)
    ids = random_ids(10, 4, gen, device)
    a_sorted, offsets, tpe, _, perm = group_by_expert(a, ids, 4)
    ref, ref_t = moe_reference(a, b, bs, ids, BLOCK), moe_reference(a, bt, bst, ids, None)
    assert_matches(fp8.w8a8_fp8_matmul_batched(a, b, bs, block_size=list(BLOCK), expert_ids=ids), ref, torch.bfloat16)
    assert_matches(fp8.w8a8_block_fp8_matmul_batched(a, b, bs, ids, list(BLOCK)), ref, torch.bfloat16)
    assert_matches(fp8.w8a8_tensor_fp8_matmul_batched(a, bt, bst.reshape(4, 1, 1), ids), ref_t, torch.bfloat16)
    grouped = fp8.w8a8_fp8_matmul_grouped(
        a_sorted, b, bs, tokens_per_expert=tpe, block_size=[128, 128], offsets=offsets
    )
    assert_matches(grouped, ref[perm.cpu()], torch.bfloat16)
    grouped = fp8.w8a8_block_fp8_matmul_grouped(a_sorted, b, bs, offsets, tpe, [128, 128])
    assert_matches(grouped, ref[perm.cpu()], torch.bfloat16)
    grouped = fp8.w8a8_tensor_fp8_matmul_grouped(a_sorted, bt, bst, offsets, tpe)
    assert_matches(grouped, ref_t[perm.cpu()], torch.bfloat16)


def test_empty_rows(fp8, device, gen):
    b, bs = make_expert_weights(2, 64, 128, BLOCK, gen, device)
    a = torch.empty(0, 128, dtype=torch.bfloat16, device=device)
    ids = torch.empty(0, dtype=torch.int64, device=device)
    assert fp8.matmul_batched(a, b, bs, ids, BLOCK).shape == (0, 64)
    offsets = torch.zeros(2, dtype=torch.int32, device=device)
    assert fp8.matmul_grouped(a, b, bs, offsets, offsets, BLOCK).shape == (0, 64)


def test_empty_k_is_an_empty_sum(fp8, device):
    """K = 0: batched rows (sentinels too) and grouped rows before offsets[-1] are zeros; the grouped
    row after it stays unwritten."""
    b = torch.zeros(3, 64, 0, dtype=torch.float8_e4m3fn, device=device)
    bs = torch.ones(3, 1, 0, device=device)
    a = torch.empty(5, 0, dtype=torch.bfloat16, device=device)
    ids = torch.tensor([2, 0, 7, 2, 1], device=device)
    offsets = torch.tensor([1, 1, 4], dtype=torch.int32, device=device)
    tokens_per_expert = torch.tensor([1, 0, 3], dtype=torch.int32, device=device)
    # Outputs are allocated NaN-filled (conftest.outputs_start_as_nan): unwritten elements stay NaN.
    batched = fp8.matmul_batched(a, b, bs, ids, BLOCK)
    grouped = fp8.matmul_grouped(a, b, bs, offsets, tokens_per_expert, BLOCK)
    assert torch.equal(batched, torch.zeros(5, 64, dtype=torch.bfloat16, device=device))
    assert torch.equal(grouped[:4], torch.zeros(4, 64, dtype=torch.bfloat16, device=device))
    assert grouped[4].isnan().all(), "the row past offsets[-1] was written"


def test_opcheck(fp8, device, gen):
    utils = tuple(u for u in OPCHECK_UTILS if u != "test_schema")  # no torch.allclose for fp8 inputs
    b, bs = make_expert_weights(3, 64, 256, BLOCK, gen, device)
    a = make_activation((5, 256), torch.bfloat16, gen, device)
    ids = random_ids(5, 3, gen, device)
    torch.library.opcheck(fp8.ops.fp8_matmul_batched, (a, b, bs, ids, 128, 128, torch.bfloat16), test_utils=utils)
    offsets = torch.tensor([2, 2, 5], dtype=torch.int32, device=device)
    torch.library.opcheck(fp8.ops.fp8_matmul_grouped, (a, b, bs, offsets, 128, 128, torch.bfloat16), test_utils=utils)


@requires_cuda
@pytest.mark.parametrize("rows", [8, 24, 1200])  # 8: batched without routing; 1200: grouped on the Gluon kernel
def test_compile_fullgraph(fp8, gen, rows):
    b, bs = make_expert_weights(8, 256, 512, BLOCK, gen, "cuda")
    a = make_activation((rows, 512), torch.bfloat16, gen, "cuda")
    ids = random_ids(rows, 8, gen, "cuda", sentinels=3)
    a_sorted, offsets, tpe, _, _ = group_by_expert(a, ids, 8)

    def both(x, e, xs, off, t):
        return fp8.matmul_batched(x, b, bs, e, [128, 128]), fp8.matmul_grouped(xs, b, bs, off, t, [128, 128])

    batched, grouped = torch.compile(both, fullgraph=True)(a, ids, a_sorted, offsets, tpe.int())
    assert torch.equal(batched, fp8.matmul_batched(a, b, bs, ids, [128, 128]))
    routed = int(offsets[-1])
    assert torch.equal(grouped[:routed], fp8.matmul_grouped(a_sorted, b, bs, offsets, tpe, [128, 128])[:routed])


@requires_cuda
@pytest.mark.parametrize("rows", [8, 600, 2000])  # 2000: grouped on the Hopper Gluon kernel
def test_cuda_graph_replay_with_new_routing(fp8, gen, rows):
    """Captured once, replayed with different routing and values: same as eager calls."""
    experts = 16
    b, bs = make_expert_weights(experts, 256, 512, BLOCK, gen, "cuda")
    a = make_activation((rows, 512), torch.bfloat16, gen, "cuda")
    ids = random_ids(rows, experts, gen, "cuda", sentinels=2)
    a_sorted, offsets, tpe, _, _ = group_by_expert(a, ids, experts)
    tpe = tpe.int()
    fp8.matmul_batched(a, b, bs, ids, BLOCK)  # compile outside the capture
    fp8.matmul_grouped(a_sorted, b, bs, offsets, tpe, BLOCK)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        batched = fp8.matmul_batched(a, b, bs, ids, BLOCK)
        grouped = fp8.matmul_grouped(a_sorted, b, bs, offsets, tpe, BLOCK)
    for skew in (0.0, 0.9):
        new_ids = random_ids(rows, experts, gen, "cuda", sentinels=5)
        new_ids[torch.rand(rows, generator=gen).to("cuda") < skew] = 1
        new_a = make_activation((rows, 512), torch.bfloat16, gen, "cuda")
        new_sorted, new_offsets, new_tpe, _, _ = group_by_expert(new_a, new_ids, experts)
        for dst, src in ((a, new_a), (ids, new_ids), (a_sorted, new_sorted), (offsets, new_offsets), (tpe, new_tpe)):
            dst.copy_(src)
        batched.fill_(float("nan"))
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(batched, fp8.matmul_batched(new_a, b, bs, new_ids, BLOCK))
        routed = int(new_offsets[-1])
        eager = fp8.matmul_grouped(new_sorted, b, bs, new_offsets, new_tpe, BLOCK)
        assert torch.equal(grouped[:routed], eager[:routed])


@requires_cuda
def test_expert_offsets_beyond_int32(fp8, gen):
    """E * N * K > 2**31: rows routed to the last experts read the right weights."""
    experts, n, k = 131, 4096, 4096
    b = torch.empty(experts, n, k, dtype=torch.float8_e4m3fn, device="cuda")
    last, last_s = make_expert_weights(2, n, k, BLOCK, gen, "cuda")
    b[-2:] = last
    bs = torch.ones(experts, n // 128, k // 128, device="cuda")
    bs[-2:] = last_s
    a = make_activation((6, k), torch.bfloat16, gen, "cuda")
    ids = torch.tensor([129, 130, 130, 129, 130, 129], device="cuda")
    ref = moe_reference(a, last, last_s, ids - 129, BLOCK)
    assert_matches(fp8.matmul_batched(a, b, bs, ids, BLOCK), ref, torch.bfloat16)
    out, _ = grouped_call(fp8, a, b, bs, ids, BLOCK, tpe_dtype=torch.int32)
    assert_matches(out, ref, torch.bfloat16)


def _moe_module(fp8):
    return sys.modules[fp8.matmul_grouped.__module__]


@requires_hopper
@pytest.mark.parametrize(
    "experts, rows, n, k, routing",
    [
        (4, 700, 200, 1040, "skewed"),  # N and K tails, an empty expert, unrouted tail rows
        (5, 900, 328, 1008, "skewed"),  # the same with TMA stores (K <= 1024) beside register stores
        (3, 600, 320, 7200, "skewed"),  # K > 4096 (DeepSeek-V3 gate_up's tiles) with N and K tails
        (1, 300, 384, 512, "balanced"),
        (256, 20000, 256, 256, "balanced"),  # every expert busy
        (131, 9000, 4096, 4096, "last two"),  # E * N * K > 2**31
        # Experts' last tiles of 1, 63, 64, 65, 128 and 127 rows, against 3 weight tiles and against 2
        # with an N tail
        (6, 1088, 384, 1152, "remainders"),
        (6, 1088, 200, 2096, "remainders"),
    ],
)
def test_grouped_wgmma_kernel_matches_plain_triton_twin(fp8, gen, experts, rows, n, k, routing):
    """Grouped prefill on the Hopper Gluon kernel agrees with the plain-Triton kernel to the
    output's rounding (see test_matmul's twin test), and leaves rows past the last offset unwritten."""
    moe = _moe_module(fp8)
    if routing == "last two":
        b = torch.zeros(experts, n, k, dtype=torch.float8_e4m3fn, device="cuda")
        b[-2:], last_s = make_expert_weights(2, n, k, BLOCK, gen, "cuda")
        bs = torch.ones(experts, n // 128, k // 128, device="cuda")
        bs[-2:] = last_s
        ids = torch.randint(experts - 2, experts, (rows,), generator=gen)
    else:
        b, bs = make_expert_weights(experts, n, k, BLOCK, gen, "cuda")
        ids = torch.randint(0, experts, (rows,), generator=gen)
        if routing == "remainders":
            counts = torch.tensor([129, 191, 192, 193, 256, 127])
            ids = torch.repeat_interleave(torch.arange(experts), counts)[torch.randperm(rows, generator=gen)]
        elif routing == "skewed":
            ids[: rows // 2] = 0
            ids[ids == 2] = 3  # expert 2 stays empty
            ids[-37:] = experts  # sentinels: a tail of rows no expert owns
    x_sorted, offsets, _, _, _ = group_by_expert(make_activation((rows, k), torch.bfloat16, gen, "cpu"), ids, experts)
    x_sorted, offsets = x_sorted.cuda(), offsets.cuda()
    gluon_out = torch.full((rows, n), float("nan"), dtype=torch.bfloat16, device="cuda")
    twin_out = gluon_out.clone()
    scaling = moe.Scaling(*BLOCK)
    assert moe.hopper_gemm.serves(x_sorted.to(torch.float8_e4m3fn), b, gluon_out, scaling, True)
    moe.launch_expert_gemm(x_sorted, b, bs, gluon_out, offsets, None, scaling, False)
    plain_tiles = moe.expert_tiles(rows, experts, k, 128, torch.device("cuda"))
    moe.launch_expert_gemm(x_sorted, b, bs, twin_out, offsets, None, scaling, False, plain_tiles)
    routed = int(offsets[-1])
    assert gluon_out[routed:].isnan().all(), "rows past the last offset were written"
    assert not gluon_out[:routed].isnan().any()
    scale = twin_out[:routed].abs().max().item()
    torch.testing.assert_close(gluon_out[:routed], twin_out[:routed], rtol=2**-7, atol=2**-7 * scale)
