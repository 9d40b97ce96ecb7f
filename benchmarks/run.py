#!/usr/bin/env python3
"""The project's benchmark runner (the main job; ``scripts/run.sh`` builds and calls it).

On a CUDA GPU: times every kernel of the package on DeepSeek-V3 and Qwen3-30B shapes next to the torch
peers in the same process (median of CUDA-graph replays, so launch overhead is excluded; operands
rotated through more memory than L2 holds), prints a table, writes ``benchmarks/out/results.json``
and ``results.png``. Decode sizes also get an eager time of our call, launch overhead included.
On a CPU: a small demo through Triton's interpreter whose results are checked against the
plain-torch reference (exit status 1 on a mismatch).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import date
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
OUT_DIR = ROOT / "benchmarks" / "out"
REPO_ID = "kernels-community/finegrained-fp8"
HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ["TRITON_INTERPRET"] = "1"
sys.path.insert(0, str(ROOT / "tests"))

DENSE_SHAPES = [(18432, 7168), (7168, 18432), (24576, 1536)]
DENSE_M = [1, 16, 96, 128, 256, 1024, 4096]
L2_BYTES = 50 * 2**20
# A graph of one call would charge that call the graph's launch (a few microseconds).
MIN_CALLS_PER_GRAPH = 8
# MoE expert shapes (DeepSeek-V3, Qwen3-30B-A3B): (experts, N, K) per projection; top-8 routing.
MOE_SHAPES = {
    "DSv3 gate_up": (256, 4096, 7168),
    "DSv3 down": (256, 7168, 2048),
    "Qwen3-30B gate_up": (128, 1536, 2048),
    "Qwen3-30B down": (128, 2048, 768),
}
MOE_TOKENS = [1, 2, 8, 32, 128, 512, 4096, 8192]
TOP_K = 8
BATCHED_MAX_TOKENS = 512


@dataclass
class Row:
    kernel: str
    shape: str
    impl: str
    ms: float
    tflops: float | None = None
    tbps: float | None = None
    extra: dict = field(default_factory=dict)


def load_package():
    """The built package, loaded as users load it (LOCAL_KERNELS + kernels.get_kernel)."""
    import kernels

    backend = "cuda" if HAS_CUDA else "cpu"
    os.environ["LOCAL_KERNELS"] = f"{REPO_ID}={ROOT / 'build'}"
    if not (ROOT / "build" / f"torch-{backend}").exists():
        raise SystemExit(f"build/torch-{backend} is missing: run scripts/build.py --backend {backend} first")
    return kernels.get_kernel(REPO_ID, version=1)


def bench(make_call: Callable[[], Callable[[], object]], bytes_each: int, replays: int = 20) -> float:
    """GPU time of one call without launch overhead, in milliseconds (median of graph replays).

    ``make_call()`` returns a call over fresh operands; enough of them to move more than twice the
    L2 cache (``bytes_each`` per call), and at least MIN_CALLS_PER_GRAPH, are captured back to back
    in one CUDA graph, so the numbers exclude Python and launch overhead (the graph's own launch is
    shared by its calls, as in a model's decode graph) and never read operands from L2 left by the
    previous call. ``bytes_each`` must be positive (it sizes the graph).
    """
    if bytes_each <= 0:
        raise ValueError(f"bytes_each must be positive (the bytes one call reads), got {bytes_each}")
    copies = max(MIN_CALLS_PER_GRAPH, -(-2 * L2_BYTES // bytes_each))
    calls = [make_call() for _ in range(copies)]
    for call in calls:  # compile and warm up outside the capture
        call()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for call in calls:
            call()
    graph.replay()
    times = []
    for _ in range(replays):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / copies)
    return sorted(times)[len(times) // 2]


def bench_eager(call: Callable[[], object]) -> float:
    """Median eager time of one call (launch overhead included), in milliseconds."""
    import triton.testing

    return triton.testing.do_bench(call, warmup=25, rep=100, return_mode="median")


def random_weight(n: int, k: int, device: str):
    from reference import quantize_weight

    w = torch.randn(n, k, device=device)
    q, s = quantize_weight(w, (128, 128))
    return q, s


def bench_act_quant(fp8, rows: list[Row]) -> None:
    from reference import quantize

    m, k = 4096, 7168
    moved = m * k * 2 + m * k + m * (k // 128) * 4
    compiled = torch.compile(lambda t: quantize(t, 128))

    def operands():
        return torch.randn(m, k, device="cuda", dtype=torch.bfloat16)

    impls = {
        "ours": lambda: (lambda x: lambda: fp8.fp8_act_quant(x, 128))(operands()),
        "torch eager": lambda: (lambda x: lambda: quantize(x, 128))(operands()),
        "torch.compile": lambda: (lambda x: lambda: compiled(x))(operands()),
    }
    for impl, make in impls.items():
        record(rows, "fp8_act_quant", f"{m}x{k} bf16", impl, lambda make=make: bench(make, m * k * 3), tbps_bytes=moved)


def record(rows: list[Row], kernel: str, shape: str, impl: str, timed, flops: int = 0, tbps_bytes: int = 0) -> None:
    """Time one implementation; a failure is recorded (and printed), never fatal."""
    try:
        ms = timed()
    except Exception as e:
        print(f"  {kernel} {shape} {impl}: {type(e).__name__}: {str(e)[:160]}")
        rows.append(Row(kernel, shape, impl, float("nan"), extra={"error": str(e)[:300]}))
        return
    rows.append(
        Row(
            kernel,
            shape,
            impl,
            ms,
            tflops=flops / ms / 1e9 if flops else None,
            tbps=tbps_bytes / ms / 1e9 if tbps_bytes else None,
        )
    )


def scaled_mm_block(a_q, a_s_mmajor, b, b_s):
    """cuBLAS block-scaled GEMM: 1x128 activation scales (M-major), 128x128 weight scales."""
    return torch._scaled_mm(a_q, b.t(), scale_a=a_s_mmajor, scale_b=b_s.t(), out_dtype=torch.bfloat16)


def bench_dense(fp8, rows: list[Row], m_values: list[int]) -> None:
    one = torch.ones((), device="cuda")
    for n, k in DENSE_SHAPES:
        for m in m_values:
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            q, s = fp8.fp8_act_quant(x, 128)
            s_mmajor = s.t().contiguous().t()
            shape = f"M={m} {n}x{k}"

            def with_weights(body):
                return lambda: (lambda w, ws: lambda: body(w, ws))(*random_weight(n, k, "cuda"))

            impls = {
                "ours fused": with_weights(lambda w, ws: fp8.matmul_2d(x, w, ws, [128, 128])),
                "ours prequant": with_weights(
                    lambda w, ws: fp8.w8a8_block_fp8_matmul(q, w, s, ws, [128, 128], torch.bfloat16)
                ),
                "cuBLAS per-tensor": with_weights(
                    lambda w, ws: torch._scaled_mm(q, w.t(), scale_a=one, scale_b=one, out_dtype=torch.bfloat16)
                ),
            }
            if m > 1:  # cuBLAS rejects M=1 for block scaling
                impls["cuBLAS block"] = with_weights(lambda w, ws: scaled_mm_block(q, s_mmajor, w, ws))
            for impl, make in impls.items():
                record(rows, "dense", shape, impl, lambda make=make: bench(make, n * k), 2 * m * n * k, n * k)
            if m <= 16:
                w, ws = random_weight(n, k, "cuda")
                record(
                    rows, "dense", shape, "ours fused, eager",
                    lambda w=w, ws=ws: bench_eager(lambda: fp8.matmul_2d(x, w, ws, [128, 128])), 2 * m * n * k, n * k,
                )  # fmt: skip


def top_k_routing(tokens: int, experts: int, skewed: bool = False) -> torch.Tensor:
    """Expert ids (tokens * TOP_K,) of a random router; skewed: expert 0 takes half of the rows."""
    ids = torch.rand(tokens, experts, device="cuda").topk(TOP_K, dim=1).indices
    if skewed:
        ids[: tokens // 2, 0] = 0
        ids[: tokens // 2, 1:] = torch.rand(tokens // 2, experts - 1, device="cuda").topk(TOP_K - 1, dim=1).indices + 1
    return ids.reshape(-1)


def grouped_inputs(hidden: torch.Tensor, ids: torch.Tensor, experts: int):
    """Transformers' grouped protocol: (rows sorted by expert, offsets int32, tokens_per_expert int32)."""
    ids_sorted, perm = torch.sort(ids)
    ones = torch.ones_like(ids_sorted, dtype=torch.int32)
    tokens_per_expert = torch.zeros(experts, dtype=torch.int32, device=ids.device).scatter_add_(0, ids_sorted, ones)
    return hidden[perm // TOP_K], torch.cumsum(tokens_per_expert, 0, dtype=torch.int32), tokens_per_expert


def bench_moe(fp8, rows: list[Row], token_counts: list[int]) -> None:
    """Batched (decode sizes) and grouped MoE projections against torch's bf16 grouped GEMM."""
    for name, (experts, n, k) in MOE_SHAPES.items():
        bench_moe_projection(fp8, rows, token_counts, name, experts, n, k)
        torch.cuda.empty_cache()


def random_expert_weights(experts: int, n: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Stacked expert weights on the GPU: e4m3 codes (E, N, K) and float32 128x128 block scales,
    each expert a quantized random matrix."""
    from reference import quantize_weight

    w_q = torch.empty(experts, n, k, dtype=torch.float8_e4m3fn, device="cuda")
    w_s = torch.empty(experts, n // 128, k // 128, device="cuda")
    for e in range(experts):
        w_q[e], w_s[e] = quantize_weight(torch.randn(n, k, device="cuda"), (128, 128))
    return w_q, w_s


def bench_moe_projection(fp8, rows: list[Row], token_counts: list[int], name: str, experts: int, n: int, k: int):
    w_q, w_s = random_expert_weights(experts, n, k)
    w_bf16_t = w_q.to(torch.bfloat16).transpose(-2, -1)  # (E, K, N) view, as _grouped_mm takes it
    for tokens in token_counts:
        flops = 2 * tokens * TOP_K * n * k
        touched = top_k_routing(tokens, experts).unique().numel() * n * k
        shape = f"{name} T={tokens}"

        def routed(body, skewed=False):
            def make():
                hidden = torch.randn(tokens, k, device="cuda", dtype=torch.bfloat16)
                ids = top_k_routing(tokens, experts, skewed)
                a = hidden.repeat_interleave(TOP_K, 0)
                a_sorted, offsets, tpe = grouped_inputs(hidden, ids, experts)
                return lambda: body(a, ids, a_sorted, offsets, tpe)

            return make

        def grouped_with_routing(hidden, ids):
            a_sorted, offsets, tokens_per_expert = grouped_inputs(hidden, ids, experts)
            return fp8.matmul_grouped(a_sorted, w_q, w_s, offsets, tokens_per_expert, [128, 128])

        impls = {
            "ours grouped": routed(lambda a, ids, xs, off, t: fp8.matmul_grouped(xs, w_q, w_s, off, t, [128, 128])),
            "torch bf16 grouped": routed(lambda a, ids, xs, off, t: torch._grouped_mm(xs, w_bf16_t, offs=off)),
        }
        if tokens <= BATCHED_MAX_TOKENS:
            # What a grouped caller pays in all: Transformers' routing (sort, counts, gather) + the call.
            impls["ours grouped+routing"] = routed(lambda a, ids, xs, off, t: grouped_with_routing(a[::TOP_K], ids))
            impls["ours batched"] = routed(lambda a, ids, xs, off, t: fp8.matmul_batched(a, w_q, w_s, ids, [128, 128]))
        if tokens >= 4096:
            impls["ours grouped skewed"] = routed(
                lambda a, ids, xs, off, t: fp8.matmul_grouped(xs, w_q, w_s, off, t, [128, 128]), skewed=True
            )
        for impl, make in impls.items():
            record(rows, "moe", shape, impl, lambda make=make: bench(make, touched), flops, touched)
        if tokens == 1:
            call = routed(lambda a, ids, xs, off, t: fp8.matmul_batched(a, w_q, w_s, ids, [128, 128]))()
            record(rows, "moe", shape, "ours batched, eager", lambda call=call: bench_eager(call), flops, touched)


def bench_model(rows: list[Row], prompt_tokens: int = 512) -> None:
    """A prefill and a decode step of the Transformers tests' small MoE model: FP8 on our kernels
    (loaded through Transformers' own loader) against the same model in bf16. Eager PyTorch,
    launch overhead included (what a user of model.generate without CUDA graphs sees)."""
    import tempfile

    from tiny_model import load_fp8_model, load_model, tiny_qwen3_moe
    from transformers import DynamicCache

    # FP8Linear tries DeepGEMM first on Hopper; without it (as here) every call would retry the Hub.
    os.environ.setdefault("TRANSFORMERS_DISABLE_DEEPGEMM_LINEAR", "1")
    with tempfile.TemporaryDirectory() as path:
        tiny_qwen3_moe(path)
        prompt = torch.randint(0, 512, (1, prompt_tokens), device="cuda")
        for label, load in (("fp8 (ours)", load_fp8_model), ("bf16", load_model)):
            for step, implementation in (("prefill", "grouped_mm"), ("decode", "batched_mm")):
                model = load(path, implementation)
                shape = f"small Qwen3-MoE {step}"
                with torch.no_grad():
                    if step == "prefill":
                        call = lambda model=model: model(prompt, use_cache=False)
                    else:
                        cache = DynamicCache(config=model.config)
                        model(prompt, past_key_values=cache)
                        token = prompt[:, -1:]

                        def call(model=model, cache=cache, token=token):
                            cache.crop(prompt_tokens)
                            return model(token, past_key_values=cache)

                    record(rows, "model", shape, f"{label} {implementation}", lambda call=call: bench_eager(call))


def print_table(rows: list[Row]) -> None:
    print(f"{'kernel':<14} {'shape':<26} {'impl':<20} {'ms':>9} {'TFLOPS':>8} {'TB/s':>6}")
    for r in rows:
        tf = f"{r.tflops:8.1f}" if r.tflops is not None else " " * 8
        tb = f"{r.tbps:6.2f}" if r.tbps is not None else " " * 6
        print(f"{r.kernel:<14} {r.shape:<26} {r.impl:<20} {r.ms:9.4f} {tf} {tb}")


def plot(rows: list[Row], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dense = [r for r in rows if r.kernel == "dense" and r.tflops == r.tflops]
    moe = [r for r in rows if r.kernel == "moe" and r.tflops == r.tflops and "eager" not in r.impl]
    fig, axes = plt.subplots(2, 4, figsize=(24, 9))
    for ax in axes[0, len(DENSE_SHAPES) :]:
        ax.axis("off")
    for ax, name in zip(axes[1], MOE_SHAPES, strict=True):
        for impl in sorted({r.impl for r in moe}):
            pts = [
                (int(r.shape.split("T=")[1]), r.tflops)
                for r in moe
                if r.impl == impl and r.shape.startswith(name + " ")
            ]
            if pts:
                ax.plot(*zip(*sorted(pts), strict=True), marker="o", label=impl)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_title(f"MoE {name} (top-8)")
        ax.set_xlabel("tokens")
        ax.set_ylabel("TFLOPS")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    for ax, (n, k) in zip(axes[0], DENSE_SHAPES, strict=False):
        for impl in sorted({r.impl for r in dense}):
            pts = [(int(r.shape.split()[0][2:]), r.tflops) for r in dense if r.impl == impl and f"{n}x{k}" in r.shape]
            if pts:
                ax.plot(*zip(*sorted(pts), strict=True), marker="o", label=impl)
        ax.set_xscale("log", base=2)
        ax.set_title(f"N x K = {n} x {k}")
        ax.set_xlabel("M (tokens)")
        ax.set_ylabel("TFLOPS")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def environment() -> dict:
    import triton

    return {
        "date": date.today().isoformat(),
        "gpu": torch.cuda.get_device_name() if HAS_CUDA else platform.processor() or "cpu",
        "torch": torch.__version__,
        "triton": triton.__version__,
        "cuda": torch.version.cuda,
    }


def gpu_main(args) -> None:
    fp8 = load_package()
    rows: list[Row] = []
    if "act_quant" in args.only:
        bench_act_quant(fp8, rows)
    if "dense" in args.only:
        bench_dense(fp8, rows, args.m or DENSE_M)
    if "moe" in args.only:
        bench_moe(fp8, rows, args.tokens or MOE_TOKENS)
    if "model" in args.only:
        bench_model(rows)
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    env = environment()
    (OUT_DIR / "results.json").write_text(json.dumps({"env": env, "rows": [asdict(r) for r in rows]}, indent=1))
    plot(rows, OUT_DIR / "results.png")
    print(json.dumps(env))
    print_table(rows)


def cpu_demo() -> int:
    """Small shapes through the interpreter, every kernel checked against the reference."""
    import interpreter_shim
    from reference import (
        dequantize_activation,
        dequantize_weight,
        group_by_expert,
        matmul_reference,
        moe_reference,
        quantize,
        quantize_weight,
    )

    interpreter_shim.install()
    fp8 = load_package()
    torch.manual_seed(0)
    checks = []
    x = torch.randn(33, 1000, dtype=torch.bfloat16)
    q, s = fp8.fp8_act_quant(x, 128)
    q_ref, s_ref = quantize(x, 128)
    exact = torch.equal(q.view(torch.uint8), q_ref.view(torch.uint8)) and torch.equal(s, s_ref)
    checks.append(("fp8_act_quant 33x1000 bf16", "codes+scales bitwise", 0.0 if exact else 1.0, 0.0))
    for m in (1, 16, 80):
        w_q, w_s = quantize_weight(torch.randn(320, 640), (128, 128))
        a = torch.randn(m, 640, dtype=torch.bfloat16)
        out = fp8.matmul_2d(a, w_q, w_s, [128, 128], torch.float32)
        a_q, a_s = quantize(a, 128)
        ref = matmul_reference(dequantize_activation(a_q, a_s, 128), dequantize_weight(w_q, w_s, (128, 128)))
        err = ((out.double() - ref).norm() / ref.norm()).item()
        checks.append((f"matmul_2d M={m} 320x640", "rel. Frobenius error", err, 1e-6))
    experts, rows = 4, 24
    pairs = [quantize_weight(torch.randn(192, 256), (128, 128)) for _ in range(experts)]
    w_q, w_s = torch.stack([q for q, _ in pairs]), torch.stack([s for _, s in pairs])
    a = torch.randn(rows, 256, dtype=torch.bfloat16)
    ids = torch.randint(0, experts, (rows,))
    ids[:3] = experts  # expert-parallel sentinels: zero rows
    ref = moe_reference(a, w_q, w_s, ids, (128, 128))
    batched = fp8.matmul_batched(a, w_q, w_s, ids, [128, 128], torch.float32)
    err = ((batched.double() - ref).norm() / ref.norm()).item()
    checks.append((f"matmul_batched {rows}x256 E={experts}", "rel. Frobenius error", err, 1e-6))
    a_sorted, offsets, tokens_per_expert, _, perm = group_by_expert(a, ids, experts)
    routed = int(offsets[-1])
    grouped = fp8.matmul_grouped(a_sorted, w_q, w_s, offsets, tokens_per_expert, [128, 128], torch.float32)
    err = ((grouped[:routed].double() - ref[perm][:routed]).norm() / ref.norm()).item()
    checks.append((f"matmul_grouped {rows}x256 E={experts}", "rel. Frobenius error", err, 1e-6))
    print(f"{'check':<30} {'measure':<22} {'value':>10} {'limit':>8}  result")
    ok = True
    for name, measure, value, limit in checks:
        passed = value <= limit
        ok &= passed
        print(f"{name:<30} {measure:<22} {value:10.2e} {limit:8.0e}  {'ok' if passed else 'FAIL'}")
    print("CPU demo (Triton interpreter): " + ("all results match the reference" if ok else "MISMATCH"))
    return 0 if ok else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--m", type=int, action="append", help="dense token counts to time (default: DENSE_M)")
    parser.add_argument("--tokens", type=int, action="append", help="MoE token counts to time (top-8 routing)")
    parser.add_argument(
        "--only",
        nargs="+",
        choices=["act_quant", "dense", "moe", "model"],
        default=["act_quant", "dense", "moe", "model"],
    )
    args = parser.parse_args()
    if HAS_CUDA:
        gpu_main(args)
    else:
        sys.exit(cpu_demo())


if __name__ == "__main__":
    main()
