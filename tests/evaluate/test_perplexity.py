"""Perplexity equals exp(mean token loss) computed directly from the logits."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from helpers import tiny_model

from customgpt.data.instruct import InstructionDataset, InstructionRecord
from customgpt.evaluate.perplexity import perplexity_of, response_perplexity, text_perplexity
from customgpt.prompts import get_prompt_style
from customgpt.tokenizer import get_tokenizer

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_response_perplexity_is_exp_of_the_mean_response_token_loss():
    tok = get_tokenizer()
    model = tiny_model(1, vocab_size=tok.vocab_size, context_length=64)
    style = get_prompt_style("alpaca")
    records = [InstructionRecord("Add 2 and 3.", "", "5"), InstructionRecord("Translate.", "Hallo", "Hello there"),
               InstructionRecord("Name three colours.", "", "Red, green and blue.")]
    data = InstructionDataset(records, tok, style, max_length=64)
    got = response_perplexity(model, data, batch_size=2)
    losses = []
    with torch.no_grad():
        for ids, p in (data[i] for i in range(len(data))):
            seq = torch.tensor([ids + [tok.eot_id]])
            logits = model(seq[:, :-1])[0]
            # targets: the response tokens and the closing end-of-text
            losses += F.cross_entropy(logits[p - 1:], seq[0, p:], reduction="none").tolist()
    want = sum(losses) / len(losses)
    assert got.tokens == len(losses) == sum(len(ids) - p + 1 for ids, p in (data[i] for i in range(3)))
    assert got.loss == pytest.approx(want, rel=1e-5)
    assert got.perplexity == pytest.approx(math.exp(want), rel=1e-5)
    # batching does not change the value (token-weighted, not a mean of batch means)
    assert response_perplexity(model, data, batch_size=1).loss == pytest.approx(got.loss, rel=1e-5)


def test_text_perplexity_over_windows():
    model = tiny_model(2, context_length=8)
    ids = torch.randint(0, 100, (21,), generator=torch.Generator().manual_seed(0)).tolist()
    got = text_perplexity(model, ids, batch_size=2)
    losses = []
    with torch.no_grad():
        for start in range(0, 20, 8):
            chunk = torch.tensor(ids[start:start + 9])
            losses += F.cross_entropy(model(chunk[None, :-1])[0], chunk[1:], reduction="none").tolist()
    assert got.tokens == 20 == len(losses)
    assert got.perplexity == pytest.approx(math.exp(sum(losses) / 20), rel=1e-5)


def test_no_targets_gives_nan():
    assert math.isnan(perplexity_of(0.0, 0).perplexity)
