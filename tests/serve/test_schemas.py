"""The API's request bodies on their own (no server): defaults, ranges, accepted shapes,
unknown fields ignored, unsupported fields kept so the app can refuse them by name."""

from __future__ import annotations

import math

import pytest
from pydantic import ValidationError

from customgpt.serve.schemas import (
    ChatCompletionRequest,
    ClassifyRequest,
    CompletionRequest,
    EmbeddingRequest,
)

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def _first_loc(exc: pytest.ExceptionInfo[ValidationError]) -> tuple:
    return exc.value.errors()[0]["loc"]


def test_defaults_are_openai_s():
    req = ChatCompletionRequest.model_validate(CHAT)
    assert (req.temperature, req.top_p, req.n, req.stream, req.max_tokens, req.seed) == (1.0, 1.0, 1, False, None, None)
    assert req.stop is None and req.logprobs is False and req.stream_options is None
    assert (req.presence_penalty, req.frequency_penalty) == (0.0, 0.0)


def test_unknown_fields_are_ignored():
    req = ChatCompletionRequest.model_validate(
        {**CHAT, "user": "u-1", "metadata": {"k": "v"}, "messages": [{"role": "user", "content": "hi", "name": "x"}]})
    dumped = req.model_dump()
    assert "user" not in dumped and "metadata" not in dumped and "name" not in dumped["messages"][0]
    assert "store" not in CompletionRequest.model_validate({"model": "m", "prompt": "x", "store": True}).model_dump()


def test_unsupported_fields_are_refused_or_kept_for_the_app_to_refuse():
    """n > 1 and best_of > 1 are refused naming the field; logit_bias and tools parse, so the
    server answers 400 naming them (tests/serve/test_app.py) rather than silently giving one
    plain answer."""
    chat = ChatCompletionRequest.model_validate({**CHAT, "logit_bias": {"50256": -100}, "tools": [{}]})
    assert chat.logit_bias == {"50256": -100.0} and chat.tools == [{}]
    for schema, body, field in [(ChatCompletionRequest, {**CHAT, "n": 2}, "n"),
                                (CompletionRequest, {"model": "m", "prompt": "x", "n": 3}, "n"),
                                (CompletionRequest, {"model": "m", "prompt": "x", "best_of": 3}, "best_of")]:
        with pytest.raises(ValidationError) as info:
            schema.model_validate(body)
        assert _first_loc(info)[0] == field
    assert CompletionRequest.model_validate({"model": "m", "prompt": "x", "n": 1, "best_of": 1}).best_of == 1


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("temperature", 2.5), ("temperature", -0.1), ("temperature", math.nan), ("temperature", math.inf),
        ("top_p", 0.0), ("top_p", 1.5), ("max_tokens", -1), ("seed", -1), ("seed", 2**63),
        ("presence_penalty", 2.5), ("frequency_penalty", -3.0), ("top_logprobs", 21), ("max_completion_tokens", -1),
    ],
)
def test_out_of_range_values_are_refused_naming_the_field(field, value):
    with pytest.raises(ValidationError) as info:
        ChatCompletionRequest.model_validate({**CHAT, field: value})
    assert _first_loc(info) == (field,)


def test_edges_of_the_ranges_are_accepted():
    req = ChatCompletionRequest.model_validate(
        {**CHAT, "temperature": 0.0, "top_p": 1.0, "max_tokens": 0, "seed": 2**63 - 1, "top_logprobs": 20})
    assert req.temperature == 0.0 and req.seed == 2**63 - 1
    assert ChatCompletionRequest.model_validate({**CHAT, "temperature": 2.0}).temperature == 2.0


def test_chat_messages_are_required_non_empty_with_a_known_role():
    for body, loc in [({"model": "m"}, ("messages",)), ({"model": "m", "messages": []}, ("messages",)),
                      ({"model": "m", "messages": [{"role": "tool", "content": "x"}]}, ("messages", 0, "role"))]:
        with pytest.raises(ValidationError) as info:
            ChatCompletionRequest.model_validate(body)
        assert _first_loc(info) == loc
    parts = [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]
    req = ChatCompletionRequest.model_validate({"model": "m", "messages": [
        {"role": "developer", "content": "be brief"}, {"role": "user", "content": parts}, {"role": "assistant"}]})
    assert req.messages[1].content == parts and req.messages[2].content is None


@pytest.mark.parametrize("prompt", ["text", ["a", "b"], [1, 2, 3], [[1, 2], [3]]])
def test_completion_prompt_shapes(prompt):
    assert CompletionRequest.model_validate({"model": "m", "prompt": prompt}).prompt == prompt


def test_completion_refuses_a_missing_or_odd_prompt_and_too_many_logprobs():
    for body, loc in [({"model": "m"}, ("prompt",)), ({"model": "m", "prompt": "x", "logprobs": 21}, ("logprobs",)),
                      ({"prompt": "x"}, ("model",))]:
        with pytest.raises(ValidationError) as info:
            CompletionRequest.model_validate(body)
        assert _first_loc(info) == loc
    with pytest.raises(ValidationError):
        CompletionRequest.model_validate({"model": "m", "prompt": {"text": "x"}})
    assert CompletionRequest.model_validate({"model": "m", "prompt": "x", "logprobs": 0}).logprobs == 0


def test_stop_and_stream_options():
    req = CompletionRequest.model_validate(
        {"model": "m", "prompt": "x", "stop": ["\n", "END"], "stream": True, "stream_options": {"include_usage": True}})
    assert req.stop == ["\n", "END"] and req.stream and req.stream_options.include_usage
    assert CompletionRequest.model_validate({"model": "m", "prompt": "x", "stop": "\n"}).stop == "\n"


def test_embedding_and_classify_requests():
    emb = EmbeddingRequest.model_validate({"model": "m", "input": ["a", "b"]})
    assert emb.encoding_format == "float" and emb.dimensions is None
    assert EmbeddingRequest.model_validate({"model": "m", "input": "a", "encoding_format": "base64"}).input == "a"
    with pytest.raises(ValidationError) as info:
        EmbeddingRequest.model_validate({"model": "m", "input": "a", "encoding_format": "hex"})
    assert _first_loc(info) == ("encoding_format",)
    assert ClassifyRequest.model_validate({"input": "spam?"}).model is None
    assert ClassifyRequest.model_validate({"model": "c", "input": ["a", "b"]}).input == ["a", "b"]
    with pytest.raises(ValidationError):
        ClassifyRequest.model_validate({"model": "c"})
