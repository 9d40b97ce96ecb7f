"""`kernels benchmark` workloads for fp8_act_quant (kernels.benchmark.Benchmark format)."""

import torch
from kernels.benchmark import Benchmark


def _quantize_reference(x: torch.Tensor, group: int) -> torch.Tensor:
    """Dequantized reference: groups of ``group`` along K scaled to e4m3 and back. Computed on the
    CPU: CUDA torch divides by a Python scalar through its reciprocal, not the IEEE division the
    contract specifies, which moves some scales by one ulp."""
    device = x.device
    x = x.cpu()
    xg = x.float().unflatten(-1, (-1, group))
    s = torch.clamp(xg.abs().amax(dim=-1, keepdim=True) / 448.0, min=1e-12)
    return (torch.clamp(xg / s, -448.0, 448.0).to(torch.float8_e4m3fn).float() * s).flatten(-2).to(device)


class ActQuantBenchmark(Benchmark):
    """fp8_act_quant of 4096 bf16 rows of 7168 (DeepSeek-V3 hidden size), groups of 128."""

    seed = 0
    m, k = 4096, 7168

    def setup_prefill(self):
        self.x = torch.randn(self.m, self.k, device=self.device, dtype=torch.bfloat16)

    def benchmark_prefill(self):
        q, s = self.kernel.fp8_act_quant(self.x, 128)
        self.out = (q.float().unflatten(-1, (-1, 128)) * s.unsqueeze(-1)).flatten(-2)

    def verify_prefill(self) -> torch.Tensor:
        return _quantize_reference(self.x, 128)
