"""Responses: cleaning, the file format (the reference's records plus model_response), safe writing."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import tiny_model

from customgpt.data.instruct import InstructionRecord
from customgpt.errors import CustomGPTError
from customgpt.evaluate.responses import clean_response, generate_responses, with_responses, write_json
from customgpt.generate import SamplingParams, generate_text
from customgpt.prompts import PromptConfig, get_prompt_style
from customgpt.tokenizer import get_tokenizer

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_clean_response_strips_and_drops_a_repeated_marker():
    alpaca = get_prompt_style("alpaca")
    assert clean_response(alpaca, "\n  Paris.  \n") == "Paris."
    assert clean_response(alpaca, "### Response:\nParis.") == "Paris."
    assert clean_response(alpaca, "Paris. ### Response: x") == "Paris. ### Response: x"
    assert clean_response(get_prompt_style("phi3"), "<|assistant|>:\nRome.") == "Rome."
    assert clean_response(get_prompt_style("plain"), "  text ") == "text"


def test_records_keep_their_keys_and_gain_model_response():
    raw = {"instruction": "Say hi.", "input": "", "output": "Hi", "id": 7}
    record = InstructionRecord("Say hi.", "", "Hi", raw=raw)
    (row,) = with_responses([record], ["Hello"], {"decoding": "greedy"})
    assert row == {**raw, "model_response": "Hello", "generation": {"decoding": "greedy"}}
    assert list(row)[:4] == ["instruction", "input", "output", "id"]
    with pytest.raises(ValueError):
        with_responses([record], ["a", "b"])


def test_write_json_refuses_to_replace_a_file(tmp_path):
    path = tmp_path / "out.json"
    write_json(path, [1])
    with pytest.raises(CustomGPTError, match="exists; pass --force"):
        write_json(path, [2])
    write_json(path, [2], force=True)
    assert json.loads(path.read_text()) == [2]
    with pytest.raises(CustomGPTError, match="is an input"):
        write_json(path, [3], force=True, inputs=[path])


def test_greedy_responses_equal_generating_each_prompt_alone():
    tok = get_tokenizer()
    model = tiny_model(4, vocab_size=tok.vocab_size, context_length=64)
    style = PromptConfig(style="short", instruction="Q: {instruction}", response="\nA: {output}").build()
    records = [InstructionRecord("Hi", "", "x"), InstructionRecord("What is two plus two?", "numbers", "4")]
    responses, settings = generate_responses(model, tok, style, records, max_new_tokens=6, batch_size=2,
                                             use_stop_strings=False, progress=False)
    params = SamplingParams(temperature=0, max_new_tokens=6)
    for record, got in zip(records, responses):
        prompt = tok.encode(style.format_instruction(record.instruction, record.input), allowed_special="none")
        assert got == clean_response(style, generate_text(model, tok, prompt, params).text)
    assert settings == {"decoding": "greedy", "max_new_tokens": 6, "stop_at_eot": True, "stop_strings": [],
                        "prompt_style": "short"}


def _reference_greedy(model, ids, n, eot_id):
    x = torch.tensor([ids])
    with torch.no_grad():
        for _ in range(n):
            nxt = int(model(x)[0, -1].argmax())
            if nxt == eot_id:
                break
            x = torch.cat([x, torch.tensor([[nxt]])], 1)
    return x[0, len(ids):].tolist()


def test_responses_follow_weights_changed_in_place_by_a_fused_optimizer():
    """A fused AdamW step changes weights without bumping their version counters: responses
    made after training steps must come from the new weights, not from generation's copies."""
    tok = get_tokenizer()
    model = tiny_model(5, vocab_size=tok.vocab_size, context_length=64)
    style = get_prompt_style("alpaca")
    records = [InstructionRecord("Say something.", "", "x")]
    ids = tok.encode(style.format_instruction("Say something."), allowed_special="none")
    generate_responses(model, tok, style, records, max_new_tokens=8, use_stop_strings=False, progress=False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.05, fused=True)
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    versions = [p._version for p in model.parameters()]
    optimizer.step()
    assert all(p._version == v for p, v in zip(model.parameters(), versions)), "fused steps no longer hide updates"
    (got,), _ = generate_responses(model, tok, style, records, max_new_tokens=8, use_stop_strings=False,
                                   progress=False)
    want = clean_response(style, tok.decode(_reference_greedy(model, ids, 8, tok.eot_id)))
    assert got == want
