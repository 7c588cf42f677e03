"""Text out of the token loop (:mod:`customgpt.generate.stream`): stop strings, streamed
pieces, end-of-text, results, and prompts encoded as plain text."""

from __future__ import annotations

import pytest
import torch

from customgpt.config import GPTConfig
from customgpt.generate import (
    GenerationError,
    SamplingParams,
    StopStringBuffer,
    encode_prompt,
    generate_text,
    generate_tokens,
    stream_text,
)
from customgpt.model import GPT
from generate.common import GREEDY, prompt_of, randomize, tokens

# --------------------------------------------------------------------------- stop strings and text


def test_stop_buffer_holds_possible_prefixes():
    buf = StopStringBuffer(["###", "END"])
    assert buf.push("Hello #") == "Hello "  # "#" might start "###"
    assert buf.push("#") == ""  # "##" still might
    assert buf.push(" no") == "## no"  # it did not
    assert buf.push(" E") == " "
    assert buf.push("ND and more") == ""  # the stop string spanned two pieces
    assert buf.stopped and buf.push("x") == "" and buf.flush() == ""


def test_stop_buffer_earliest_stop_wins_and_flush_releases_a_partial_match():
    buf = StopStringBuffer(["cd", "bcde"])
    assert buf.push("abc") == "a"  # "bc" may start "bcde", "c" may start "cd"
    assert buf.push("d") == "b"  # "cd" completes first, though "bcde" began earlier
    assert buf.stopped
    buf = StopStringBuffer(["bc", "abcd"])
    assert buf.push("xab") == "x"
    assert buf.push("cd") == ""  # both match: the one that starts first ("abcd") decides
    buf = StopStringBuffer(["<|end|>"])
    assert buf.push("answer <|en") == "answer "
    assert buf.flush() == "<|en"


def _pieces(tokenizer, ids):
    dec = tokenizer.incremental_decoder()
    return [dec.feed(i) for i in ids]


def test_stop_string_spanning_two_tokens_ends_output_before_it(text_model, tokenizer):
    params = SamplingParams(temperature=0, max_new_tokens=30, stop_at_eot=False)
    full = generate_text(text_model, tokenizer, "The cat", params)
    pieces = _pieces(tokenizer, full.token_ids)
    text = "".join(pieces)
    assert text == full.text
    # Find a token boundary where a stop string made of the end of one token and the start of
    # the next first occurs: the output must end right before it.
    pos = 0
    for left, right in zip(pieces, pieces[1:]):
        pos += len(left)
        if len(left.strip()) >= 2 and len(right.strip()) >= 2:
            stop = left[-2:] + right[:2]
            if text.find(stop) == pos - 2:
                break
    else:
        pytest.fail("no suitable token boundary in the sample output")
    streamed = stream_text(text_model, tokenizer, "The cat", params.replace(stop=("never-there", stop)))
    out = list(streamed)
    assert "".join(out) == text[: pos - 2] == streamed.result.text
    assert streamed.result.finish_reason == "stop"
    assert not any(stop[:k] in "".join(out)[-k:] for k in range(1, len(stop)) if "".join(out).endswith(stop[:k]))


def test_stream_pieces_join_to_the_decoded_tokens(text_model, tokenizer):
    stream = stream_text(text_model, tokenizer, "Once upon", SamplingParams(max_new_tokens=25, seed=7, stop_at_eot=False))
    pieces = list(stream)
    result = stream.result
    assert "".join(pieces) == result.text == tokenizer.decode(result.token_ids)
    assert result.prompt_tokens == len(tokenizer.encode("Once upon"))
    assert result.completion_tokens == len(result.token_ids) == 25
    assert result.finish_reason == "length"
    assert result.tokens_per_second > 0 and result.seconds > 0 and result.time_to_first_token is not None


def test_end_of_text_finishes_with_eot(model):
    prompt = prompt_of(8, seed=4)
    free = tokens(generate_tokens(model, prompt, GREEDY.replace(max_new_tokens=20)))
    eot = free[6]
    first = free.index(eot)
    steps = list(generate_tokens(model, prompt, GREEDY.replace(max_new_tokens=20, stop_at_eot=True), eot_id=eot))
    assert tokens(steps) == free[: first + 1]
    assert steps[-1].finish_reason == "eot"


