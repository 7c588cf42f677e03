"""The generation engine: KV-cache exactness (also past the context window), parity with
transformers' generate, every logit processor, stop strings, seeds, batches, chat sessions."""

from __future__ import annotations

import pytest
import torch

from customgpt.checkpoints import build_model, hf_to_customgpt_state
from customgpt.config import GPTConfig
from customgpt.errors import ConfigError
from customgpt.generate import (
    ChatSession,
    GenerationError,
    SamplingParams,
    StopStringBuffer,
    apply_presence_frequency,
    apply_repetition_penalty,
    generate_batch,
    generate_text,
    generate_tokens,
    min_p_filter,
    process_logits,
    sample,
    stream_text,
    top_k_filter,
    top_p_filter,
)
from customgpt.model import GPT
from customgpt.prompts import Message, get_prompt_style
from customgpt.tokenizer import get_tokenizer

CTX = 32
GREEDY = SamplingParams(temperature=0, max_new_tokens=40, stop_at_eot=False)


def randomize(module: torch.nn.Module, seed: int, std: float = 0.3) -> torch.nn.Module:
    """Random weights large enough that a tiny model's greedy output depends on its context
    (GPT-2's small init makes a random model repeat one token, which would hide bugs)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            value = torch.randn(p.shape, generator=gen) * std
            if p.dim() == 1 and "ln_" in name and name.endswith("weight"):
                value += 1.0
            p.copy_(value)
    return module


def tiny_model(seed: int = 0, **overrides) -> GPT:
    cfg = dict(vocab_size=97, context_length=CTX, n_embd=32, n_layer=2, n_head=4, tie_embeddings=False)
    return randomize(GPT(GPTConfig(**{**cfg, **overrides})), seed).eval()


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def model() -> GPT:
    return tiny_model(0)


@pytest.fixture(scope="module")
def text_model() -> GPT:
    """GPT-2 vocabulary, so the real tokenizer applies."""
    return randomize(GPT(GPTConfig(context_length=64, n_embd=32, n_layer=2, n_head=2)), 1).eval()


@pytest.fixture(scope="module")
def tokenizer():
    return get_tokenizer()


def prompt_of(length: int, seed: int = 0, vocab: int = 97) -> list[int]:
    return torch.randint(0, vocab, (length,), generator=torch.Generator().manual_seed(seed)).tolist()


def tokens(steps) -> list[int]:
    return [s.token_id for s in steps]


def reference_greedy(model: GPT, prompt: list[int], n: int) -> list[int]:
    """The definition: a full forward on the last context_length tokens, every step."""
    ids, out = list(prompt), []
    with torch.no_grad():
        for _ in range(n):
            logits = model(torch.tensor([ids[-model.config.context_length :]]))[0, -1]
            out.append(int(logits.argmax()))
            ids.append(out[-1])
    return out


# --------------------------------------------------------------------------- KV cache exactness


@pytest.mark.parametrize("length", [1, 7, 20, 31, 32, 45])
def test_cached_greedy_equals_full_window_reference(model, length):
    """Prompt + 40 new tokens crosses the 32-position window for every length here."""
    prompt = prompt_of(length, seed=length)
    want = reference_greedy(model, prompt, GREEDY.max_new_tokens)
    assert len(set(want)) > 3  # the model is not degenerate: the test can tell positions apart
    assert tokens(generate_tokens(model, prompt, GREEDY)) == want
    assert tokens(generate_tokens(model, prompt, GREEDY, use_cache=False)) == want


def test_cached_sampling_and_penalties_equal_no_cache(model):
    params = SamplingParams(
        temperature=0.9, top_k=20, top_p=0.95, repetition_penalty=1.3, frequency_penalty=0.2,
        presence_penalty=0.1, max_new_tokens=45, seed=3, stop_at_eot=False,
    )
    prompt = prompt_of(12, seed=5)
    assert tokens(generate_tokens(model, prompt, params)) == tokens(generate_tokens(model, prompt, params, use_cache=False))


def test_context_cropped_flag_marks_steps_past_the_window(model):
    prompt = prompt_of(20)
    steps = list(generate_tokens(model, prompt, GREEDY))
    # The token of step s is predicted from 20 + s tokens; past 32 the window is cropped.
    assert [s.context_cropped for s in steps] == [20 + i > CTX for i in range(40)]
    assert [s.finish_reason for s in steps] == [None] * 39 + ["length"]


def test_text_stream_reports_context_full_once(text_model, tokenizer):
    calls = []
    params = SamplingParams(temperature=0, max_new_tokens=70, stop_at_eot=False)
    stream = stream_text(text_model, tokenizer, "a b c d e f", params, on_context_full=lambda: calls.append(1))
    result = stream.collect()
    assert calls == [1] and result.context_cropped and result.completion_tokens == 70


def test_no_state_leaks_between_requests(model):
    a, b = prompt_of(25, seed=1), prompt_of(6, seed=2)
    first_b = None
    for prompt in (a, b, b):
        out = tokens(generate_tokens(model, prompt, GREEDY))
        if prompt is b:
            first_b = first_b or out
            assert out == first_b
    fresh = tiny_model(0)
    assert tokens(generate_tokens(fresh, b, GREEDY)) == first_b
    # A request cut short leaves nothing behind either.
    gen = generate_tokens(model, a, GREEDY)
    next(gen), next(gen)
    gen.close()
    assert tokens(generate_tokens(model, b, GREEDY)) == first_b


def test_two_interleaved_generations_on_one_model_is_an_error(model):
    first = generate_tokens(model, prompt_of(5, seed=1), GREEDY)
    next(first)
    second = generate_tokens(model, prompt_of(5, seed=2), GREEDY)
    next(second)
    with pytest.raises(GenerationError, match="another generation started"):
        next(first)
    second.close()


def test_training_mode_is_restored_and_dropout_is_off_while_generating():
    model = tiny_model(4, dropout=0.3)
    prompt = prompt_of(10)
    want = reference_greedy(model.eval(), prompt, 10)
    model.train()
    assert tokens(generate_tokens(model, prompt, GREEDY.replace(max_new_tokens=10))) == want
    assert model.training


# --------------------------------------------------------------------------- parity with transformers


def test_greedy_equals_transformers_generate():
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPTConfig(vocab_size=100, context_length=CTX, n_embd=48, n_layer=2, n_head=3, dropout=0.0)
    hf_cfg = GPT2Config(**{**cfg.to_hf_dict(), "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0})
    torch.manual_seed(0)
    hf = randomize(GPT2LMHeadModel(hf_cfg), seed=11).eval()
    ours = build_model(cfg, hf_to_customgpt_state(hf.state_dict(), cfg, source="hf"))
    hf.generation_config.eos_token_id = None  # neither side stops early: compare every token
    for length, new in [(1, 31), (5, 27), (16, 16), (31, 1)]:
        prompt = prompt_of(length, seed=length, vocab=100)
        with torch.no_grad():
            hf_out = hf.generate(
                torch.tensor([prompt]), attention_mask=torch.ones(1, length, dtype=torch.long),
                do_sample=False, max_new_tokens=new, pad_token_id=0,
            )[0, length:].tolist()
        ours_out = tokens(generate_tokens(ours, prompt, SamplingParams(temperature=0, max_new_tokens=new, stop_at_eot=False)))
        assert len(hf_out) == new
        assert ours_out == hf_out


# --------------------------------------------------------------------------- logit processors


def test_top_k_never_leaves_the_k_best():
    logits = torch.randn(1, 50, generator=torch.Generator().manual_seed(0))
    best = set(logits[0].topk(5).indices.tolist())
    params = SamplingParams(top_k=5, temperature=1.5)
    seen = {int(sample(logits, params, torch.Generator().manual_seed(s))[0]) for s in range(300)}
    assert seen == best  # never outside, and every one of the k is reachable
    kept = torch.isfinite(top_k_filter(logits, 5))[0].nonzero().flatten().tolist()
    assert set(kept) == best


@pytest.mark.parametrize(
    "p, kept",
    [(0.3, {2}), (0.45, {2, 0}), (0.69, {2, 0}), (0.71, {2, 0, 1}), (0.92, {2, 0, 1, 3}), (1.0, {0, 1, 2, 3, 4})],
)
def test_top_p_keeps_the_smallest_set_reaching_p(p, kept):
    probs = torch.tensor([[0.30, 0.15, 0.40, 0.10, 0.05]])  # most likely first: 2, 0, 1, 3, 4
    out = top_p_filter(probs.log(), p)
    assert set(torch.isfinite(out)[0].nonzero().flatten().tolist()) == kept
    # Kept logits are untouched (renormalisation happens in the softmax).
    assert torch.equal(out[torch.isfinite(out)], probs.log()[torch.isfinite(out)])


def test_top_p_works_row_by_row():
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.2, 0.7]])
    out = top_p_filter(probs.log(), 0.8)
    assert torch.isfinite(out).tolist() == [[True, True, False], [False, True, True]]


def test_min_p_drops_tokens_below_a_fraction_of_the_top():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    assert torch.isfinite(min_p_filter(probs.log(), 0.2)).tolist() == [[True, True, True, False]]
    assert torch.isfinite(min_p_filter(probs.log(), 0.5)).tolist() == [[True, True, False, False]]
    assert torch.equal(min_p_filter(probs.log(), 0.0), probs.log())


def test_repetition_penalty_lowers_seen_tokens_whatever_the_sign():
    logits = torch.tensor([[2.0, -1.0, 0.5, 0.1]])
    seen = torch.tensor([[True, True, False, False]])
    out = apply_repetition_penalty(logits, seen, 2.0)
    assert torch.equal(out, torch.tensor([[1.0, -2.0, 0.5, 0.1]]))
    before, after = logits.softmax(-1)[0], out.softmax(-1)[0]
    assert after[0] < before[0] and after[1] < before[1]  # positive and negative logits alike
    assert after[2] > before[2] and after[3] > before[3]


def test_presence_and_frequency_penalties_follow_openai():
    logits = torch.tensor([[1.0, 1.0, 1.0]])
    counts = torch.tensor([[0.0, 1.0, 3.0]])
    out = apply_presence_frequency(logits, counts, presence=0.5, frequency=0.25)
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
    with pytest.raises(GenerationError, match="token id 97, outside the model's vocabulary of 97"):
        generate_tokens(model, [1, 97], GREEDY)


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
        ("seed", -3, "seed must be an integer >= 0 or None"),
    ],
)
def test_sampling_params_reject_bad_values(field, value, match):
    with pytest.raises(ConfigError, match=match):
        SamplingParams(**{field: value})


def test_sampling_params_normalise_stop():
    assert SamplingParams(stop="###").stop == ("###",)
    assert SamplingParams(stop=["a", "b"]).stop == ("a", "b")
    assert SamplingParams(temperature=0).greedy and not SamplingParams().greedy


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


# --------------------------------------------------------------------------- the LM head


def test_head_copy_follows_weight_changes():
    model = tiny_model(6)
    prompt = prompt_of(9, seed=6)
    assert tokens(generate_tokens(model, prompt, GREEDY)) == reference_greedy(model, prompt, 40)
    with torch.no_grad():
        model.lm_head.weight.mul_(-1.5)  # in place, as an optimizer step would
    assert tokens(generate_tokens(model, prompt, GREEDY)) == reference_greedy(model, prompt, 40)
    model.lm_head.weight = torch.nn.Parameter(torch.randn_like(model.lm_head.weight))  # replaced
    assert tokens(generate_tokens(model, prompt, GREEDY)) == reference_greedy(model, prompt, 40)


def test_a_wrapped_head_is_called_as_it_is():
    class Shifted(torch.nn.Module):  # stands for a LoRA-wrapped head
        def __init__(self, base):
            super().__init__()
            self.base = base

        def forward(self, x):
            out = self.base(x)
            return out + torch.arange(out.shape[-1], dtype=out.dtype)

    model = tiny_model(7)
    prompt = prompt_of(9, seed=7)
    before = tokens(generate_tokens(model, prompt, GREEDY))
    model.lm_head = Shifted(model.lm_head)
    after = tokens(generate_tokens(model, prompt, GREEDY))
    assert after == reference_greedy(model, prompt, 40) != before


def test_free_generation_memory_then_generate_again():
    from customgpt.generate import free_generation_memory

    model = tiny_model(8)
    prompt = prompt_of(4)
    first = tokens(generate_tokens(model, prompt, GREEDY))
    assert model.has_kv_cache
    free_generation_memory(model)
    assert not model.has_kv_cache
    assert tokens(generate_tokens(model, prompt, GREEDY)) == first


def test_the_cache_tests_run_the_cpu_decode_fast_path(model, text_model):
    """On the CPU the exactness tests above exercise the decode fast path (its own tests:
    test_decode_fast_path.py), not only the model's forward."""
    from customgpt.generate import _DECODE_ATTR, cpu_decoder_unsupported

    for m in (model, text_model):
        assert cpu_decoder_unsupported(m) is None
        decoder = m.__dict__.get(_DECODE_ATTR)
        before = decoder.steps if decoder is not None else 0
        list(generate_tokens(m, [1, 2, 3], GREEDY.replace(max_new_tokens=5)))
        assert m.__dict__[_DECODE_ATTR].steps == before + 4
