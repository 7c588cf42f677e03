"""Fixtures of the generation tests: one torch thread, a tiny model, a GPT-2-vocabulary model
and the tokenizer."""

from __future__ import annotations

import pytest

from customgpt.config import GPTConfig
from customgpt.model import GPT
from customgpt.tokenizer import get_tokenizer
from generate.common import randomize, tiny_model


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    """Tiny tensors: one intra-op thread (see tests/conftest.py)."""


@pytest.fixture(scope="module")
def model() -> GPT:
    return tiny_model(0)


@pytest.fixture(scope="module")
def text_model() -> GPT:
    """GPT-2 vocabulary, so the real tokenizer applies."""
    return randomize(GPT(GPTConfig(context_length=64, n_embd=32, n_layer=2, n_head=2)), 1).eval()


@pytest.fixture(scope="module")
def tokenizer():
    return get_tokenizer()
