#!/usr/bin/env python3
"""An eager Transformers model in FP8 on this package against the same model in bf16.

What a user of ``model.generate()`` without ``torch.compile`` or a static cache sees: a 512-token
prefill (grouped expert calls) and one decode step (batched expert calls) of a random Qwen3-MoE, both
timed eagerly (median wall time, launch overhead included). Two models: Qwen3-30B-A3B's layer sizes
with 4 layers, and the small model of the Transformers tests. The package is handed to Transformers
through its kernel mapping, so no Hub access is needed.

    python benchmarks/eager_model.py [--model qwen3-30b small]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

# Offline: no Hub kernel layers (rotary), no DeepGEMM linear.
os.environ.setdefault("DISABLE_KERNEL_MAPPING", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_DISABLE_DEEPGEMM_LINEAR", "1")

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "tests"))

PROMPT_TOKENS = 512
# Qwen3-30B-A3B's layer sizes, 4 layers.
QWEN3_30B = {
    "vocab_size": 151936,
    "hidden_size": 2048,
    "intermediate_size": 6144,
    "moe_intermediate_size": 768,
    "num_hidden_layers": 4,
    "num_attention_heads": 32,
    "num_key_value_heads": 4,
    "head_dim": 128,
    "num_experts": 128,
    "num_experts_per_tok": 8,
    "max_position_embeddings": 4096,
    "tie_word_embeddings": False,
}


def save_random_model(path: str, name: str) -> int:
    """Save a random bf16 Qwen3-MoE checkpoint; return its vocabulary size."""
    from tiny_model import tiny_qwen3_moe
    from transformers import AutoModelForCausalLM, Qwen3MoeConfig

    if name == "small":
        return tiny_qwen3_moe(path).vocab_size
    config = Qwen3MoeConfig(**QWEN3_30B)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).save_pretrained(path)
    return config.vocab_size


def load_vocab_size(path: str) -> int:
    return json.loads(Path(path, "config.json").read_text())["vocab_size"]


def time_steps(model, prompt: torch.Tensor) -> tuple[float, float]:
    """(prefill ms, decode-step ms): medians of eager calls."""
    import triton.testing
    from transformers import DynamicCache

    with torch.no_grad():
        prefill = triton.testing.do_bench(lambda: model(prompt, use_cache=False), warmup=50, rep=300)
        cache = DynamicCache(config=model.config)
        model(prompt, past_key_values=cache)
        token = prompt[:, -1:]

        def step():
            cache.crop(prompt.shape[1])
            return model(token, past_key_values=cache)

        decode = triton.testing.do_bench(step, warmup=50, rep=300)
    return prefill, decode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", nargs="+", choices=["qwen3-30b", "small"], default=["qwen3-30b", "small"])
    parser.add_argument("--checkpoints", type=Path, help="keep the random checkpoints here (reused when present)")
    args = parser.parse_args()
    import transformers
    from run import load_package
    from tiny_model import load_fp8_model, load_model
    from transformers.integrations import hub_kernels

    hub_kernels._KERNEL_MODULE_MAPPING["finegrained-fp8"] = load_package()
    print(f"transformers {transformers.__version__}, torch {torch.__version__}, {torch.cuda.get_device_name()}")
    print(f"{'model':<12} {'weights':<6} {'experts':<11} {'prefill ms':>10} {'decode ms':>10}")
    for name in args.model:
        with tempfile.TemporaryDirectory() as scratch:
            path = str(args.checkpoints / name) if args.checkpoints else scratch
            vocab = load_vocab_size(path) if Path(path, "config.json").exists() else save_random_model(path, name)
            prompt = torch.randint(0, vocab, (1, PROMPT_TOKENS), device="cuda")
            for label, load in (("bf16", load_model), ("fp8", load_fp8_model)):
                for implementation in ("grouped_mm", "batched_mm"):
                    model = load(path, implementation)
                    prefill, decode = time_steps(model, prompt)
                    print(f"{name:<12} {label:<6} {implementation:<11} {prefill:10.2f} {decode:10.2f}", flush=True)
                    del model
                    torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
