"""The HTTP API through the official ``openai`` client (and httpx for raw shapes), against a
real uvicorn server with a tiny random model."""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest
import torch

from customgpt.generate import SamplingParams, generate_text
from customgpt.prompts import get_prompt_style

from .conftest import CTX, MODEL_NAME, start_server

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def reference(server, ids, max_tokens, stop=()):
    """What the generation API gives alone, greedy, on an identical model."""
    params = SamplingParams(temperature=0, max_new_tokens=max_tokens, stop=tuple(stop))
    return generate_text(server.ref_model, server.tokenizer, ids, params)


def sse_chunks(response: httpx.Response) -> list:
    """The JSON bodies of a server-sent event stream; asserts it ends with [DONE]."""
    datas = [line[len("data: "):] for line in response.iter_lines() if line.startswith("data: ")]
    assert datas and datas[-1] == "[DONE]"
    return [json.loads(d) for d in datas[:-1]]


def post(server, path, body, **kwargs):
    return httpx.post(f"{server.url}{path}", json=body, timeout=60, **kwargs)


def assert_error(response, status, param=None, code=None):
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    if param is not None:
        assert error["param"] == param
    if code is not None:
        assert error["code"] == code
    return error


# --------------------------------------------------------------------------- info routes


def test_models_and_health(served):
    client = served.client()
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL_NAME]
    assert client.models.retrieve(MODEL_NAME).id == MODEL_NAME
    health = httpx.get(f"{served.url}/health").json()
    assert health["status"] == "ok" and health["model"] == MODEL_NAME
    assert httpx.get(f"{served.url}/docs").status_code == 200


# --------------------------------------------------------------------------- completions


def test_completion_greedy_equals_generate_and_usage_adds_up(served):
    prompt = "The history of the city"
    ids = served.tokenizer.encode(prompt, allowed_special="none")
    out = served.client().completions.create(model=MODEL_NAME, prompt=prompt, max_tokens=20, temperature=0)
    ref = reference(served, ids, 20)
    choice = out.choices[0]
    assert choice.text == ref.text
    assert choice.finish_reason == ("length" if ref.finish_reason == "length" else "stop")
    assert out.usage.prompt_tokens == len(ids)
    assert out.usage.completion_tokens == ref.completion_tokens
    assert out.usage.total_tokens == out.usage.prompt_tokens + out.usage.completion_tokens
    assert out.id.startswith("cmpl-") and out.model == MODEL_NAME


def test_completion_stream_equals_non_stream(served):
    client = served.client()
    kwargs = dict(model=MODEL_NAME, prompt="Once upon a time", max_tokens=25, temperature=0)
    whole = client.completions.create(**kwargs)
    chunks = list(client.completions.create(**kwargs, stream=True, stream_options={"include_usage": True}))
    assert len({c.id for c in chunks}) == 1
    assert sum(1 for c in chunks for ch in c.choices if ch.finish_reason is not None) == 1
    text = "".join(ch.text for c in chunks for ch in c.choices)
    assert text == whole.choices[0].text
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert last.usage.completion_tokens == whole.usage.completion_tokens
    assert last.usage.total_tokens == last.usage.prompt_tokens + last.usage.completion_tokens
    assert all(c.usage is None for c in chunks[:-1])
    finish = [ch.finish_reason for c in chunks for ch in c.choices if ch.finish_reason]
    assert finish == [whole.choices[0].finish_reason]


def test_completion_raw_stream_shape(served):
    with httpx.stream("POST", f"{served.url}/v1/completions", timeout=60, json={
            "model": MODEL_NAME, "prompt": "abc", "max_tokens": 5, "temperature": 0, "stream": True}) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        chunks = sse_chunks(r)
    assert all(c["object"] == "text_completion" for c in chunks)
    assert [c["choices"][0]["finish_reason"] for c in chunks].count(None) == len(chunks) - 1


