"""Loss and perplexity of a model on response tokens, or on whole texts.

Perplexity is ``exp(mean token loss)``: the exponential of the cross-entropy in nats,
averaged over every target token (not over batches), so the result does not depend on how
the examples are batched. On instruction data the targets are the response tokens and the
end-of-text token that closes each response (the prompt's targets are masked, as
:func:`~customgpt.data.instruct.collate_instructions` does with ``mask_instructions``).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pad_sequence

from customgpt.constants import IGNORE_INDEX
from customgpt.data.instruct import InstructionDataset, collate_instructions
from customgpt.losses import model_lm_loss


@dataclass(frozen=True)
class Perplexity:
    """A mean token loss (nats), its perplexity ``exp(loss)`` and the number of target tokens."""

    loss: float
    perplexity: float
    tokens: int


def perplexity_of(loss_sum: float, tokens: int) -> Perplexity:
    """The :class:`Perplexity` of a summed token loss over ``tokens`` targets (NaN for none)."""
    if tokens == 0:
        return Perplexity(math.nan, math.nan, 0)
    loss = loss_sum / tokens
    return Perplexity(loss, math.exp(min(loss, 700.0)), tokens)


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Run a block with ``model`` in eval mode (no dropout), restoring its mode afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


@torch.no_grad()
def summed_loss(model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]], device: torch.device | str | None = None,
                autocast=None) -> tuple[float, int]:
    """``(sum of token losses, number of targets)`` of a model over (inputs, targets) batches,
    each (B, T); targets equal to ``IGNORE_INDEX`` count for nothing. The model is run in eval mode
    (its mode is restored afterwards)."""
    device = device if device is not None else next(model.parameters()).device
    total, count = 0.0, 0
    with eval_mode(model):
        for x, y in batches:
            x, y = x.to(device), y.to(device)
            with autocast() if autocast is not None else contextlib.nullcontext():
                loss = model_lm_loss(model, x, y, reduction="sum")
            total += float(loss)
            count += int((y != IGNORE_INDEX).sum())
    return total, count


def response_perplexity(model: nn.Module, dataset: InstructionDataset, *, batch_size: int = 8,
                        max_batches: int | None = None, mask_instructions: bool = True,
                        device: torch.device | str | None = None, autocast=None) -> Perplexity:
    """Perplexity on the response tokens of the examples in the first ``max_batches`` batches
    (all with None), each response's end-of-text included, prompt tokens excluded (included
    too without ``mask_instructions``), truncated to the dataset's ``max_length``."""
    n = len(dataset) if max_batches is None else min(len(dataset), max_batches * batch_size)
    batches = (collate_instructions([dataset[i] for i in range(k, min(k + batch_size, n))],
                                    max_length=dataset.max_length, mask_instructions=mask_instructions)
               for k in range(0, n, batch_size))
    return perplexity_of(*summed_loss(model, batches, device, autocast))


def text_perplexity(model: nn.Module, ids: Sequence[int], *, context_length: int | None = None,
                    batch_size: int = 8, device: torch.device | str | None = None) -> Perplexity:
    """Perplexity of a token sequence cut into consecutive, non-overlapping windows of
    ``context_length`` targets (default: the model's context); every token after the first
    is a target once."""
    context = context_length or model.config.context_length
    ids = torch.as_tensor(list(ids), dtype=torch.long)
    windows = [ids[start:start + context + 1] for start in range(0, max(len(ids) - 1, 0), context)]
    batches = ((pad_sequence([w[:-1] for w in part], batch_first=True),
                pad_sequence([w[1:] for w in part], batch_first=True, padding_value=IGNORE_INDEX))
               for part in (windows[k:k + batch_size] for k in range(0, len(windows), batch_size)))
    return perplexity_of(*summed_loss(model, batches, device))
