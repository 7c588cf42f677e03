"""Tiny models for the web app's tests, saved once per session as the app loads them."""

from __future__ import annotations

from pathlib import Path

import pytest

#: The chat models: the cpu-tiny shapes (GPT-2 vocabulary) with a long context window, so
#: that a reply of the maximum length lasts long enough to be stopped.
CHAT_SHAPES = dict(n_layer=2, n_head=2, n_embd=64, context_length=2048)
LABELS = ["ham", "spam"]


@pytest.fixture(scope="session")
def ui_models(tmp_path_factory) -> dict[str, Path]:
    """Folders: ``chat`` and ``compare`` (two random chat models), ``classifier`` (a random
    two-class classifier), ``broken`` (a model whose final LayerNorm is NaN: it loads, and
    sampling from it fails)."""
    import torch

    from customgpt.checkpoints import random_model, save_model
    from customgpt.classifier import GPTClassifier, save_classifier
    from customgpt.config import GPTConfig

    root = tmp_path_factory.mktemp("ui-models")
    config = GPTConfig.from_preset("cpu-tiny").replace(**CHAT_SHAPES)
    out = {
        "chat": save_model(random_model(config, seed=1), root / "chat"),
        "compare": save_model(random_model(config, seed=2), root / "compare"),
    }
    broken = random_model(config.replace(context_length=64), seed=3)
    with torch.no_grad():
        broken.transformer.ln_f.weight.fill_(float("nan"))  # every logit is NaN
    out["broken"] = save_model(broken, root / "broken")
    body = random_model(GPTConfig.from_preset("cpu-tiny").replace(context_length=64), seed=4)
    out["classifier"] = save_classifier(GPTClassifier(body, len(LABELS)), root / "classifier", LABELS, max_length=64)
    return out