def test_echo_logprobs_equal_log_softmax(served):
    ids = [464, 3290, 318, 257, 1332, 286, 262, 6801, 13, 50256, 40]
    out = served.client().completions.create(model=MODEL_NAME, prompt=ids, max_tokens=0, echo=True,
                                             logprobs=3, temperature=0)
    lp = out.choices[0].logprobs
    assert out.usage.completion_tokens == 0
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    assert len(lp.token_logprobs) == len(ids)
    with torch.no_grad():
        expected = torch.log_softmax(served.ref_model(torch.tensor([ids])).float(), dim=-1)[0]  # (T, V)
    for t in range(1, len(ids)):
        assert abs(lp.token_logprobs[t] - expected[t - 1, ids[t]].item()) <= 1e-5
        top = sorted(lp.top_logprobs[t].values(), reverse=True)
        want = torch.topk(expected[t - 1], 3).values.tolist()
        assert len(top) == 3 and max(abs(a - b) for a, b in zip(top, want)) <= 1e-5
    assert out.choices[0].text == served.tokenizer.decode(ids)


def test_lm_eval_loglikelihood_shape(served):
    """lm-evaluation-harness's local-completions: token-id prompts in a list, echo, logprobs 1,
    max_tokens 1, temperature 0; it reads token_logprobs[ctxlen:-1] and compares each with
    the top alternative to decide greediness."""
    prompts = [[40, 588, 262, 3797], [464, 2068, 7586, 21831, 18045, 625]]
    r = post(served, "/v1/completions", {"model": MODEL_NAME, "prompt": prompts, "echo": True, "logprobs": 1,
                                         "max_tokens": 1, "temperature": 0, "seed": 1234})
    assert r.status_code == 200, r.text
    choices = sorted(r.json()["choices"], key=lambda c: c["index"])
    assert [c["index"] for c in choices] == [0, 1]
    with torch.no_grad():
        for ids, choice in zip(prompts, choices):
            logprobs = choice["logprobs"]
            assert len(logprobs["token_logprobs"]) == len(ids) + 1
            expected = torch.log_softmax(served.ref_model(torch.tensor([ids])).float(), dim=-1)[0]
            got = logprobs["token_logprobs"][1:-1]
            want = [expected[t - 1, ids[t]].item() for t in range(1, len(ids))]
            assert max(abs(a - b) for a, b in zip(got, want)) <= 1e-5
            # the generated (greedy) token is its own top alternative
            assert logprobs["token_logprobs"][-1] == max(logprobs["top_logprobs"][-1].values())


