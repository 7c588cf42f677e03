"""Batched generation (:mod:`customgpt.generate.batch`): left-padded rows equal the rows alone,
stop on their own, and keep to the tokenizer's vocabulary."""

from __future__ import annotations

import pytest
import torch

from customgpt.config import GPTConfig
from customgpt.errors import ConfigError
from customgpt.generate import SamplingParams, generate_batch, generate_text, generate_tokens
from customgpt.model import GPT
from generate.common import GREEDY, prompt_of, randomize, tokens

# --------------------------------------------------------------------------- batches


LENGTHS = [3, 9, 17, 30]


@pytest.mark.parametrize(
    "params",
    [GREEDY.replace(max_new_tokens=20), GREEDY.replace(max_new_tokens=20, repetition_penalty=1.5, frequency_penalty=0.3)],
    ids=["greedy", "greedy-penalties"],
)
def test_batched_greedy_equals_unbatched(model, params):
    prompts = [prompt_of(n, seed=n) for n in LENGTHS]
    alone = [tokens(generate_tokens(model, p, params)) for p in prompts]
    batched = generate_batch(model, prompts, params)
    assert [r.token_ids for r in batched] == alone
    assert [r.prompt_tokens for r in batched] == LENGTHS
    # Row 30 crosses the window after 2 tokens; row 3 never does.
    assert [r.context_cropped for r in batched] == [False, False, True, True]
    no_cache = generate_batch(model, prompts, params, use_cache=False)
    assert [r.token_ids for r in no_cache] == alone


def test_batch_rows_stop_independently(model):
    prompts = [prompt_of(n, seed=n) for n in LENGTHS]
    free = [tokens(generate_tokens(model, p, GREEDY.replace(max_new_tokens=20))) for p in prompts]
    eot = free[1][4]
    params = GREEDY.replace(max_new_tokens=20, stop_at_eot=True)
    alone = [tokens(generate_tokens(model, p, params, eot_id=eot)) for p in prompts]
    batched = generate_batch(model, prompts, params, eot_id=eot)
    for row, want in zip(batched, alone):
        stopped = bool(want) and want[-1] == eot
        assert row.token_ids == (want[:-1] if stopped else want)
        assert row.finish_reason == ("eot" if stopped else "length")
    assert batched[1].finish_reason == "eot"


def test_batch_with_text_and_stop_strings(text_model, tokenizer):
    params = SamplingParams(temperature=0, max_new_tokens=15, stop_at_eot=False)
    texts = ["Hello", "The quick brown fox"]
    alone = [generate_text(text_model, tokenizer, t, params) for t in texts]
    stop = alone[0].text[4:7]
    batched = generate_batch(text_model, texts, params.replace(stop=(stop,)), tokenizer=tokenizer)
    assert batched[0].text == alone[0].text[: alone[0].text.find(stop)] and batched[0].finish_reason == "stop"
    want1 = alone[1].text.split(stop)[0]
    assert batched[1].text == want1
    with pytest.raises(ConfigError, match="need a tokenizer"):
        generate_batch(text_model, texts, params)


def test_batch_never_samples_ids_past_the_tokenizer_vocabulary(tokenizer):
    model = randomize(GPT(GPTConfig(vocab_size=50304, context_length=32, n_embd=16, n_layer=1, n_head=2,
                                    tie_embeddings=False)), 3).eval()
    with torch.no_grad():
        model.lm_head.weight[50257:] = model.lm_head.weight[:47] * 40
    params = SamplingParams(temperature=0, max_new_tokens=8, stop_at_eot=False)
    results = generate_batch(model, ["Hi", "A longer prompt here"], params, tokenizer=tokenizer)
    assert all(r.completion_tokens == 8 and max(r.token_ids) < 50257 for r in results)
    ids = [tokenizer.encode("Hi"), tokenizer.encode("Hello there")]
    by_ids = generate_batch(model, ids, params.replace(temperature=1.5, seed=2), vocab_size=tokenizer.vocab_size)
    assert all(max(r.token_ids) < 50257 for r in by_ids)


def test_batch_text_prompts_are_plain_text(text_model, tokenizer):
    params = SamplingParams(temperature=0, max_new_tokens=3, stop_at_eot=False)
    texts = ["what is <|endoftext|> in GPT-2?", "<|endoftext|>"]
    batched = generate_batch(text_model, texts, params, tokenizer=tokenizer)
    assert [r.prompt_tokens for r in batched] == [len(tokenizer.encode(t, allowed_special="none")) for t in texts]
    alone = [generate_text(text_model, tokenizer, t, params).token_ids for t in texts]
    assert [r.token_ids for r in batched] == alone
