"""Shared pieces of the LoRA tests (tests/test_lora.py, tests/cli/test_merge.py): a tiny GPT
shape, reproducible inputs and non-zero adapter weights."""

from __future__ import annotations

import torch
from torch import nn

from customgpt import checkpoints
from customgpt.config import GPTConfig
from customgpt.lora import lora_layers
from customgpt.model import GPT

ALL_TARGETS = ("c_attn", "attn.c_proj", "c_fc", "mlp.c_proj")
TINY = GPTConfig(vocab_size=101, context_length=32, n_embd=32, n_layer=2, n_head=4)


def tiny_gpt(seed: int = 0, config: GPTConfig = TINY) -> GPT:
    return checkpoints.random_model(config, seed=seed)


def tokens(seed: int = 1, batch: int = 2, length: int = 12) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, TINY.vocab_size, (batch, length), generator=g)


def randomise_b(model: nn.Module, seed: int = 3, std: float = 0.2) -> None:
    """Non-zero B, as after some training, reproducibly."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in lora_layers(model).values():
            layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=g) * std)
