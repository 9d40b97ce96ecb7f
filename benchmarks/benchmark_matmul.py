"""`kernels benchmark` workloads for the dense block-FP8 matmul (kernels.benchmark.Benchmark format)."""

import torch
from kernels.benchmark import Benchmark


def _random_block_weight(n: int, k: int, device: str):
    w = torch.randn(n, k, device=device)
    tiles = w.unflatten(1, (-1, 128)).unflatten(0, (-1, 128))  # [n/128, 128, k/128, 128]
    s = tiles.abs().amax(dim=(1, 3)) / 448.0
    q = (tiles / s[:, None, :, None]).to(torch.float8_e4m3fn).flatten(2).flatten(0, 1)
    return q, s


class MatmulBenchmark(Benchmark):
    seed = 0

    def _setup(self, m: int):
        self.w, self.ws = _random_block_weight(18432, 7168, self.device)
        self.x = torch.randn(m, 7168, device=self.device, dtype=torch.bfloat16)

    def _reference(self) -> torch.Tensor:
        q, s = self.kernel.fp8_act_quant(self.x, 128)
        a = (q.float().unflatten(-1, (-1, 128)) * s.unsqueeze(-1)).flatten(-2)
        w = self.w.float() * self.ws.repeat_interleave(128, 0).repeat_interleave(128, 1)
        return (a @ w.t()).to(torch.bfloat16)

    def setup_decode(self):
        self._setup(16)

    def benchmark_decode(self):
        self.out = self.kernel.matmul_2d(self.x, self.w, self.ws, [128, 128])

    def verify_decode(self) -> torch.Tensor:
        return self._reference()

    def setup_prefill(self):
        self._setup(4096)

    def benchmark_prefill(self):
        self.out = self.kernel.matmul_2d(self.x, self.w, self.ws, [128, 128])

    def verify_prefill(self) -> torch.Tensor:
        return self._reference()
