"""Prompt styles: exact templates, chats, stop strings, the registry and history trimming."""

from __future__ import annotations

import pytest

from customgpt.errors import ConfigError
from customgpt.prompts import (
    PROMPT_STYLES,
    Message,
    PromptStyle,
    get_prompt_style,
    list_prompt_styles,
    register_prompt_style,
    trim_chat_history,
)

PREAMBLE = "Below is an instruction that describes a task. Write a response that appropriately completes the request."


def test_registry_has_the_three_styles():
    assert {"alpaca", "phi3", "plain"} <= set(list_prompt_styles())
    assert get_prompt_style("alpaca") is PROMPT_STYLES["alpaca"]
    style = get_prompt_style("phi3")
    assert get_prompt_style(style) is style


def test_unknown_style_names_the_known_ones():
    with pytest.raises(ConfigError, match=r"unknown prompt style 'chatml'.*alpaca.*phi3.*plain"):
        get_prompt_style("chatml")


def test_registering_a_duplicate_name_fails():
    with pytest.raises(ConfigError, match="already registered"):
        register_prompt_style(type(get_prompt_style("alpaca"))())


def test_alpaca_instruction_exact():
    style = get_prompt_style("alpaca")
    assert style.format_instruction("Add 2 and 3.") == (
        f"{PREAMBLE}\n\n### Instruction:\nAdd 2 and 3.\n\n### Response:\n"
    )
    assert style.format_instruction("Translate to French.", "Good morning") == (
        f"{PREAMBLE}\n\n### Instruction:\nTranslate to French.\n\n### Input:\nGood morning\n\n### Response:\n"
    )
    # An empty input leaves the Input section out, as in the Alpaca data.
    assert style.format_instruction("Add 2 and 3.", "") == style.format_instruction("Add 2 and 3.")


def test_alpaca_example_splits_prompt_and_response():
    prompt, response = get_prompt_style("alpaca").format_example("Say hi.", None, "Hi!")
    assert prompt.endswith("### Response:\n") and response == "Hi!"
    assert prompt + response == f"{PREAMBLE}\n\n### Instruction:\nSay hi.\n\n### Response:\nHi!"


def test_alpaca_chat_and_system_message():
    style = get_prompt_style("alpaca")
    chat = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Bye"},
    ]
    assert style.format_chat(chat) == (
        f"{PREAMBLE}\n\n### Instruction:\nHi\n\n### Response:\nHello!\n\n### Instruction:\nBye\n\n### Response:\n"
    )
    with_system = [Message("system", "You are terse."), Message("user", "Hi")]
    assert style.format_chat(with_system) == "You are terse.\n\n### Instruction:\nHi\n\n### Response:\n"
    # One user turn formats like the single instruction.
    assert style.format_chat([Message("user", "Hi")]) == style.format_instruction("Hi")


def test_phi3_exact():
    style = get_prompt_style("phi3")
    assert style.format_instruction("What is 2+2?") == "<|user|>\nWhat is 2+2?<|end|>\n<|assistant|>\n"
    assert style.format_instruction("Fix the spelling.", "Ocasion") == (
        "<|user|>\nFix the spelling.\nOcasion<|end|>\n<|assistant|>\n"
    )
    chat = [Message("system", "Be kind."), Message("user", "Hi"), Message("assistant", "Hello!"), Message("user", "Bye")]
    assert style.format_chat(chat) == (
        "<|system|>\nBe kind.<|end|>\n<|user|>\nHi<|end|>\n<|assistant|>\nHello!<|end|>\n<|user|>\nBye<|end|>\n<|assistant|>\n"
    )
    prompt, response = style.format_example("Hi", None, "Hello!")
    assert (prompt, response) == ("<|user|>\nHi<|end|>\n<|assistant|>\n", "Hello!<|end|>")
    assert "<|end|>" in style.stop_strings


def test_plain_exact():
    style = get_prompt_style("plain")
    assert style.format_instruction("Once upon a time") == "Once upon a time"
    assert style.format_instruction("Summarise:", "Some text") == "Summarise:\n\nSome text"
    chat = [Message("user", "Hi"), Message("assistant", "Hello!"), Message("user", "Bye")]
    assert style.format_chat(chat) == "User: Hi\nAssistant: Hello!\nUser: Bye\nAssistant:"
    assert style.stop_strings == ("\nUser:",)


@pytest.mark.parametrize("name", ["alpaca", "phi3", "plain"])
def test_stop_strings_do_not_occur_in_the_prompt_tail(name):
    """A reply starts after the prompt: no stop string may be completed by the prompt's end,
    and every style has at least one stop string."""
    style = get_prompt_style(name)
    assert style.stop_strings
    prompt = style.format_chat([Message("user", "Hi")])
    for stop in style.stop_strings:
        assert not prompt.endswith(stop)


@pytest.mark.parametrize(
    "messages, match",
    [
        ([], "at least one user message"),
        ([Message("system", "x")], "at least one user message"),
        ([Message("user", "a"), Message("assistant", "b")], "must end with a user message"),
        ([Message("user", "a"), Message("system", "b"), Message("user", "c")], "system message may only come first"),
        ([{"role": "user"}], "needs 'role' and 'content'"),
        ([{"role": "robot", "content": "x"}], "role must be one of"),
        (["hello"], "must be a Message or a mapping"),
    ],
)
def test_bad_chats_are_clear_errors(messages, match):
    with pytest.raises(ConfigError, match=match):
        get_prompt_style("alpaca").format_chat(messages)


def _words(text: str) -> int:
    return len(text.split())


def test_trim_chat_history_drops_oldest_turns_first():
    style = get_prompt_style("plain")
    history = [
        Message("system", "sys"),
        Message("user", "one two three"),
        Message("assistant", "four five six"),
        Message("user", "seven"),
        Message("assistant", "eight"),
        Message("user", "nine"),
    ]
    full = _words(style.format_chat(history))
    assert trim_chat_history(style, history, _words, full) == history
    trimmed = trim_chat_history(style, history, _words, full - 1)
    # The first user turn and its reply go together; the system message stays.
    assert trimmed == [history[0]] + history[3:]
    assert _words(style.format_chat(trimmed)) <= full - 1
    # Too small for anything but the last user message: that is kept regardless.
    assert trim_chat_history(style, history, _words, 1) == [history[0], history[-1]]


def test_custom_style_can_be_registered():
    class Bracket(PromptStyle):
        name = "bracket-test"
        stop_strings = ("]",)

        def format_instruction(self, instruction, input=None):
            return f"[{instruction}] "

        def _format_chat(self, msgs):
            return "".join(f"[{m.content}]" for m in msgs) + " "

    try:
        register_prompt_style(Bracket())
        assert get_prompt_style("bracket-test").format_chat([Message("user", "x")]) == "[x] "
    finally:
        PROMPT_STYLES.pop("bracket-test", None)
