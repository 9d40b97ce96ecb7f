"""How weights are scaled, one small type from validation down to the launchers."""

from __future__ import annotations

from dataclasses import dataclass

# K per GEMM step in per-tensor mode, where any step length serves the one scale.
_PER_TENSOR_K_STEP = 128


@dataclass(frozen=True)
class Scaling:
    """One scale per ``block_n x block_k`` block of a weight (block mode), or one per weight matrix
    (per-tensor mode: ``block_n == block_k == 0``). The registered ops carry it as its two ints
    (``op_args``; ``Scaling(*op_args)`` rebuilds it)."""

    block_n: int = 0
    block_k: int = 0

    @property
    def per_block(self) -> bool:
        """Block mode: each K block is a fresh FP8 dot, scaled by its activation and weight scales."""
        return self.block_n != 0

    @property
    def op_args(self) -> tuple[int, int]:
        return self.block_n, self.block_k

    def k_step(self) -> int:
        """K per GEMM step: the scale block along K, or a fixed step in per-tensor mode."""
        return self.block_k if self.per_block else _PER_TENSOR_K_STEP

    def activation_group(self, k: int) -> int:
        """Elements per activation scale along K: block_k, or the whole row (per-tensor mode)."""
        return self.block_k if self.per_block else k

    def weight_rows_per_scale(self, n: int) -> int:
        """Weight rows that share a scale: block_n, or all ``n`` (per-tensor mode)."""
        return self.block_n if self.per_block else n


PER_TENSOR = Scaling()
