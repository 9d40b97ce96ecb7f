"""`kernels benchmark` workloads for the block-FP8 matmuls, dense and MoE (kernels.benchmark.Benchmark format).

The runner checks ``torch.allclose(out, reference, atol=1e-2)``; the weights are drawn so that the
bf16 outputs stay below 2 in magnitude, where one bf16 rounding step is under that tolerance.
"""

import torch
from kernels.benchmark import Benchmark

OUTPUT_STD = 0.2


def _random_block_weight(*shape: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """e4m3 codes (..., n, k) and float32 scales (..., n / 128, k / 128), one per 128 x 128 block
    (n, k multiples of 128), of weights whose products with unit-variance rows have standard
    deviation OUTPUT_STD."""
    w = torch.randn(*shape, device=device) * (OUTPUT_STD / shape[-1] ** 0.5)
    tiles = w.unflatten(-1, (-1, 128)).unflatten(-3, (-1, 128))  # [..., n/128, 128, k/128, 128]
    s = tiles.abs().amax(dim=(-3, -1)) / 448.0
    q = (tiles / s[..., :, None, :, None]).to(torch.float8_e4m3fn).reshape(shape)
    return q, s


def _dequantize_rows(kernel, x: torch.Tensor) -> torch.Tensor:
    """x quantized per row and 128-group by the kernel's fp8_act_quant, back in float32."""
    q, s = kernel.fp8_act_quant(x, 128)
    return (q.float().unflatten(-1, (-1, 128)) * s.unsqueeze(-1)).flatten(-2)


def _dequantize_weight(w: torch.Tensor, ws: torch.Tensor) -> torch.Tensor:
    return w.float() * ws.repeat_interleave(128, -2).repeat_interleave(128, -1)


class MatmulBenchmark(Benchmark):
    """matmul_2d on DeepSeek-V3's 18432 x 7168 projection: 16 tokens (decode), 4096 (prefill)."""

    seed = 0
    n, k = 18432, 7168
    decode_tokens, prefill_tokens = 16, 4096

    def _setup(self, m: int):
        self.w, self.ws = _random_block_weight(self.n, self.k, device=self.device)
        self.x = torch.randn(m, self.k, device=self.device, dtype=torch.bfloat16)

    def _reference(self) -> torch.Tensor:
        return (_dequantize_rows(self.kernel, self.x) @ _dequantize_weight(self.w, self.ws).t()).to(torch.bfloat16)

    def setup_decode(self):
        self._setup(self.decode_tokens)

    def benchmark_decode(self):
        self.out = self.kernel.matmul_2d(self.x, self.w, self.ws, [128, 128])

    def verify_decode(self) -> torch.Tensor:
        return self._reference()

    def setup_prefill(self):
        self._setup(self.prefill_tokens)

    benchmark_prefill = benchmark_decode
    verify_prefill = verify_decode


class ExpertMatmulBenchmark(Benchmark):
    """The MoE expert matmuls on Qwen3-30B-A3B's gate_up experts (128 x 1536 x 2048), top-8 routing:
    matmul_batched at 1 and 32 tokens (decode), matmul_grouped at 4096 tokens (prefill)."""

    seed = 0
    experts, n, k, top_k = 128, 1536, 2048, 8
    decode_tokens, batch_tokens, prefill_tokens = 1, 32, 4096

    def _setup(self, tokens: int):
        self.w, self.ws = _random_block_weight(self.experts, self.n, self.k, device=self.device)
        hidden = torch.randn(tokens, self.k, device=self.device, dtype=torch.bfloat16)
        router = torch.rand(tokens, self.experts, device=self.device)
        self.ids = router.topk(self.top_k, dim=1).indices.reshape(-1)
        self.x = hidden.repeat_interleave(self.top_k, 0)

    def _reference(self) -> torch.Tensor:
        """Row s times expert ids[s], in the rows' order."""
        a = _dequantize_rows(self.kernel, self.x)
        out = torch.empty(a.shape[0], self.n, device=self.device)
        for e in self.ids.unique().tolist():
            rows = self.ids == e
            out[rows] = a[rows] @ _dequantize_weight(self.w[e], self.ws[e]).t()
        return out.to(torch.bfloat16)

    def _sort_by_expert(self):
        """What a grouped caller does first: rows sorted by expert, counts and inclusive ends."""
        order = torch.sort(self.ids, stable=True).indices
        self.ids, self.x = self.ids[order], self.x[order]
        self.tokens_per_expert = torch.bincount(self.ids, minlength=self.experts)
        self.offsets = torch.cumsum(self.tokens_per_expert, 0).to(torch.int32)

    def setup_batched_decode(self):
        self._setup(self.decode_tokens)

    def benchmark_batched_decode(self):
        self.out = self.kernel.matmul_batched(self.x, self.w, self.ws, self.ids, [128, 128])

    def verify_batched_decode(self) -> torch.Tensor:
        return self._reference()

    def setup_batched_32(self):
        self._setup(self.batch_tokens)

    benchmark_batched_32 = benchmark_batched_decode
    verify_batched_32 = verify_batched_decode

    def setup_grouped_prefill(self):
        self._setup(self.prefill_tokens)
        self._sort_by_expert()

    def benchmark_grouped_prefill(self):
        self.out = self.kernel.matmul_grouped(self.x, self.w, self.ws, self.offsets, self.tokens_per_expert, [128, 128])

    verify_grouped_prefill = verify_batched_decode
