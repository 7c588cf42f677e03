"""Sampling (:mod:`customgpt.generate.sampling`): the logits processors one by one and in
their documented order, seeds, and the validation of :class:`SamplingParams`."""

from __future__ import annotations

import pytest
import torch

from customgpt.errors import ConfigError
from customgpt.generate import (
    MAX_SEED,
    SamplingParams,
    generate_text,
    generate_tokens,
    process_logits,
    sample,
)
from generate.common import GREEDY, prompt_of, tokens

# --------------------------------------------------------------------------- logit processors


def test_top_k_never_leaves_the_k_best():
    logits = torch.randn(1, 50, generator=torch.Generator().manual_seed(0))
    best = set(logits[0].topk(5).indices.tolist())
    params = SamplingParams(top_k=5, temperature=1.5)
    seen = {int(sample(logits, params, torch.Generator().manual_seed(s))[0]) for s in range(300)}
    assert seen == best  # never outside, and every one of the k is reachable
    kept = torch.isfinite(process_logits(logits, SamplingParams(top_k=5)))[0].nonzero().flatten().tolist()
    assert set(kept) == best


@pytest.mark.parametrize(
    "p, kept",
    [(0.3, {2}), (0.45, {2, 0}), (0.69, {2, 0}), (0.71, {2, 0, 1}), (0.92, {2, 0, 1, 3}), (1.0, {0, 1, 2, 3, 4})],
)
def test_top_p_keeps_the_smallest_set_reaching_p(p, kept):
    probs = torch.tensor([[0.30, 0.15, 0.40, 0.10, 0.05]])  # most likely first: 2, 0, 1, 3, 4
    out = process_logits(probs.log(), SamplingParams(top_p=p))
    assert set(torch.isfinite(out)[0].nonzero().flatten().tolist()) == kept
    # Kept logits are untouched (renormalisation happens in the softmax).
    assert torch.equal(out[torch.isfinite(out)], probs.log()[torch.isfinite(out)])


def test_top_p_works_row_by_row():
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.2, 0.7]])
    out = process_logits(probs.log(), SamplingParams(top_p=0.8))
    assert torch.isfinite(out).tolist() == [[True, True, False], [False, True, True]]


def test_min_p_drops_tokens_below_a_fraction_of_the_top():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    assert torch.isfinite(process_logits(probs.log(), SamplingParams(min_p=0.2))).tolist() == [[True, True, True, False]]
    assert torch.isfinite(process_logits(probs.log(), SamplingParams(min_p=0.5))).tolist() == [[True, True, False, False]]
    assert torch.equal(process_logits(probs.log(), SamplingParams(min_p=0.0)), probs.log())


def test_repetition_penalty_lowers_seen_tokens_whatever_the_sign():
    logits = torch.tensor([[2.0, -1.0, 0.5, 0.1]])
    seen = torch.tensor([[True, True, False, False]])
    out = process_logits(logits, SamplingParams(repetition_penalty=2.0), seen=seen)
    assert torch.equal(out, torch.tensor([[1.0, -2.0, 0.5, 0.1]]))
    before, after = logits.softmax(-1)[0], out.softmax(-1)[0]
    assert after[0] < before[0] and after[1] < before[1]  # positive and negative logits alike
    assert after[2] > before[2] and after[3] > before[3]


def test_presence_and_frequency_penalties_follow_openai():
    logits = torch.tensor([[1.0, 1.0, 1.0]])
    counts = torch.tensor([[0.0, 1.0, 3.0]])
    out = process_logits(logits, SamplingParams(presence_penalty=0.5, frequency_penalty=0.25), output_counts=counts)
    assert out.tolist() == [[1.0, 1.0 - 0.5 - 0.25, 1.0 - 0.5 - 0.75]]


def test_processors_run_in_the_documented_order():
    logits = torch.tensor([[1.0, 0.0]])
    counts = torch.tensor([[1.0, 0.0]])
    # presence (0.5) before temperature (2): (1 - 0.5) / 2 = 0.25, not 1/2 - 0.5 = 0.
    out = process_logits(logits, SamplingParams(temperature=2.0, presence_penalty=0.5), output_counts=counts)
    assert out.tolist() == [[0.25, 0.0]]
    # repetition penalty before presence: (1 / 2) - 0.5 = 0, not (1 - 0.5) / 2 = 0.25.
    out = process_logits(
        logits, SamplingParams(temperature=0, repetition_penalty=2.0, presence_penalty=0.5),
        seen=counts > 0, output_counts=counts,
    )
    assert out.tolist() == [[0.0, 0.0]]
    # greedy takes the argmax of the penalised logits
    assert sample(logits, SamplingParams(temperature=0, presence_penalty=2.0), output_counts=counts).tolist() == [1]


