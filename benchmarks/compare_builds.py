#!/usr/bin/env python3
"""Same-process A/B of package builds on the GPU: the method of the "same-process A/B" tables in
RESULTS.md (GPU only).

    python3 scripts/build.py --backend cuda --out /tmp/h --tree-id 0000001    # the code as it is
    python3 scripts/build.py --backend cuda --out /tmp/h2 --tree-id 0000002   # the same, a second copy
    (edit the package)
    python3 scripts/build.py --backend cuda --out /tmp/x --tree-id 0000003    # the variant
    python3 benchmarks/compare_builds.py H2=/tmp/h2/torch-cuda H=/tmp/h/torch-cuda X=/tmp/x/torch-cuda \\
        --cases grouped --reps 4

Builds need distinct tree ids (their ops get distinct namespaces, so they load side by side). Each
case draws one call's inputs, runs every build on them and compares each output with the first
build's bit for bit; then it times every build ``--reps`` times with the runner's ``bench`` (graph
replays over fresh operands), the builds in rotating order, and keeps the fastest. The first module
loaded in a process has run up to 10% faster on calls of several milliseconds, so load the reference
build twice (as above: H2 first, then H) and read the spread of its two copies before a ratio.
``NAME=DIR:VAR=VALUE`` runs that build's calls with environment variable VAR set (probe builds that
read one at launch).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import itertools
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import torch
from run import (
    DENSE_SHAPES,
    MOE_SHAPES,
    TOP_K,
    bench,
    grouped_inputs,
    random_expert_weights,
    random_weight,
    top_k_routing,
)

CASE_KINDS = ("dense", "fused", "grouped", "batched")
DEFAULT_M = [1, 16, 128, 1024, 4096]
DEFAULT_GROUPED_TOKENS = [4096, 8192]
DEFAULT_BATCHED_TOKENS = [1, 2]
# Routings a grouped or batched case cycles through (each graph copy takes the next one).
_ROUTINGS = 8


@dataclass
class Build:
    name: str
    package: ModuleType
    env: dict[str, str]


def _as_is(fp8: ModuleType, inputs: tuple) -> tuple:
    return inputs


@dataclass
class Case:
    """One call shape: ``draw()`` gives a call's inputs, ``prepare(package, inputs)`` what the call
    takes (work kept out of the timed call), ``run(package, prepared)`` makes the call."""

    title: str
    draw: Callable[[], tuple]
    run: Callable[[ModuleType, tuple], torch.Tensor]
    bytes_each: int  # weight bytes one call reads (sizes the graph, gives TB/s)
    flops: int
    prepare: Callable[[ModuleType, tuple], tuple] = _as_is


def parse_build(spec: str) -> Build:
    """``NAME=DIR[:VAR=VALUE...]`` -> the loaded build."""
    import kernels

    name, sep, rest = spec.partition("=")
    if not sep or not name:
        raise SystemExit(f"a build is NAME=DIR[:VAR=VALUE...], got {spec!r}")
    directory, *assignments = rest.split(":")
    env = {}
    for assignment in assignments:
        var, sep, value = assignment.partition("=")
        if not sep or not var:
            raise SystemExit(f"an environment setting is VAR=VALUE, got {assignment!r} in {spec!r}")
        env[var] = value
    return Build(name, kernels.get_local_kernel(Path(directory)), env)


@contextlib.contextmanager
def environment(env: dict[str, str]) -> Iterator[None]:
    saved = {var: os.environ.get(var) for var in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for var, value in saved.items():
            if value is None:
                os.environ.pop(var, None)
            else:
                os.environ[var] = value


def dense_cases(m_values: list[int], fused: bool) -> list[Case]:
    """The runner's dense shapes: ``matmul_2d`` on bf16 rows (fused) or the pre-quantized matmul."""
    cases = []
    for (n, k), m in itertools.product(DENSE_SHAPES, m_values):

        def draw(n=n, k=k, m=m) -> tuple:
            return (torch.randn(m, k, device="cuda", dtype=torch.bfloat16), *random_weight(n, k, "cuda"))

        title = f"{'fused' if fused else 'prequant'} {n}x{k} M={m}"
        if fused:
            cases.append(Case(title, draw, _fused_matmul, n * k, 2 * m * n * k))
        else:
            cases.append(Case(title, draw, _prequantized_matmul, n * k, 2 * m * n * k, prepare=_quantized_rows))
    return cases


def _fused_matmul(fp8: ModuleType, inputs: tuple) -> torch.Tensor:
    x, w, ws = inputs
    return fp8.matmul_2d(x, w, ws, [128, 128])


def _quantized_rows(fp8: ModuleType, inputs: tuple) -> tuple:
    x, w, ws = inputs
    return (*fp8.fp8_act_quant(x, 128), w, ws)


def _prequantized_matmul(fp8: ModuleType, inputs: tuple) -> torch.Tensor:
    q, s, w, ws = inputs
    return fp8.w8a8_block_fp8_matmul(q, w, s, ws, [128, 128], torch.bfloat16)


# One projection's weights at a time: its cases follow each other.
_expert_weights = functools.lru_cache(maxsize=1)(random_expert_weights)


