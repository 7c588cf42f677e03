"""The batch engine: rows joining a running batch, the window, cancellation, the vocabulary
guard, and a load test through the HTTP server (32 concurrent mixed requests)."""

from __future__ import annotations

import copy
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import torch
from helpers import tiny_model

from customgpt.errors import CustomGPTError
from customgpt.generate import SamplingParams, generate_text
from customgpt.serve.engine import BatchEngine, FinishEvent, GenerationJob, TokenEvent
from customgpt.tokenizer import get_tokenizer

from .conftest import CTX, MODEL_NAME, start_server

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TOK = get_tokenizer()


def model_and_ref(ctx=64, **kw):
    model = tiny_model(vocab_size=kw.pop("vocab_size", TOK.vocab_size), context_length=ctx, **kw)
    return model, copy.deepcopy(model)


def greedy(max_tokens, **kw):
    return SamplingParams(temperature=0, max_new_tokens=max_tokens, **kw)


def wait(handle, timeout=60):
    assert handle.done.wait(timeout), "the engine did not finish the request"
    finish = handle.sync_events[-1]
    assert isinstance(finish, FinishEvent), finish
    ids = [e.token_id for e in handle.sync_events if isinstance(e, TokenEvent) and e.token_id >= 0]
    return ids, finish


def test_rows_joining_a_running_batch_compute_what_they_compute_alone():
    """Later, longer prompts join mid-run (the running rows shift right); rows reach the end
    of the window (all rows shift left); each greedy row equals its generation alone."""
    model, ref = model_and_ref()
    engine = BatchEngine(model, TOK, max_batch=4, max_queue=16).start()
    try:
        jobs = [([464, 3290], 60), ([11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24], 40),
                ([40], 64), (list(range(300, 340)), 25), ([5, 6, 7], 20), (list(range(500, 512)), 53)]
        handles = []
        for i, (ids, n) in enumerate(jobs):
            handles.append(engine.submit(GenerationJob(ids, greedy(n, stop_at_eot=False))))
            if i == 0:  # let the first row run alone for a while
                while engine.steps < 5:
                    time.sleep(0.005)
        for (ids, n), handle in zip(jobs, handles):
            got, finish = wait(handle)
            want = generate_text(ref, TOK, ids, greedy(n, stop_at_eot=False))
            assert got == want.token_ids
            assert finish.text == want.text and finish.completion_tokens == n
            assert finish.finish_reason == "length"
        assert engine.max_rows_seen > 1
    finally:
        engine.stop()


def test_sampled_rows_keep_their_own_generator():
    """A seeded row draws the same tokens in a batch as alone (its own generator)."""
    model, _ = model_and_ref()
    engine = BatchEngine(model, TOK, max_batch=8).start()
    try:
        params = SamplingParams(temperature=0.9, top_p=0.95, max_new_tokens=20, seed=3, stop_at_eot=False)
        alone, _ = wait(engine.submit(GenerationJob([1, 2, 3], params)))
        gate = threading.Event()
        engine.call(gate.wait)
        others = [engine.submit(GenerationJob([7] * k, params.replace(seed=k))) for k in range(1, 5)]
        mine = engine.submit(GenerationJob([1, 2, 3], params))
        gate.set()
        assert wait(mine)[0] == alone
        for h in others:
            wait(h)
    finally:
        engine.stop()


def test_cancelled_row_is_freed():
    model, _ = model_and_ref(ctx=256)
    engine = BatchEngine(model, TOK, max_batch=2).start()
    try:
        hook = model.transformer.h[0].register_forward_pre_hook(lambda m, a: time.sleep(0.01))
        handle = engine.submit(GenerationJob([1, 2], greedy(200, stop_at_eot=False)))
        while engine.steps < 3:
            time.sleep(0.005)
        handle.cancel()
        deadline = time.monotonic() + 30
        while engine.active and time.monotonic() < deadline:
            time.sleep(0.005)
        hook.remove()
        assert engine.active == 0 and engine.steps < 100
        ids, finish = wait(engine.submit(GenerationJob([1, 2], greedy(3))))  # still serves
        assert finish.completion_tokens >= 1 and len(ids) <= 3
    finally:
        engine.stop()