def test_frequency_penalty_stops_repeats_in_generation(model):
    prompt = prompt_of(5)
    plain = tokens(generate_tokens(model, prompt, GREEDY.replace(max_new_tokens=30)))
    assert len(set(plain)) < len(plain)  # without a penalty this model repeats itself
    penalised = tokens(generate_tokens(model, prompt, GREEDY.replace(max_new_tokens=30, frequency_penalty=1e4)))
    assert len(set(penalised)) == len(penalised)


def test_repetition_penalty_in_generation_avoids_prompt_tokens(model):
    prompt = prompt_of(10, seed=9)
    out = tokens(generate_tokens(model, prompt, GREEDY.replace(max_new_tokens=20, repetition_penalty=1e6)))
    plain = tokens(generate_tokens(model, prompt, GREEDY.replace(max_new_tokens=20)))
    # With a huge penalty a seen token only wins when every unseen logit is below zero as well.
    assert sum(t in prompt for t in out) < sum(t in prompt for t in plain)
    assert len(set(out)) > len(set(plain))


# --------------------------------------------------------------------------- seeds


def test_same_seed_same_text_different_seed_different_text(text_model, tokenizer):
    params = SamplingParams(max_new_tokens=20, seed=123, stop_at_eot=False)
    a = generate_text(text_model, tokenizer, "Hello", params)
    b = generate_text(text_model, tokenizer, "Hello", params)
    c = generate_text(text_model, tokenizer, "Hello", params.replace(seed=124))
    assert a.token_ids == b.token_ids and a.text == b.text
    assert a.token_ids != c.token_ids


def test_sampling_does_not_touch_the_global_rng(model):
    torch.manual_seed(0)
    before = torch.rand(1)
    torch.manual_seed(0)
    list(generate_tokens(model, prompt_of(3), SamplingParams(max_new_tokens=5, seed=1)))
    assert torch.equal(torch.rand(1), before)


# --------------------------------------------------------------------------- parameters


@pytest.mark.parametrize(
    "field, value, match",
    [
        ("temperature", -0.1, "temperature must be a number >= 0"),
        ("temperature", float("nan"), "temperature must be a number >= 0"),
        ("top_p", 0.0, r"top_p must be a number in \(0, 1\]"),
        ("top_p", 1.5, r"top_p must be a number in \(0, 1\]"),
        ("top_k", -1, "top_k must be an integer >= 0"),
        ("top_k", 2.5, "top_k must be an integer >= 0"),
        ("min_p", 1.0, r"min_p must be a number in \[0, 1\)"),
        ("min_p", -0.1, r"min_p must be a number in \[0, 1\)"),
        ("repetition_penalty", 0.0, "repetition_penalty must be a number > 0"),
        ("presence_penalty", float("inf"), "presence_penalty must be a finite number"),
        ("frequency_penalty", "1", "frequency_penalty must be a finite number"),
        ("max_new_tokens", -1, "max_new_tokens must be an integer >= 0"),
        ("max_new_tokens", True, "max_new_tokens must be an integer >= 0"),
        ("stop", [""], "every stop string must be a non-empty string"),
        ("stop", 5, "stop must be a string or a list of strings"),
        ("stop_at_eot", "yes", "stop_at_eot must be true or false"),
        ("seed", -3, r"seed must be an integer in \[0, 18446744073709551615\]"),
        ("seed", 1180591620717411303424, r"seed must be an integer in \[0, 18446744073709551615\] \(a 64-bit seed"),
        ("seed", 2**64, r"seed must be an integer in \[0, 18446744073709551615\]"),
    ],
)
def test_sampling_params_reject_bad_values(field, value, match):
    with pytest.raises(ConfigError, match=match):
        SamplingParams(**{field: value})


def test_sampling_params_normalise_stop():
    assert SamplingParams(stop="###").stop == ("###",)
    assert SamplingParams(stop=["a", "b"]).stop == ("a", "b")
    assert SamplingParams(temperature=0).greedy and not SamplingParams().greedy




def test_the_largest_seed_is_one_torch_accepts(model):
    """Seeds up to 2**64 - 1 are what torch.Generator.manual_seed takes: the bound is exact."""
    params = SamplingParams(max_new_tokens=4, seed=MAX_SEED, stop_at_eot=False)
    assert tokens(generate_tokens(model, prompt_of(3), params)) == tokens(generate_tokens(model, prompt_of(3), params))
    with pytest.raises((RuntimeError, ValueError)):  # one more overflows torch
        torch.Generator().manual_seed(MAX_SEED + 1)
