"""Chat sessions (:mod:`customgpt.generate.chat`): history, trimming to the window, messages
as plain text, replies inside the tokenizer's vocabulary."""

from __future__ import annotations

import pytest
import torch

from customgpt.config import GPTConfig
from customgpt.generate import ChatSession, SamplingParams
from customgpt.model import GPT
from customgpt.prompts import Message, get_prompt_style
from generate.common import randomize

# --------------------------------------------------------------------------- chat


def test_chat_session_keeps_history_and_resets(text_model, tokenizer):
    params = SamplingParams(temperature=0, max_new_tokens=8)
    chat = ChatSession(text_model, tokenizer, "phi3", params)
    assert "<|end|>" in chat.params.stop
    first = "".join(chat.send("Hi"))
    assert chat.history == [Message("user", "Hi"), Message("assistant", first)]
    second = chat.send("And?")
    second_text = "".join(second)
    want_prompt = get_prompt_style("phi3").format_chat(
        [Message("user", "Hi"), Message("assistant", first), Message("user", "And?")]
    )
    assert second.prompt_ids == tokenizer.encode(want_prompt)
    assert chat.history[-1] == Message("assistant", second_text)
    chat.reset()
    assert chat.history == [] and "".join(chat.send("Hi")) == first


def test_chat_session_drops_old_turns_to_fit_the_window(text_model, tokenizer):
    chat = ChatSession(text_model, tokenizer, "alpaca", SamplingParams(temperature=0, max_new_tokens=4), system="Be brief.")
    for i in range(6):
        list(chat.send(f"message number {i}"))
    kept, prompt = chat.prompt_for("last one")
    assert len(tokenizer.encode(prompt)) <= chat.prompt_budget
    assert kept[0] == Message("system", "Be brief.") and kept[-1] == Message("user", "last one")
    assert len(kept) < 2 * 6 + 2


@pytest.mark.parametrize("message", ["what is <|endoftext|> in GPT-2?", "<|endoftext|><|endoftext|>"])
def test_chat_messages_are_plain_text(text_model, tokenizer, message):
    """A message holding the end-of-text marker's text never puts id 50256 in the prompt."""
    chat = ChatSession(text_model, tokenizer, "alpaca", SamplingParams(temperature=0, max_new_tokens=3), system=message)
    stream = chat.send(message)
    assert tokenizer.eot_id not in stream.prompt_ids
    assert tokenizer.decode(stream.prompt_ids).count("<|endoftext|>") == 2 * message.count("<|endoftext|>")
    stream.collect()
    assert chat.history[0] == Message("user", message)


def test_chat_replies_keep_to_the_tokenizer_vocabulary(tokenizer):
    model = randomize(GPT(GPTConfig(vocab_size=50304, context_length=64, n_embd=16, n_layer=1, n_head=2,
                                    tie_embeddings=False)), 3).eval()
    with torch.no_grad():
        model.lm_head.weight[50257:] = model.lm_head.weight[:47] * 40
    chat = ChatSession(model, tokenizer, "plain", SamplingParams(temperature=0, max_new_tokens=6, stop=("zzzz",)))
    stream = chat.send("Hi")
    stream.collect()
    assert stream.result.completion_tokens == 6 and max(stream.result.token_ids) < 50257
