"""What the generation tests share: tiny models whose greedy output depends on the context,
prompts, and the reference every cached path must equal (a full forward on the window)."""

from __future__ import annotations

import torch

from customgpt.config import GPTConfig
from customgpt.generate import SamplingParams
from customgpt.model import GPT

CTX = 32
GREEDY = SamplingParams(temperature=0, max_new_tokens=40, stop_at_eot=False)


def randomize(module: torch.nn.Module, seed: int, std: float = 0.3) -> torch.nn.Module:
    """Random weights large enough that a tiny model's greedy output depends on its context
    (GPT-2's small init makes a random model repeat one token, which would hide bugs)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            value = torch.randn(p.shape, generator=gen) * std
            if p.dim() == 1 and "ln_" in name and name.endswith("weight"):
                value += 1.0
            p.copy_(value)
    return module


def tiny_model(seed: int = 0, **overrides) -> GPT:
    cfg = dict(vocab_size=97, context_length=CTX, n_embd=32, n_layer=2, n_head=4, tie_embeddings=False)
    return randomize(GPT(GPTConfig(**{**cfg, **overrides})), seed).eval()



def prompt_of(length: int, seed: int = 0, vocab: int = 97) -> list[int]:
    return torch.randint(0, vocab, (length,), generator=torch.Generator().manual_seed(seed)).tolist()


def tokens(steps) -> list[int]:
    return [s.token_id for s in steps]


def reference_greedy(model: GPT, prompt: list[int], n: int) -> list[int]:
    """The definition: a full forward on the last context_length tokens, every step."""
    ids, out = list(prompt), []
    with torch.no_grad():
        for _ in range(n):
            logits = model(torch.tensor([ids[-model.config.context_length :]]))[0, -1]
            out.append(int(logits.argmax()))
            ids.append(out[-1])
    return out