def test_stop_string_ends_the_text(served):
    client = served.client()
    full = client.completions.create(model=MODEL_NAME, prompt="Hello", max_tokens=30, temperature=0)
    text = full.choices[0].text
    stop = text[len(text) // 2: len(text) // 2 + 3]
    assert stop.strip()
    out = client.completions.create(model=MODEL_NAME, prompt="Hello", max_tokens=30, temperature=0, stop=[stop])
    assert out.choices[0].text == text[: text.index(stop)]
    assert out.choices[0].finish_reason == "stop"


def test_seeded_sampling_is_reproducible(served):
    client = served.client()
    kwargs = dict(model=MODEL_NAME, prompt="Dear diary", max_tokens=15, temperature=1.0, top_p=0.9, seed=7,
                  presence_penalty=0.5, frequency_penalty=0.5)
    a = client.completions.create(**kwargs).choices[0].text
    b = client.completions.create(**kwargs).choices[0].text
    assert a == b


def test_max_tokens_capped_by_server_and_window(served):
    client = served.client()
    out = client.completions.create(model=MODEL_NAME, prompt=[11] * 4, max_tokens=10**12, temperature=0)
    assert out.usage.completion_tokens <= served.config.max_tokens
    long_prompt = list(range(100, 100 + CTX - 5))
    out = client.completions.create(model=MODEL_NAME, prompt=long_prompt, max_tokens=40, temperature=0)
    ref = reference(served, long_prompt, 6)
    assert out.usage.completion_tokens <= CTX + 1 - len(long_prompt)
    assert out.choices[0].text == ref.text  # the whole window: nothing cropped on the way
    if ref.finish_reason == "length":
        assert out.choices[0].finish_reason == "length"


# --------------------------------------------------------------------------- chat


def test_chat_greedy_equals_generate_stream_and_not(served):
    client = served.client()
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour."}]
    style = get_prompt_style("plain")
    ids = served.tokenizer.encode(style.format_chat(messages), allowed_special="none")
    ref = reference(served, ids, 24, style.stop_strings)
    out = client.chat.completions.create(model=MODEL_NAME, messages=messages, max_tokens=24, temperature=0)
    assert out.choices[0].message.role == "assistant"
    assert out.choices[0].message.content == ref.text
    assert out.usage.prompt_tokens == len(ids)
    assert out.usage.total_tokens == out.usage.prompt_tokens + out.usage.completion_tokens
    chunks = list(client.chat.completions.create(model=MODEL_NAME, messages=messages, max_tokens=24,
                                                 temperature=0, stream=True,
                                                 stream_options={"include_usage": True}))
    assert len({c.id for c in chunks}) == 1 and chunks[0].id.startswith("chatcmpl-")
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(ch.delta.role is None for c in chunks[1:] for ch in c.choices)
    assert sum(1 for c in chunks for ch in c.choices if ch.finish_reason) == 1
    assert "".join(ch.delta.content or "" for c in chunks for ch in c.choices) == ref.text
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == out.usage.completion_tokens


def test_chat_user_text_is_plain_text(served):
    """``<|endoftext|>`` typed by a user is text, never the end-of-text id."""
    messages = [{"role": "user", "content": "what is <|endoftext|> in GPT-2?"}]
    out = served.client().chat.completions.create(model=MODEL_NAME, messages=messages, max_tokens=1,
                                                  temperature=0)
    text = get_prompt_style("plain").format_chat(messages)
    plain = served.tokenizer.encode(text, allowed_special="none")
    assert served.tokenizer.eot_id not in plain
    assert out.usage.prompt_tokens == len(plain)
    assert len(served.tokenizer.encode(text)) != len(plain)  # the special reading would differ
    # the same for a completion prompt, the marker first
    prompt = "<|endoftext|>Hello"
    out = served.client().completions.create(model=MODEL_NAME, prompt=prompt, max_tokens=1, temperature=0)
    assert out.usage.prompt_tokens == len(served.tokenizer.encode(prompt, allowed_special="none")) > 2


def test_chat_logprobs(served):
    out = served.client().chat.completions.create(
        model=MODEL_NAME, messages=[{"role": "user", "content": "Hi"}], max_tokens=5, temperature=0,
        logprobs=True, top_logprobs=2)
    content = out.choices[0].logprobs.content
    assert content and all(len(item.top_logprobs) == 2 for item in content)
    assert all(item.logprob == pytest.approx(item.top_logprobs[0].logprob) for item in content)  # greedy


# --------------------------------------------------------------------------- embeddings


def test_embeddings_are_mean_pooled_hidden_states(served):
    client = served.client()
    texts = ["a short one", "and a somewhat longer sentence than that"]
    floats = client.embeddings.create(model=MODEL_NAME, input=texts, encoding_format="float")
    packed = client.embeddings.create(model=MODEL_NAME, input=texts)  # the client asks for base64
    for text, a, b in zip(texts, floats.data, packed.data):
        ids = served.tokenizer.encode(text, allowed_special="none")
        with torch.no_grad():
            want = served.ref_model.forward_hidden(torch.tensor([ids]))[0].mean(0)
        assert torch.allclose(torch.tensor(a.embedding), want, atol=1e-5)
        assert torch.allclose(torch.tensor(b.embedding), want, atol=1e-5)
    assert floats.usage.prompt_tokens == sum(len(served.tokenizer.encode(t)) for t in texts)


# --------------------------------------------------------------------------- errors


def test_error_n_greater_than_one(served):
    r = post(served, "/v1/completions", {"model": MODEL_NAME, "prompt": "x", "n": 2})
    assert "n: " in assert_error(r, 400, param="n")["message"]


def test_error_malformed_json(served):
    r = httpx.post(f"{served.url}/v1/chat/completions", content=b'{"model": "tiny", "messages": [',
                   headers={"content-type": "application/json"})
    assert_error(r, 400, code="invalid_json")


def test_error_bad_parameter_values(served):
    assert_error(post(served, "/v1/completions", {"model": MODEL_NAME, "prompt": "x", "temperature": -1}),
                 400, param="temperature")
    assert_error(post(served, "/v1/completions", {"model": MODEL_NAME, "prompt": "x", "top_p": 0}),
                 400, param="top_p")
    assert_error(post(served, "/v1/completions", {"model": MODEL_NAME, "prompt": "x", "max_tokens": -3}),
                 400, param="max_tokens")
    assert_error(post(served, "/v1/completions", {"model": MODEL_NAME}), 400, param="prompt")
    assert_error(post(served, "/v1/chat/completions", {"model": MODEL_NAME, "messages": []}), 400, param="messages")
    assert_error(post(served, "/v1/completions", {"model": MODEL_NAME, "prompt": [1, 2, 10**6]}), 400,
                 param="prompt")
    assert_error(post(served, "/v1/completions", {"model": MODEL_NAME, "prompt": "x", "stop": [""]}), 400,
                 param="stop")
    r = post(served, "/v1/chat/completions", {"model": MODEL_NAME, "messages": [{"role": "assistant", "content": "x"}]})
    assert_error(r, 400, param="messages")
    for value in (b"NaN", b"Infinity"):  # Python's JSON reader accepts these literals
        r = httpx.post(f"{served.url}/v1/completions", headers={"content-type": "application/json"},
                       content=b'{"model": "tiny", "prompt": "x", "temperature": ' + value + b"}")
        assert_error(r, 400, param="temperature")
    assert_error(post(served, "/v1/completions", {"model": MODEL_NAME, "prompt": "x", "seed": -1}), 400,
                 param="seed")


def test_error_lone_surrogate_and_invalid_utf8(served):
    body = b'{"model": "tiny", "prompt": "caf\\ud800 ok", "max_tokens": 1}'
    r = httpx.post(f"{served.url}/v1/completions", content=body, headers={"content-type": "application/json"})
    error = assert_error(r, 400, param="prompt")
    assert "character 3" in error["message"]
    body = b'{"model": "tiny", "messages": [{"role": "user", "content": "x\\udfff"}]}'
    r = httpx.post(f"{served.url}/v1/chat/completions", content=body, headers={"content-type": "application/json"})
    assert_error(r, 400, param="messages[0].content")
    r = httpx.post(f"{served.url}/v1/completions", content=b'{"model": "tiny", "prompt": "caf\xe9"}',
                   headers={"content-type": "application/json"})
    assert_error(r, 400)


def test_error_openai_client_raises_bad_request(served):
    with pytest.raises(Exception) as info:
        served.client().completions.create(model=MODEL_NAME, prompt="x", n=3)
    assert getattr(info.value, "status_code", None) == 400


def test_error_prompt_longer_than_window(served):
    r = post(served, "/v1/completions", {"model": MODEL_NAME, "prompt": [5] * (CTX + 1), "max_tokens": 1})
    error = assert_error(r, 400, param="prompt", code="context_length_exceeded")
    assert error["message"].startswith(f"this model's maximum context length is {CTX} tokens, but the prompt "
                                       f"came to {CTX + 1} tokens")


def test_error_unknown_model_and_route(served):
    assert_error(post(served, "/v1/completions", {"model": "gpt-4", "prompt": "x"}), 404, param="model",
                 code="model_not_found")
    assert_error(httpx.get(f"{served.url}/v1/models/gpt-4"), 404, code="model_not_found")
    assert_error(httpx.get(f"{served.url}/v1/nothing-here"), 404)
    assert_error(post(served, "/v1/classify", {"input": "x"}), 404, code="model_not_found")


def test_error_api_key():
    server = start_server(api_key="s3cret")
    try:
        body = {"model": MODEL_NAME, "prompt": "x", "max_tokens": 2}
        assert_error(post(server, "/v1/completions", body), 401, code="invalid_api_key")
        assert_error(post(server, "/v1/completions", body, headers={"Authorization": "Bearer wrong"}), 401,
                     code="invalid_api_key")
        # malformed JSON without a key is still a 401: the key is checked first
        r = httpx.post(f"{server.url}/v1/completions", content=b"{", headers={"content-type": "application/json"})
        assert_error(r, 401)
        assert post(server, "/v1/completions", body, headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert server.client(api_key="s3cret").models.list().data[0].id == MODEL_NAME
        assert httpx.get(f"{server.url}/health").status_code == 200
    finally:
        server.stop()


def test_crop_prompt_flag_keeps_the_prompt_end():
    server = start_server(crop_prompt=True)
    try:
        ids = list(range(1000, 1000 + CTX + 20))
        out = server.client().completions.create(model=MODEL_NAME, prompt=ids, max_tokens=8, temperature=0)
        kept = ids[-(CTX + 1 - 8):]
        assert out.usage.prompt_tokens == len(kept)
        assert out.choices[0].text == reference(server, kept, 8).text
    finally:
        server.stop()


def test_queue_full_is_429_and_disconnect_frees_the_row():
    server = start_server(max_batch=1, max_queue=0, max_tokens=60)
    try:
        gate = threading.Event()
        blocked = server.engine.call(gate.wait)  # the engine thread waits: nothing is admitted
        body = {"model": MODEL_NAME, "prompt": "x", "max_tokens": 60, "temperature": 0}
        first: dict = {}
        worker = threading.Thread(target=lambda: first.update(r=post(server, "/v1/completions", body)))
        worker.start()
        deadline = time.monotonic() + 30
        while server.engine.waiting < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert_error(post(server, "/v1/completions", body), 429, code="queue_full")
        gate.set()
        blocked.result(timeout=30)
        worker.join(60)
        assert first["r"].status_code == 200

        # A streaming client that leaves early frees its row: slow each step down so the
        # request is still running when the client goes.
        hook = server.model.transformer.h[0].register_forward_pre_hook(lambda module, args: time.sleep(0.05))
        steps_before = server.engine.steps
        with httpx.stream("POST", f"{server.url}/v1/completions", timeout=60,
                          json={**body, "stream": True, "stop": None}) as r:
            for line in r.iter_lines():
                if line.startswith("data: "):
                    break
        deadline = time.monotonic() + 30
        while (server.engine.active or server.engine.waiting) and time.monotonic() < deadline:
            time.sleep(0.02)
        hook.remove()
        assert server.engine.active == 0
        steps = server.engine.steps - steps_before
        # It did not run to its 60 tokens (0 when the disconnect is seen before the first
        # decode step: the prefill gave the first token).
        assert steps < 30
        assert httpx.get(f"{server.url}/health").json()["status"] == "ok"
    finally:
        server.stop()


def test_classify_one_text_and_a_list():
    from helpers import tiny_model

    from customgpt.classifier import GPTClassifier, predict_texts
    from customgpt.tokenizer import get_tokenizer

    tokenizer = get_tokenizer()
    torch.manual_seed(0)
    classifier = GPTClassifier(tiny_model(seed=1, vocab_size=tokenizer.vocab_size, context_length=32), 2).eval()
    with torch.no_grad():
        classifier.score.weight.normal_(0, 1.0)
    info = {"labels": ["ham", "spam"], "name": "spam-clf"}
    encode = lambda t: tokenizer.encode(t, allowed_special="none")  # noqa: E731
    texts = ["WIN a free prize now <|endoftext|>", "see you at lunch"]
    want = predict_texts(classifier, texts, encode, max_length=32)
    server = start_server(classifier=classifier, classifier_info=info)
    try:
        r = post(server, "/v1/classify", {"input": texts})
        assert r.status_code == 200, r.text
        data = r.json()["data"]
        assert [d["index"] for d in data] == [0, 1] and r.json()["model"] == "spam-clf"
        for d, p in zip(data, want.tolist()):
            assert d["label"] == ["ham", "spam"][max(range(2), key=p.__getitem__)]
            assert d["probabilities"]["ham"] == pytest.approx(p[0], abs=1e-6)
            assert d["probabilities"]["spam"] == pytest.approx(p[1], abs=1e-6)
        one = post(server, "/v1/classify", {"input": "see you at lunch", "model": "spam-clf"}).json()["data"]
        assert len(one) == 1 and one[0]["probabilities"]["spam"] == pytest.approx(want[1, 1].item(), abs=1e-6)
        assert_error(post(server, "/v1/classify", {"input": []}), 400, param="input")
        assert_error(post(server, "/v1/classify", {"input": "x", "model": "other"}), 404, code="model_not_found")
    finally:
        server.stop()


def test_non_streaming_client_that_leaves_frees_its_row():
    server = start_server(max_batch=1, max_tokens=60)
    try:
        hook = server.model.transformer.h[0].register_forward_pre_hook(lambda module, args: time.sleep(0.05))
        steps_before = server.engine.steps
        body = {"model": MODEL_NAME, "prompt": "x", "max_tokens": 60, "temperature": 0}
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{server.url}/v1/completions", json=body, timeout=0.5)
        deadline = time.monotonic() + 30
        while (server.engine.active or server.engine.waiting) and time.monotonic() < deadline:
            time.sleep(0.02)
        hook.remove()
        assert server.engine.active == 0
        assert 0 < server.engine.steps - steps_before < 50  # it did not run to its 60 tokens
    finally:
        server.stop()
