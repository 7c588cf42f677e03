"""Tiny-model factories shared by the test modules (``from helpers import ...``).

pytest puts ``tests/`` on ``sys.path`` (rootdir conftest, no ``__init__.py``), so any test
file can import these. Everything here is small enough for a 2-core CPU.

* :func:`tiny_config` / :func:`tiny_model` — a customgpt GPT with random, non-trivial weights.
* :func:`tiny_hf_model` — a ``transformers.GPT2LMHeadModel`` with random weights, eval mode.
* :func:`copy_hf_to_customgpt` / :func:`copy_customgpt_to_hf` — the same weights in the
  other implementation, in memory (no files), for parity checks.
"""

from __future__ import annotations

from typing import Any

import torch

from customgpt.checkpoints import build_model, customgpt_to_hf_state, hf_to_customgpt_state
from customgpt.config import GPTConfig
from customgpt.model import GPT

#: Shapes small enough to run in milliseconds; n_head=3 (odd), mlp_ratio 4, vocab 100.
TINY = dict(vocab_size=100, context_length=32, n_embd=48, n_layer=2, n_head=3)


def randomize_(module: torch.nn.Module, seed: int = 0, std: float = 0.1) -> torch.nn.Module:
    """Fill every parameter with random values (LayerNorm weights around 1, biases non-zero),
    so parity tests exercise every tensor, not the zeros and ones of a fresh init."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=gen) * std
            if p.dim() == 1 and "ln_" in name and name.endswith("weight"):
                noise += 1.0
            p.copy_(noise.to(p.dtype))
    return module


def tiny_config(**overrides: Any) -> GPTConfig:
    """A tiny :class:`GPTConfig` (see :data:`TINY`), dropout off."""
    return GPTConfig(**{**TINY, "dropout": 0.0, **overrides})


def tiny_model(seed: int = 0, std: float = 0.1, **overrides: Any) -> GPT:
    """A tiny customgpt GPT with random weights (normal, ``std``), in eval mode."""
    torch.manual_seed(seed)
    return randomize_(GPT(tiny_config(**overrides)), seed, std).eval()


def hf_config(config: GPTConfig, attn_implementation: str = "eager"):
    """The ``transformers.GPT2Config`` with the shapes of ``config`` (dropout off)."""
    from transformers import GPT2Config

    hf = GPT2Config(**{**config.to_hf_dict(), "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0})
    hf._attn_implementation = attn_implementation
    return hf


def tiny_hf_model(seed: int = 0, attn_implementation: str = "eager", **overrides: Any):
    """A ``GPT2LMHeadModel`` with random weights; ``overrides`` are :class:`GPTConfig` fields
    (e.g. ``n_head=5, mlp_ratio=2, vocab_size=11``)."""
    from transformers import GPT2LMHeadModel

    torch.manual_seed(seed)
    model = GPT2LMHeadModel(hf_config(tiny_config(**overrides), attn_implementation))
    return randomize_(model, seed).eval()


def config_of_hf(hf_model) -> GPTConfig:
    """Our config for a transformers GPT-2 model."""
    return GPTConfig.from_hf_dict(hf_model.config.to_dict()).replace(dropout=0.0, attn_dropout=0.0)


def random_state(shapes: dict[str, tuple[int, ...]], seed: int = 0, std: float = 0.02) -> dict[str, torch.Tensor]:
    """Random tensors for the given names and shapes, quickly (no module init): normal with
    ``std``, LayerNorm weights around 1. For big shapes such as the 124M model."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name, shape in shapes.items():
        t = torch.randn(shape, generator=gen).mul_(std)  # in place: these can be 38M values
        if len(shape) == 1 and "ln_" in name and name.endswith("weight"):
            t.add_(1.0)
        out[name] = t
    return out


def copy_hf_to_customgpt(hf_model, **overrides: Any) -> GPT:
    """A customgpt GPT holding ``hf_model``'s weights (through the checkpoint converter)."""
    config = config_of_hf(hf_model).replace(**overrides)
    state = hf_to_customgpt_state(hf_model.state_dict(), config, source="hf_model")
    return build_model(config, {k: v.detach().clone() for k, v in state.items()})


def copy_customgpt_to_hf(model: GPT, attn_implementation: str = "eager"):
    """A ``GPT2LMHeadModel`` holding ``model``'s weights (through the export converter)."""
    from transformers import GPT2LMHeadModel

    hf = GPT2LMHeadModel(hf_config(model.config, attn_implementation))
    state = customgpt_to_hf_state(model.state_dict(), model.config)
    missing, unexpected = hf.load_state_dict(state, strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}, (missing, unexpected)
    hf.tie_weights()
    return hf.eval()
