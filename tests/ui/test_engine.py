"""The web app's logic without a browser: settings, a chat reply in a worker thread with
stop, loading errors, the classification table."""

from __future__ import annotations

import asyncio
import threading

import pytest

from customgpt.checkpoints import load_model
from customgpt.constants import EOT_ID
from customgpt.device import resolve_device
from customgpt.generate import ChatSession, SamplingParams, generate_text
from customgpt.prompts import Message, get_prompt_style
from customgpt.tokenizer import get_tokenizer
from customgpt.ui.engine import (
    Generation,
    chat_settings,
    classification_markdown,
    escape_markdown,
    load_chat_model,
    load_classifier_model,
    sampling_params,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")
ALPACA = get_prompt_style("alpaca")


@pytest.fixture(scope="module")
def model():
    return load_model("cpu-tiny", seed=0)


def test_settings_start_from_sane_values_and_are_used_when_untouched():
    params = sampling_params({}, 1024)
    assert (params.temperature, params.top_k, params.top_p, params.repetition_penalty) == (0.7, 50, 0.95, 1.1)
    assert params.max_new_tokens == 256
    assert 0 <= params.seed < 2**31  # -1 (the start value) draws a seed for the message
    # A small window: max new tokens starts at half of it and goes up to all of it.
    assert sampling_params({}, 64).max_new_tokens == 32
    assert [s.max for s in chat_settings(64) if s.id == "max_new_tokens"] == [64]


def test_settings_from_the_browser_are_clamped_and_bad_values_replaced():
    params = sampling_params({"temperature": -3, "top_k": 7.6, "top_p": "0.5", "max_new_tokens": 10_000,
                              "repetition_penalty": float("nan"), "seed": 12}, 512, ("###",))
    assert params.temperature == 0.0 and params.top_k == 8 and params.top_p == 0.5
    assert params.max_new_tokens == 512 and params.repetition_penalty == 1.1
    assert params.seed == 12 and params.stop == ("###",)
    assert sampling_params({"max_new_tokens": 0, "temperature": True}, 512).max_new_tokens == 1
    assert sampling_params({"temperature": True}, 512).temperature == 0.7


def session_for(model) -> ChatSession:
    return ChatSession(model, get_tokenizer(), ALPACA)


def run_generation(gen: Generation, stop_after: int | None = None) -> list[str]:
    async def main() -> list[str]:
        pieces = []
        async for piece in gen:
            pieces.append(piece)
            if stop_after is not None and len(pieces) >= stop_after:
                gen.stop()
                break
        await gen.wait(timeout=10)
        return pieces

    return asyncio.run(main())


def test_user_text_is_plain_text_never_a_special_token(model):
    text = "what is <|endoftext|> in GPT-2?"
    gen = Generation(session_for(model), text, SamplingParams(max_new_tokens=2), threading.Lock())
    run_generation(gen)
    assert EOT_ID not in gen.prompt_ids
    assert get_tokenizer().decode(gen.prompt_ids) == ALPACA.format_instruction(text)


def test_the_user_is_told_when_old_turns_are_left_out(model):
    session = session_for(model)
    session.history = [Message("user", "old " * 150), Message("assistant", "answer " * 20)]
    notices: list[str] = []
    gen = Generation(session, "new question", SamplingParams(max_new_tokens=128, temperature=0), threading.Lock(),
                     on_notice=notices.append)
    run_generation(gen)
    assert len(notices) == 1 and "the oldest 2 message(s) were left out" in notices[0]
    assert [m.content for m in session.history][0] == "new question"


def test_generation_in_a_thread_gives_the_library_reply_and_records_it(model):
    tokenizer = get_tokenizer()
    session = session_for(model)
    params = SamplingParams(temperature=0, max_new_tokens=12)
    gen = Generation(session, "Name three colours.", params, threading.Lock())
    text = "".join(run_generation(gen))
    want = generate_text(model, tokenizer, ALPACA.format_instruction("Name three colours."),
                         params.replace(stop=ALPACA.stop_strings))
    assert text == want.text and gen.result.finish_reason == want.finish_reason
    assert [m.role for m in session.history] == ["user", "assistant"] and session.history[1].content == text
    assert gen.time_to_first_piece is not None


def test_each_message_uses_its_own_settings(model):
    session = session_for(model)
    lengths = []
    for n in (9, 2):
        gen = Generation(session, "Hello", SamplingParams(temperature=0, max_new_tokens=n, stop_at_eot=False),
                         threading.Lock())
        run_generation(gen)
        lengths.append(gen.result.completion_tokens)
    assert lengths == [9, 2]


def test_stop_ends_the_worker_and_keeps_what_was_shown(model):
    session = session_for(model)
    params = SamplingParams(temperature=0, max_new_tokens=200, stop_at_eot=False)
    gen = Generation(session, "Tell me a story.", params, threading.Lock())
    pieces = run_generation(gen, stop_after=1)
    assert not gen._thread.is_alive()
    assert gen.result.finish_reason == "interrupted" and gen.result.completion_tokens < 200
    assert session.history[-1].content == "".join(pieces)


def test_a_generation_error_reaches_the_caller():
    small = load_model("cpu-tiny", seed=0)
    small.config = small.config.replace(vocab_size=100)  # GPT-2's ids do not fit: the prompt is refused
    gen = Generation(session_for(small), "Hello", SamplingParams(max_new_tokens=4), threading.Lock())
    with pytest.raises(Exception, match="vocabulary"):
        run_generation(gen)
    assert gen.error is not None


def test_loading_failures_are_kept_for_the_page(tmp_path, caplog):
    from customgpt.checkpoints import random_model, save_model
    from customgpt.classifier import GPTClassifier, save_classifier
    from customgpt.config import GPTConfig

    body = random_model(GPTConfig.from_preset("cpu-tiny"), seed=0)
    folder = save_classifier(GPTClassifier(body, 2), tmp_path / "clf", ["ham", "spam"], max_length=16)
    cpu = resolve_device("cpu")
    as_chat = load_chat_model("chat", str(folder), cpu)
    assert not as_chat.ok and "is a classifier" in as_chat.error and "--classifier" in as_chat.error
    small = save_model(random_model(GPTConfig.from_preset("cpu-tiny").replace(vocab_size=100), seed=0), tmp_path / "s")
    too_small = load_chat_model("compare", str(small), cpu, get_tokenizer().vocab_size)
    assert not too_small.ok and "smaller than its tokenizer's" in too_small.error
    missing = load_chat_model("chat", str(tmp_path / "nope"), cpu)
    assert not missing.ok and "nope" in missing.error
    not_a_classifier = load_classifier_model(str(tmp_path), cpu)  # its subfolder clf is one: named
    assert not not_a_classifier.ok and "not a classifier folder" in not_a_classifier.error
    assert "clf" in not_a_classifier.error
    plain = load_classifier_model(str(small), cpu)  # a language model's folder
    assert not plain.ok and "classifier.json" in plain.error
    assert "is a classifier" in caplog.text and "nope" in caplog.text
    ok = load_classifier_model(str(folder), cpu)
    assert ok.ok and ok.info["labels"] == ["ham", "spam"] and "ham, spam" in ok.summary()
    assert "failed to load" in missing.summary()


def test_classification_table_shows_every_class_and_escapes_text():
    one = classification_markdown(["hi"], [[0.25, 0.75]], ["ham", "spam"])
    assert one.startswith("**spam** (75.0%)") and "| ham | 25.0% |" in one and "| spam | 75.0% |" in one
    many = classification_markdown(["a | b", "*c*"], [[0.9, 0.1], [0.4, 0.6]], ["ham", "spam"])
    rows = many.splitlines()
    assert len(rows) == 4 and rows[2].startswith("| 1 | a \\| b | **ham** | 90.0% | 10.0% |")
    assert "\\*c\\*" in rows[3] and "**spam**" in rows[3]
    assert escape_markdown("x\ny  <b>") == "x y \\<b\\>"


def test_chat_models_use_the_style_their_folder_records_unless_one_is_asked_for(tmp_path):
    from customgpt.checkpoints import random_model, save_model
    from customgpt.config import GPTConfig
    from customgpt.ui.config import AppConfig
    from customgpt.ui.engine import AppState

    model = random_model(GPTConfig.from_preset("cpu-tiny"), seed=0)
    tuned = str(save_model(model, tmp_path / "tuned", metadata={"prompt_style": {"name": "phi3"}}))
    base = str(save_model(model, tmp_path / "base"))
    state = AppState.load(AppConfig(chat=tuned, compare=base, device="cpu"))
    assert state.chat.style.name == "phi3" and state.compare.style.name == "alpaca"
    assert "prompt style phi3" in state.chat.summary() and "prompt style alpaca" in state.compare.summary()
    asked = AppState.load(AppConfig(chat=tuned, compare=base, prompt_style="alpaca", device="cpu"))
    assert asked.chat.style.name == asked.compare.style.name == "alpaca"
    unknown = load_chat_model("chat", tuned, resolve_device("cpu"), prompt_style="nope")
    assert not unknown.ok and unknown.error.startswith("unknown prompt style 'nope'; known styles: alpaca")
