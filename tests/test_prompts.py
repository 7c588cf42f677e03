"""Prompt styles: exact templates, chats, stop strings, the registry and history trimming."""

from __future__ import annotations

import pytest

from customgpt.errors import ConfigError
from customgpt.prompts import (
    PROMPT_STYLES,
    Message,
    PromptConfig,
    PromptStyle,
    TemplateStyle,
    get_prompt_style,
    prompt_style_from_dict,
    prompt_style_to_dict,
    register_prompt_style,
    trim_chat_history,
)

PREAMBLE = "Below is an instruction that describes a task. Write a response that appropriately completes the request."


def test_registry_has_the_three_styles():
    assert {"alpaca", "phi3", "plain"} <= set(PROMPT_STYLES)
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
    """The reference recipe's Phi-3-like template: input appended to the instruction after a newline."""
    style = get_prompt_style("phi3")
    assert style.format_instruction("What is 2+2?") == "<|user|>\nWhat is 2+2?\n<|assistant|>:\n"
    assert style.format_instruction("Fix the spelling.", "Ocasion") == (
        "<|user|>\nFix the spelling.\nOcasion\n<|assistant|>:\n"
    )
    assert style.format_instruction("Fix the spelling.", "") == "<|user|>\nFix the spelling.\n<|assistant|>:\n"
    chat = [Message("system", "Be kind."), Message("user", "Hi"), Message("assistant", "Hello!"), Message("user", "Bye")]
    assert style.format_chat(chat) == (
        "<|system|>\nBe kind.\n<|user|>\nHi\n<|assistant|>:\nHello!\n<|user|>\nBye\n<|assistant|>:\n"
    )
    prompt, response = style.format_example("Hi", None, "Hello!")
    assert (prompt, response) == ("<|user|>\nHi\n<|assistant|>:\n", "Hello!")
    assert "<|end|>" in style.stop_strings and "<|user|>" in style.stop_strings


def test_alpaca_matches_the_reference_recipe_text():
    """The training text equals the reference's format_input(entry) + "\\n\\n### Response:\\n" + output."""
    style = get_prompt_style("alpaca")
    prompt, response = style.format_example("Rewrite the sentence.", "The cat sat.", "The cat was sitting.")
    assert prompt + response == (
        "Below is an instruction that describes a task. Write a response that appropriately completes the request."
        "\n\n### Instruction:\nRewrite the sentence.\n\n### Input:\nThe cat sat.\n\n### Response:\nThe cat was sitting."
    )
    assert style.format_input("Rewrite the sentence.", "") == f"{PREAMBLE}\n\n### Instruction:\nRewrite the sentence."


def test_user_template_from_a_config():
    style = PromptConfig(style="qa", instruction="Q: {instruction}", input=" [{input}]",
                         response="\nA: {output}</s>", stop_strings=["Q:"]).build()
    assert isinstance(style, TemplateStyle) and style.name == "qa"
    assert style.format_instruction("Add 2 and 3.") == "Q: Add 2 and 3.\nA: "
    assert style.format_instruction("Add.", "2, 3") == "Q: Add. [2, 3]\nA: "
    assert style.format_example("Add.", "2, 3", "5") == ("Q: Add. [2, 3]\nA: ", "5</s>")
    assert style.stop_strings == ("Q:",)
    # User text is inserted as is: braces and placeholders in it are never expanded.
    assert style.format_instruction("say {input} {output} {}", "{instruction}") == (
        "Q: say {input} {output} {} [{instruction}]\nA: "
    )
    chat = [Message("user", "Hi"), Message("assistant", "Hello"), Message("user", "Bye")]
    assert style.format_chat(chat) == "Q: Hi\nA: Hello</s>Q: Bye\nA: "
    # Without an input part, the default appends the input on a new line.
    default = PromptConfig(style="bare", instruction="{instruction}", response=" => {output}").build()
    assert default.format_instruction("x", "y") == "x\ny => "
    # A registered name without template parts is the registered style.
    assert PromptConfig(style="phi3").build() is get_prompt_style("phi3")


def test_templates_round_trip_through_saved_metadata():
    custom = PromptConfig(style="qa", instruction="Q: {instruction}", response="\nA: {output}").build()
    again = prompt_style_from_dict(prompt_style_to_dict(custom))
    assert again.format_example("x", "y", "z") == custom.format_example("x", "y", "z")
    assert prompt_style_to_dict(get_prompt_style("alpaca")) == {"name": "alpaca"}
    assert prompt_style_from_dict({"name": "alpaca"}) is get_prompt_style("alpaca")
    with pytest.raises(ConfigError, match="unknown template key"):
        prompt_style_from_dict({"name": "qa", "instruction": "{instruction}", "colour": "red"})


@pytest.mark.parametrize(
    "parts, match",
    [
        (dict(instruction="no placeholder"), r"instruction part must contain \{instruction\} exactly once"),
        (dict(instruction="{instruction} {instruction}"), "exactly once"),
        (dict(response="{output} {input}"), r"response part may not contain \{input\}"),
        (dict(input="only text"), r"input part must contain \{input\}"),
        (dict(preamble="{instruction}"), "hold no placeholders"),
    ],
)
def test_bad_templates_are_clear_errors(parts, match):
    with pytest.raises(ConfigError, match=match):
        PromptConfig(style="mine", **parts).build()


def test_a_template_may_not_reuse_a_registered_name():
    with pytest.raises(ConfigError, match="registered style"):
        PromptConfig(style="alpaca", instruction="{instruction}").build()


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


def test_front_ends_use_the_style_a_model_folder_records(tmp_path):
    import json

    from customgpt.prompts import saved_prompt_style, style_for_model

    assert saved_prompt_style(tmp_path) is None and saved_prompt_style(tmp_path / "missing") is None
    assert style_for_model(None, str(tmp_path), "plain").name == "plain"
    (tmp_path / "metadata.json").write_text(json.dumps({"prompt_style": {"name": "phi3"}}))
    assert style_for_model(None, str(tmp_path), "alpaca").name == "phi3"
    assert style_for_model("alpaca", str(tmp_path), "plain").name == "alpaca"  # asked for wins
    template = {"name": "qa", "instruction": "Q: {instruction}", "response": "\nA: {output}"}
    (tmp_path / "metadata.json").write_text(json.dumps({"prompt_style": template}))
    style = style_for_model(None, str(tmp_path), "alpaca")
    assert style.format_instruction("Why?") == "Q: Why?\nA: "


def test_an_unknown_recorded_style_names_the_file(tmp_path):
    import json

    from customgpt.prompts import saved_prompt_style

    (tmp_path / "metadata.json").write_text(json.dumps({"prompt_style": {"name": "nope"}}))
    with pytest.raises(ConfigError, match=r"metadata\.json: prompt_style: unknown prompt style 'nope'"):
        saved_prompt_style(tmp_path)