def moe_cases(tokens_list: list[int], grouped: bool) -> list[Case]:
    """The runner's MoE projections, top-8 routing of a random router: ``matmul_grouped`` on rows
    sorted by expert, or ``matmul_batched`` on rows in token order."""
    cases = []
    for (name, (experts, n, k)), tokens in itertools.product(MOE_SHAPES.items(), tokens_list):

        def draw(experts=experts, n=n, k=k, tokens=tokens) -> tuple:
            hidden = torch.randn(tokens, k, device="cuda", dtype=torch.bfloat16)
            ids = top_k_routing(tokens, experts)
            if grouped:
                return (*grouped_inputs(hidden, ids, experts), *_expert_weights(experts, n, k))
            return hidden.repeat_interleave(TOP_K, 0), ids, *_expert_weights(experts, n, k)

        touched = top_k_routing(tokens, experts).unique().numel() * n * k  # as the runner counts them
        title = f"{'grouped' if grouped else 'batched'} {name} T={tokens}"
        run = _grouped_matmul if grouped else _batched_matmul
        cases.append(Case(title, draw, run, touched, 2 * tokens * TOP_K * n * k))
    return cases


def _grouped_matmul(fp8: ModuleType, inputs: tuple) -> torch.Tensor:
    rows, offsets, tokens_per_expert, w_q, w_s = inputs
    return fp8.matmul_grouped(rows, w_q, w_s, offsets, tokens_per_expert, [128, 128])


def _batched_matmul(fp8: ModuleType, inputs: tuple) -> torch.Tensor:
    rows, ids, w_q, w_s = inputs
    return fp8.matmul_batched(rows, w_q, w_s, ids, [128, 128])


def timed_call(case: Case, fp8: ModuleType, inputs: Iterator[tuple]) -> Callable[[], Callable[[], torch.Tensor]]:
    """``bench``'s ``make_call``: each graph copy takes the next inputs, prepared outside the call."""

    def make() -> Callable[[], torch.Tensor]:
        prepared = case.prepare(fp8, next(inputs))
        return lambda: case.run(fp8, prepared)

    return make


def compare(case: Case, builds: list[Build], reps: int) -> None:
    """Print the case's fastest time per build, its ratio to the first build, and whether every
    build's output equals the first build's bit for bit."""
    torch.manual_seed(0)
    inputs = case.draw()
    outputs = []
    for build in builds:
        with environment(build.env):
            outputs.append(case.run(build.package, case.prepare(build.package, inputs)))
    same = all(torch.equal(o.view(torch.uint8), outputs[0].view(torch.uint8)) for o in outputs[1:])
    pool = [inputs] + [case.draw() for _ in range(_ROUTINGS - 1)]
    best = dict.fromkeys((b.name for b in builds), float("inf"))
    for rep in range(reps):
        for build in builds[rep % len(builds) :] + builds[: rep % len(builds)]:
            with environment(build.env):
                ms = bench(timed_call(case, build.package, itertools.cycle(pool)), case.bytes_each, replays=10)
            best[build.name] = min(best[build.name], ms)
    first = best[builds[0].name]
    cells = "  ".join(f"{best[b.name] * 1e3:9.2f}" for b in builds)
    ratios = " ".join(f"{best[b.name] / first:.3f}" for b in builds[1:])
    rate = f"{case.flops / first / 1e9:6.0f} TFLOPS {case.bytes_each / first / 1e9:5.2f} TB/s"
    print(f"{case.title:34} {cells}   {ratios:<{6 * (len(builds) - 1)}}  {rate}  {'equal' if same else 'DIFFERENT'}")
    torch.cuda.empty_cache()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("builds", nargs="+", help="NAME=DIR[:VAR=VALUE...], DIR a torch-cuda build directory")
    parser.add_argument("--cases", default="dense,grouped", help=f"comma-separated, of {', '.join(CASE_KINDS)}")
    parser.add_argument("--only", nargs="*", default=[], help="keep the cases whose title contains one of these")
    parser.add_argument("--m", type=int, nargs="*", default=DEFAULT_M, help="dense and fused rows")
    parser.add_argument("--grouped-tokens", type=int, nargs="*", default=DEFAULT_GROUPED_TOKENS)
    parser.add_argument("--batched-tokens", type=int, nargs="*", default=DEFAULT_BATCHED_TOKENS)
    parser.add_argument("--reps", type=int, default=3, help="timings per build and case (the fastest is kept)")
    args = parser.parse_args()
    kinds = args.cases.split(",")
    if unknown := set(kinds) - set(CASE_KINDS):
        raise SystemExit(f"unknown case kinds {sorted(unknown)}; choose from {', '.join(CASE_KINDS)}")
    if not torch.cuda.is_available():
        raise SystemExit("compare_builds.py times GPU kernels: it needs a CUDA GPU")
    builds = [parse_build(spec) for spec in args.builds]
    cases = []
    if "dense" in kinds:
        cases += dense_cases(args.m, fused=False)
    if "fused" in kinds:
        cases += dense_cases(args.m, fused=True)
    if "grouped" in kinds:
        cases += moe_cases(args.grouped_tokens, grouped=True)
    if "batched" in kinds:
        cases += moe_cases(args.batched_tokens, grouped=False)
    cases = [c for c in cases if not args.only or any(o in c.title for o in args.only)]
    header = "  ".join(f"{b.name:>9}" for b in builds)
    print(f"{'case (us per call)':34} {header}   ratios to {builds[0].name}, rate of {builds[0].name}, outputs")
    for case in cases:
        compare(case, builds, args.reps)


if __name__ == "__main__":
    main()
