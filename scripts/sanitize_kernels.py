#!/usr/bin/env python3
"""Every kernel of the package once, on odd shapes (tails in N and K, M = 1, split-K, sentinels,
empty experts), for NVIDIA compute-sanitizer on the GPU:

    compute-sanitizer --tool memcheck python3 scripts/sanitize_kernels.py
    compute-sanitizer --tool racecheck python3 scripts/sanitize_kernels.py --one

``--one`` runs one shape per kernel. Needs a CUDA GPU and the build in build/ (scripts/build.py).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from checks import make_activation, make_expert_weights, make_weight  # noqa: E402
from reference import group_by_expert  # noqa: E402


def load_package():
    import kernels

    os.environ["LOCAL_KERNELS"] = f"kernels-community/finegrained-fp8={ROOT / 'build'}"
    return kernels.get_kernel("kernels-community/finegrained-fp8", version=1)


def main() -> None:
    one = "--one" in sys.argv
    fp8 = load_package()
    gen = torch.Generator().manual_seed(0)
    block = [128, 128]
    for m, k in [(1, 200), (33, 1000)][: 1 if one else None]:
        fp8.fp8_act_quant(make_activation((m, k), torch.bfloat16, gen, "cuda"), 128)
    # The last four take the Hopper Gluon kernel on an H100 or H200 (64 x 64, 128 x 128 and 64 x 128 tiles, tails in
    # M, N, K; then 162 128 x 128 tiles, of which 132 SMs get the last 30 as halves, one half past M).
    dense_cases = [(1, 70, 200), (4, 64, 2048), (17, 130, 136)]
    dense_cases += [(65, 96, 384), (300, 200, 1040), (200, 200, 1040), (1050, 2304, 1024)]
    for m, n, k in dense_cases[: 1 if one else None]:
        b, bs = make_weight(n, k, (128, 128), gen, "cuda")
        fp8.matmul_2d(make_activation((m, k), torch.bfloat16, gen, "cuda"), b, bs, block)
        b, bs = make_weight(n, k, None, gen, "cuda")
        fp8.matmul_2d(make_activation((m, k), torch.bfloat16, gen, "cuda"), b, bs, None)
    # The first two run batched without a routing launch (few rows); the last three run grouped on the
    # Hopper Gluon kernel (more than 64 rows per expert); the last one also routes its rows in two steps
    # (more rows than one routing step compares).
    expert_cases = [
        (1, 3, 70, 200, 0),
        (12, 4, 130, 136, 3),
        (30, 4, 130, 136, 5),
        (150, 2, 96, 384, 3),
        (400, 3, 200, 1040, 7),
        (5000, 9, 64, 256, 11),
    ]
    for rows, experts, n, k, sentinels in expert_cases[: 1 if one else None]:
        b, bs = make_expert_weights(experts, n, k, (128, 128), gen, "cuda")
        x = make_activation((rows, k), torch.bfloat16, gen, "cuda")
        ids = torch.randint(0, max(1, experts - 1), (rows,), generator=gen)  # the last expert stays empty
        ids[:sentinels] = experts + 1
        ids = ids.cuda()
        fp8.matmul_batched(x, b, bs, ids, block)
        x_sorted, offsets, tpe, _, _ = group_by_expert(x, ids, experts)
        fp8.matmul_grouped(x_sorted, b, bs, offsets, tpe, block)
    torch.cuda.synchronize()
    print("sanitize_kernels: every kernel ran")


if __name__ == "__main__":
    main()