def test_eot_is_not_part_of_the_text(text_model, tokenizer):
    free = generate_text(text_model, tokenizer, "Hi", SamplingParams(temperature=0, max_new_tokens=12, stop_at_eot=False))

    class Tok:  # the GPT-2 tokenizer with a different end-of-text id, to make the model "stop"
        eot_id = free.token_ids[3]

        def __getattr__(self, name):
            return getattr(tokenizer, name)

    result = generate_text(text_model, Tok(), "Hi", SamplingParams(temperature=0, max_new_tokens=12))
    first = free.token_ids.index(Tok.eot_id)
    assert result.finish_reason == "eot"
    assert result.token_ids == free.token_ids[:first]
    assert result.completion_tokens == first + 1
    assert result.text == tokenizer.decode(free.token_ids[:first])


def test_closing_a_stream_early_reports_interrupted(text_model, tokenizer):
    finished = []
    stream = stream_text(text_model, tokenizer, "Hi", SamplingParams(max_new_tokens=50, seed=1))
    stream.on_finish = finished.append
    shown = next(stream) + next(stream)
    stream.close()
    assert stream.result.finish_reason == "interrupted" and stream.result.text == shown
    assert finished == [stream.result]


def test_empty_prompt_samples_unconditionally_from_end_of_text(text_model, tokenizer):
    result = generate_text(text_model, tokenizer, "", SamplingParams(temperature=0, max_new_tokens=3, stop_at_eot=False))
    assert result.prompt_tokens == 1
    same = tokens(generate_tokens(text_model, [tokenizer.eot_id], SamplingParams(temperature=0, max_new_tokens=3, stop_at_eot=False)))
    assert result.token_ids == same


def test_zero_new_tokens(model, text_model, tokenizer):
    assert list(generate_tokens(model, [1, 2], SamplingParams(max_new_tokens=0))) == []
    result = generate_text(text_model, tokenizer, "Hi", SamplingParams(max_new_tokens=0))
    assert (result.text, result.completion_tokens, result.finish_reason) == ("", 0, "length")


def test_bad_prompts_are_clear_errors(model):
    with pytest.raises(GenerationError, match="prompt is empty"):
        generate_tokens(model, [], GREEDY)
    with pytest.raises(GenerationError, match=r"token id 97, outside the vocabulary \(ids 0 to 96\)"):
        generate_tokens(model, [1, 97], GREEDY)




def test_text_stream_reports_context_full_once(text_model, tokenizer):
    calls = []
    params = SamplingParams(temperature=0, max_new_tokens=70, stop_at_eot=False)
    stream = stream_text(text_model, tokenizer, "a b c d e f", params, on_context_full=lambda: calls.append(1))
    result = stream.collect()
    assert calls == [1] and result.context_cropped and result.completion_tokens == 70


# --------------------------------------------------------------------------- untrusted text


@pytest.mark.parametrize("text", ["what is <|endoftext|> in GPT-2?", "<|endoftext|>", "a<|endoftext|>b<|endoftext|>"])
def test_prompt_text_is_plain_text(tokenizer, text):
    """Typed text never becomes the end-of-text control id (50256)."""
    ids = encode_prompt(tokenizer, text)
    assert tokenizer.eot_id not in ids
    assert tokenizer.decode(ids) == text
    assert ids == tokenizer.encode(text, allowed_special="none")


def test_streamed_prompt_is_plain_text_unless_a_caller_allows_special(text_model, tokenizer):
    params = SamplingParams(temperature=0, max_new_tokens=2, stop_at_eot=False)
    stream = stream_text(text_model, tokenizer, "what is <|endoftext|> in GPT-2?", params)
    assert tokenizer.eot_id not in stream.prompt_ids
    stream.collect()
    raw = stream_text(text_model, tokenizer, "x<|endoftext|>", params, allowed_special={"<|endoftext|>"})
    assert raw.prompt_ids[-1] == tokenizer.eot_id
    raw.collect()


def test_text_never_holds_ids_the_tokenizer_cannot_decode(tokenizer):
    """A GPT-2 model with a padded vocabulary (as nanoGPT trains it: 50,304 rows) whose
    padded ids have the highest logits: the stream masks them instead of dying."""
    model = randomize(GPT(GPTConfig(vocab_size=50304, context_length=32, n_embd=16, n_layer=1, n_head=2,
                                    tie_embeddings=False)), 3).eval()
    with torch.no_grad():
        model.lm_head.weight[50257:] = model.lm_head.weight[:47] * 40
    raw = tokens(generate_tokens(model, tokenizer.encode("Hi"), SamplingParams(temperature=0, max_new_tokens=5)))
    assert max(raw) >= 50257  # without the tokenizer's size, the padded ids would be picked
    for params in (SamplingParams(temperature=0, max_new_tokens=12, stop_at_eot=False),
                   SamplingParams(temperature=2.0, max_new_tokens=12, seed=5, stop_at_eot=False)):
        result = generate_text(model, tokenizer, "Hi", params)
        assert result.completion_tokens == 12 and max(result.token_ids) < 50257
