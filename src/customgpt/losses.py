"""Losses as standalone functions and modules: hidden states or log-probs in, losses out."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from customgpt.constants import IGNORE_INDEX


def causal_lm_loss(hidden: Tensor, lm_head_weight: Tensor, targets: Tensor) -> Tensor:
    """Mean next-token cross-entropy over targets that are not ``IGNORE_INDEX``.

    Args:
        hidden: final hidden states (B, T, C) (``GPT.forward_hidden``).
        lm_head_weight: the LM head's weight (V, C).
        targets: token ids (B, T); ``IGNORE_INDEX`` marks positions without a target.
    """
    logits = hidden @ lm_head_weight.t()  # (B, T, V)
    return F.cross_entropy(
        logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE_INDEX
    )


def lm_loss_from_logits(logits: Tensor, targets: Tensor) -> Tensor:
    """The same loss from logits (B, T, V) already computed."""
    return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE_INDEX)


def model_lm_loss(model: torch.nn.Module, idx: Tensor, targets: Tensor, **forward_kwargs) -> Tensor:
    """Run a :class:`~customgpt.model.GPT` on ``idx`` and return its LM loss against ``targets``."""
    hidden = model.forward_hidden(idx, **forward_kwargs)
    return causal_lm_loss(hidden, model.lm_head.weight, targets)