def test_ids_the_tokenizer_cannot_decode_are_never_sampled():
    """A vocabulary padded past the tokenizer's (50,304, as nanoGPT trains it), with weights
    that give the padded ids by far the highest logits: no row samples them."""
    model = tiny_model(vocab_size=50304, context_length=64)
    with torch.no_grad():  # every final hidden state becomes ln_f's bias b; padded rows = 10 b
        model.transformer.ln_f.weight.zero_()
        model.transformer.ln_f.bias.normal_(0.0, 1.0)
        model.lm_head.weight[TOK.vocab_size:] = 10 * model.transformer.ln_f.bias
        assert int(model(torch.tensor([[1, 2, 3]]))[0, -1].argmax()) >= TOK.vocab_size
    engine = BatchEngine(model, TOK, max_batch=4).start()
    try:
        handles = [engine.submit(GenerationJob([1, 2, 3], greedy(10))),
                   engine.submit(GenerationJob([4, 5], SamplingParams(max_new_tokens=10, seed=1)))]
        for h in handles:
            ids, finish = wait(h)
            assert ids and all(i < TOK.vocab_size for i in ids)
    finally:
        engine.stop()


def test_model_vocabulary_smaller_than_the_tokenizer_is_refused():
    with pytest.raises(CustomGPTError, match="smaller than the tokenizer"):
        BatchEngine(tiny_model(vocab_size=100), TOK)


# --------------------------------------------------------------------------- load test


def test_load_32_concurrent_mixed_requests():
    """32 requests at once (loopback), half streaming, prompts of 1..40 tokens and 1..40 new
    tokens, greedy: each complete and well-formed and equal to its generation alone; a few
    seeded sampled ones equal the same request made alone; /health answers afterwards."""
    server = start_server(max_batch=8, max_queue=64, max_tokens=40)
    try:
        requests = []
        for i in range(32):
            n_prompt = 1 + (i * 7) % 40
            ids = [(17 * i + 31 * t) % 50000 for t in range(n_prompt)]
            body = {"model": MODEL_NAME, "prompt": ids, "max_tokens": 1 + (i * 11) % 40, "temperature": 0}
            if i % 8 == 7:
                body.update(temperature=0.8, seed=i)
            requests.append((body, i % 2 == 0))

        def run(item):
            body, stream = item
            if not stream:
                r = httpx.post(f"{server.url}/v1/completions", json=body, timeout=120)
                assert r.status_code == 200, r.text
                out = r.json()
                (choice,) = out["choices"]
                return choice["text"], choice["finish_reason"], out["usage"]
            with httpx.stream("POST", f"{server.url}/v1/completions", timeout=120,
                              json={**body, "stream": True, "stream_options": {"include_usage": True}}) as r:
                assert r.status_code == 200
                datas = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
            assert datas[-1] == "[DONE]"
            chunks = [json.loads(d) for d in datas[:-1]]
            assert len({c["id"] for c in chunks}) == 1
            finishes = [ch["finish_reason"] for c in chunks for ch in c["choices"] if ch["finish_reason"]]
            assert len(finishes) == 1
            assert chunks[-1]["choices"] == []
            return "".join(ch["text"] for c in chunks for ch in c["choices"]), finishes[0], chunks[-1]["usage"]

        gate = threading.Event()
        blocked = server.engine.call(gate.wait)  # hold the engine until all 32 are queued
        with ThreadPoolExecutor(32) as pool:
            futures = [pool.submit(run, item) for item in requests]
            deadline = time.monotonic() + 60
            while server.engine.waiting < 32 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert server.engine.waiting == 32
            gate.set()
            results = [f.result(timeout=300) for f in futures]
        blocked.result(timeout=10)
        assert server.engine.max_rows_seen == 8  # they were decoded in full batches

        client = server.client()
        for (body, _), (text, finish, usage) in zip(requests, results):
            assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
            assert usage["prompt_tokens"] == len(body["prompt"])
            if body["temperature"] == 0:
                # the server never generates past the window (generate_text would crop and go on)
                budget = min(body["max_tokens"], CTX + 1 - len(body["prompt"]))
                want = generate_text(server.ref_model, server.tokenizer, body["prompt"], greedy(budget))
                assert text == want.text
                assert usage["completion_tokens"] == want.completion_tokens
                assert finish == ("length" if want.finish_reason == "length" else "stop")
            else:  # the same seeded request alone
                alone = client.completions.create(**body)
                assert text == alone.choices[0].text
        health = httpx.get(f"{server.url}/health", timeout=10)
        assert health.status_code == 200 and health.json()["running"] == 0
    finally:
        server.stop()
