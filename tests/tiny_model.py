"""The small random MoE causal LM of the Transformers tests and the benchmark runner (no download)."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, FineGrainedFP8Config, Qwen3MoeConfig


def tiny_qwen3_moe(path, hidden=384, intermediate=512, moe_intermediate=256):
    """Save a random bf16 Qwen3-MoE to ``path``; return its config.

    Every projection size is a multiple of 128 on purpose: Transformers 5.17's quantization on load
    leaves the scales of partial 128-blocks nondeterministic (two loads of the same checkpoint with
    hidden 320 or head_dim 80 gave different ``weight_scale_inv``, codes equal; measured on the H100),
    which makes generation differ from load to load whatever the kernels do. Sizes that are not
    multiples of 128 are covered by the module tests, which quantize their weights themselves.
    """
    config = Qwen3MoeConfig(
        vocab_size=512,
        hidden_size=hidden,
        intermediate_size=intermediate,
        moe_intermediate_size=moe_intermediate,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=64,
        num_experts=8,
        num_experts_per_tok=2,
        max_position_embeddings=1024,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).save_pretrained(path)
    return config


def load_fp8_model(path, implementation):
    """The saved model quantized on load to block FP8 (128 x 128), experts dispatched to ``implementation``."""
    return load_model(path, implementation, FineGrainedFP8Config(weight_block_size=[128, 128]))


def load_model(path, implementation, quantization_config=None):
    """The saved model on the GPU in bf16 (or quantized with ``quantization_config``)."""
    return AutoModelForCausalLM.from_pretrained(
        path,
        dtype=torch.bfloat16,
        device_map="cuda",
        quantization_config=quantization_config,
        experts_implementation=implementation,
    )
