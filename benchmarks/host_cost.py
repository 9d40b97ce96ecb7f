#!/usr/bin/env python3
"""Host cost of eager calls: what one Python call of each public function costs the CPU.

Small shapes, so the GPU work of a call is a few microseconds and an eager loop is bound by the host.
For each call: ``eager us`` is the wall time per call of many back-to-back eager calls with one
synchronization at the end; ``GPU us`` is the time per call of the same calls replayed from one CUDA
graph (the device floor, no host work). Where eager is well above GPU, the difference is host cost.
bf16 ``F.linear`` (cuBLAS) and ``torch._grouped_mm`` run in the same process as peers.

``--profile`` adds, per call, where the host time goes (cProfile's own time per function, summed by
category). Profiling slows every Python frame, so read those figures as proportions.

    python benchmarks/host_cost.py [--calls 500] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "tests"))

# Qwen3-30B-A3B sizes: a 2048 x 2048 linear, the gate_up experts (128 x 1536 x 2048), top-8.
HIDDEN = 2048
EXPERTS, EXPERT_N = 128, 1536
TOP_K = 8
BLOCK = [128, 128]

# Host-time categories, matched in order against "file:function" of each profiled frame.
CATEGORIES = [
    ("validation", ("_validation.py", "dense.py:matmul_2d", "dense.py:w8a8_", "moe.py:matmul_", "moe.py:_check")),
    ("dispatch check", ("_launch.py:is_plain_eager_call", "_launch.py:call", "_python_dispatch")),
    ("device guard", ("torch/cuda/__init__.py", "_device.py:on_device", "torch/cuda/_utils")),
    ("Gluon descriptors/layouts", ("tensor_descriptor", "gluon", "_wgmma.py:_operand", "_wgmma.py:_output")),
    ("Triton launch", ("triton/", "torch/_library/triton")),
    ("tile choice", ("_tiles.py",)),
    ("allocation", ("method 'empty'", "method 'zeros'", "method 'empty_like'")),
    ("other package Python", ("finegrained_fp8",)),
]


def _category(key: tuple[str, int, str]) -> str:
    filename, _, function = key
    where = f"{filename}:{function}"
    for name, needles in CATEGORIES:
        if any(n in where for n in needles):
            return name
    return "other"


def cases(fp8) -> dict[str, Callable[[], object]]:
    """Name -> a call over fixed operands (random data, Qwen3-30B-A3B sizes)."""
    from run import grouped_inputs, random_expert_weights, random_weight, top_k_routing

    dev = "cuda"
    w_q, w_s = random_weight(HIDDEN, HIDDEN, dev)
    w_bf16 = torch.randn(HIDDEN, HIDDEN, device=dev, dtype=torch.bfloat16)
    wide_q, wide_s = random_weight(24576, 1536, dev)
    wide_bf16 = torch.randn(24576, 1536, device=dev, dtype=torch.bfloat16)
    x1 = torch.randn(1, HIDDEN, device=dev, dtype=torch.bfloat16)
    x128 = torch.randn(128, 1536, device=dev, dtype=torch.bfloat16)
    q1, s1 = fp8.fp8_act_quant(x1, 128)
    e_q, e_s = random_expert_weights(EXPERTS, EXPERT_N, HIDDEN)
    e_bf16_t = e_q.to(torch.bfloat16).transpose(-2, -1)
    ids = top_k_routing(1, EXPERTS)
    rows = x1.repeat_interleave(TOP_K, 0)
    sorted_rows, offsets, tpe = grouped_inputs(x1, ids, EXPERTS)
    prefill = torch.randn(512, HIDDEN, device=dev, dtype=torch.bfloat16)
    p_ids = top_k_routing(512, EXPERTS)
    p_sorted, p_offsets, p_tpe = grouped_inputs(prefill, p_ids, EXPERTS)
    return {
        "fp8_act_quant M=1": lambda: fp8.fp8_act_quant(x1, 128),
        "w8a8_fp8_matmul M=1 2048x2048": lambda: fp8.w8a8_fp8_matmul(q1, w_q, s1, w_s, BLOCK, torch.bfloat16),
        "matmul_2d M=1 2048x2048": lambda: fp8.matmul_2d(x1, w_q, w_s, BLOCK, torch.bfloat16),
        "bf16 F.linear M=1 2048x2048": lambda: torch.nn.functional.linear(x1, w_bf16),
        "matmul_2d M=128 24576x1536": lambda: fp8.matmul_2d(x128, wide_q, wide_s, BLOCK, torch.bfloat16),
        "bf16 F.linear M=128 24576x1536": lambda: torch.nn.functional.linear(x128, wide_bf16),
        "matmul_batched 1 token": lambda: fp8.matmul_batched(rows, e_q, e_s, expert_ids=ids, block_size=BLOCK),
        "matmul_grouped 1 token": lambda: fp8.matmul_grouped(
            sorted_rows, e_q, e_s, offsets=offsets, tokens_per_expert=tpe, block_size=BLOCK
        ),
        "bf16 _grouped_mm 1 token": lambda: torch._grouped_mm(sorted_rows, e_bf16_t, offs=offsets),
        "matmul_grouped 512 tokens": lambda: fp8.matmul_grouped(
            p_sorted, e_q, e_s, offsets=p_offsets, tokens_per_expert=p_tpe, block_size=BLOCK
        ),
        "bf16 _grouped_mm 512 tokens": lambda: torch._grouped_mm(p_sorted, e_bf16_t, offs=p_offsets),
    }


def eager_us(call: Callable[[], object], calls: int) -> float:
    """Wall time per call of ``calls`` back-to-back eager calls, one synchronization at the end (best of 3)."""
    for _ in range(20):
        call()
    best = float("inf")
    for _ in range(3):
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(calls):
            call()
        torch.cuda.synchronize()
        best = min(best, (time.perf_counter() - start) / calls * 1e6)
    return best


def graph_us(call: Callable[[], object], calls: int = 50) -> float:
    """GPU time per call: ``calls`` calls captured in one CUDA graph, median of 10 replays."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        call()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls):
            call()
    times = []
    for _ in range(10):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3 / calls)
    return sorted(times)[len(times) // 2]


def host_breakdown(call: Callable[[], object], calls: int) -> dict[str, float]:
    """Profiled host time per call, in microseconds, by category (see CATEGORIES)."""
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(calls):
        call()
    profiler.disable()
    torch.cuda.synchronize()
    totals: dict[str, float] = {}
    for key, (_, _, own, _, _) in pstats.Stats(profiler).stats.items():
        name = _category(key)
        totals[name] = totals.get(name, 0.0) + own / calls * 1e6
    return totals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=500)
    parser.add_argument("--profile", action="store_true", help="also break the host time down by category")
    parser.add_argument("--json", type=Path, help="write the rows here")
    args = parser.parse_args()
    from run import environment, load_package

    fp8 = load_package()
    results = []
    print(f"{'call':<34} {'eager us':>9} {'GPU us':>8}")
    for name, call in cases(fp8).items():
        row = {"call": name, "eager_us": eager_us(call, args.calls), "gpu_us": graph_us(call)}
        print(f"{name:<34} {row['eager_us']:9.1f} {row['gpu_us']:8.1f}", flush=True)
        if args.profile:
            row["profile_us"] = host_breakdown(call, args.calls)
        results.append(row)
    if args.profile:
        names = [c for c, _ in CATEGORIES] + ["other"]
        print("\nprofiled host time per call, us (cProfile inflates every frame: read as proportions)")
        print(f"{'call':<34} " + " ".join(f"{n[:10]:>10}" for n in names))
        for row in results:
            print(f"{row['call']:<34} " + " ".join(f"{row['profile_us'].get(n, 0.0):10.1f}" for n in names))
    if args.json:
        args.json.write_text(json.dumps({"env": environment(), "rows": results}, indent=1))


if __name__ == "__main__":
    main()
