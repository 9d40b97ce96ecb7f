"""Routing of batched MoE calls: rows in any order, one expert id each, ordered by expert on the GPU.

One program per bucket (each expert, then one for sentinel ids, ``>= E`` or negative) finds where its
rows start and places them, stably; no program waits for another, so the launch needs no host
synchronization and its grid depends on shapes alone.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._launch import (
    dependent_launch_options,
    launch_kernel,
    let_next_kernel_launch,
    next_power_of_two,
    wait_for_previous_kernel,
)

# Up to this many rows the routing kernel places them; beyond it torch sorts them: each of the E + 1
# programs scans every row, so the kernel's work grows with rows x experts (docs/DESIGN.md, "MoE routing").
_ROUTE_MAX_ROWS = 16384
# Rows a routing program compares per step (8 warps; smaller chunks were slower from 4096 rows).
_ROUTE_CHUNK = 4096


@triton.jit
def bucket_of(ids_ptr, rows, valid, E):
    """bucket(s) = expert_ids[s] when 0 <= id < E, else E (sentinel)."""
    ids = tl.load(ids_ptr + rows, mask=valid, other=0).to(tl.int64)
    return tl.where((ids >= 0) & (ids < E), ids, E).to(tl.int32)


@triton.jit
def _route_kernel(ids_ptr, perm_ptr, ends_ptr, S, E, CHUNK: tl.constexpr, PDL: tl.constexpr):
    """Order S rows by bucket (stable). Program b places the rows of bucket b: a first scan over all
    rows counts those in earlier buckets (where bucket b starts), a second stores bucket b's rows in
    row order; both in steps of CHUNK rows.

    perm (S,) int32: perm[pos] = the row at position pos. ends (E + 1,) int32: ends[b] = the number of
    rows with bucket <= b (inclusive cumulative counts of buckets 0..E). No program waits for
    another, and each reads only the ids.
    """
    wait_for_previous_kernel(PDL)
    let_next_kernel_launch(PDL)
    b = tl.program_id(0)
    start = 0
    count = 0
    for first in range(0, S, CHUNK):
        rows = first + tl.arange(0, CHUNK)
        ok = rows < S
        theirs = bucket_of(ids_ptr, rows, ok, E)
        start += tl.sum(((theirs < b) & ok).to(tl.int32), 0)
        count += tl.sum(((theirs == b) & ok).to(tl.int32), 0)
    tl.store(ends_ptr + b, start + count)
    if count > 0:
        placed = start
        for first in range(0, S, CHUNK):
            rows = first + tl.arange(0, CHUNK)
            mine = (bucket_of(ids_ptr, rows, rows < S, E) == b) & (rows < S)
            taken = mine.to(tl.int32)
            tl.store(perm_ptr + placed + tl.cumsum(taken, 0) - 1, rows, mask=mine)
            placed += tl.sum(taken, 0)


def route(expert_ids: torch.Tensor, num_experts: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(perm (S,) int32, ends (E + 1,) int32): rows ordered by expert, sentinels last (see _route_kernel)."""
    s = expert_ids.shape[0]
    if s > _ROUTE_MAX_ROWS:
        valid = (expert_ids >= 0) & (expert_ids < num_experts)
        bucket = torch.where(valid, expert_ids, num_experts)
        ordered, perm = torch.sort(bucket, stable=True)
        every_bucket = torch.arange(num_experts + 1, device=bucket.device, dtype=bucket.dtype)
        ends = torch.searchsorted(ordered, every_bucket, right=True)
        return perm.to(torch.int32), ends.to(torch.int32)
    perm = torch.empty(s, dtype=torch.int32, device=expert_ids.device)
    ends = torch.empty(num_experts + 1, dtype=torch.int32, device=expert_ids.device)
    launch_kernel(
        _route_kernel,
        (num_experts + 1,),
        (expert_ids, perm, ends, s, num_experts),
        expert_ids.device,
        CHUNK=min(_ROUTE_CHUNK, next_power_of_two(s)),
        num_warps=8,
        **dependent_launch_options(expert_ids.device),
    )
    return perm, ends
