"""Prompt styles: the ONE place a prompt template is written.

A :class:`PromptStyle` turns an instruction (with an optional input) or a chat history into
the text a model continues, and knows the strings that mark the end of its reply. Generation
(CLI, UI, server) and instruction fine-tuning both import the templates from here, so the
text a model is trained on and the text it is prompted with cannot drift apart.

Styles: ``alpaca`` (:class:`AlpacaStyle`), ``phi3`` (:class:`Phi3Style`), ``plain``
(:class:`PlainStyle`), and templates of one's own (:class:`TemplateStyle`, from a config:
:class:`PromptConfig`). A chat history is a list of :class:`Message` (or OpenAI-style
``{"role": ..., "content": ...}`` mappings) with roles ``system``, ``user`` and ``assistant``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from customgpt.errors import ConfigError
from customgpt.io import read_json_object

Role = Literal["system", "user", "assistant"]
ROLES: tuple[str, ...] = ("system", "user", "assistant")


@dataclass(frozen=True)
class Message:
    """One turn of a chat."""

    role: Role
    content: str

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ConfigError(f"message role must be one of {', '.join(ROLES)}, got {self.role!r}")
        if not isinstance(self.content, str):
            raise ConfigError(f"message content must be a string, got {type(self.content).__name__}")


MessageLike = Message | Mapping[str, str]


def to_messages(messages: Iterable[MessageLike]) -> list[Message]:
    """Accept :class:`Message` objects or OpenAI-style ``{"role", "content"}`` mappings."""
    out = []
    for i, m in enumerate(messages):
        if isinstance(m, Message):
            out.append(m)
        elif isinstance(m, Mapping):
            if "role" not in m or "content" not in m:
                raise ConfigError(f"message {i} needs 'role' and 'content' keys, got {sorted(m)}")
            out.append(Message(m["role"], m["content"]))  # type: ignore[arg-type]
        else:
            raise ConfigError(f"message {i} must be a Message or a mapping, got {type(m).__name__}")
    return out


class PromptStyle:
    """A prompt template. Subclasses fill in the hooks below; the public methods are shared.

    Attributes:
        name: the registry key.
        stop_strings: strings that end a reply: generation stops before them.
        response_end: text that closes a reply in training data (``""`` when the end-of-text
            token does that job, as for ``alpaca``).
    """

    name: str = ""
    stop_strings: tuple[str, ...] = ()
    response_end: str = ""

    # ------------------------------------------------------------------ single instruction
    def format_instruction(self, instruction: str, input: str | None = None) -> str:
        """The prompt for one instruction (and its optional input); the reply follows it."""
        raise NotImplementedError

    def format_example(self, instruction: str, input: str | None, output: str) -> tuple[str, str]:
        """An instruction fine-tuning example as ``(prompt, response)``: training text is
        ``prompt + response`` (then end-of-text), and only the response is learned."""
        return self.format_instruction(instruction, input), output + self.response_end

    # ------------------------------------------------------------------ chat
    def format_chat(self, messages: Iterable[MessageLike]) -> str:
        """A chat history as one prompt that ends where the assistant's next reply begins.

        The history must not end with an assistant turn (the model writes that one)."""
        msgs = to_messages(messages)
        if not msgs or all(m.role == "system" for m in msgs):
            raise ConfigError("a chat needs at least one user message")
        if msgs[-1].role == "assistant":
            raise ConfigError("a chat prompt must end with a user message (the model writes the reply)")
        if any(m.role == "system" for m in msgs[1:]):
            raise ConfigError("a system message may only come first in a chat")
        return self._format_chat(msgs)

    def _format_chat(self, msgs: list[Message]) -> str:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


#: Each part of a :class:`TemplateStyle` -> the placeholder it holds exactly once (None: it holds none).
PARTS = {"preamble": None, "instruction": "{instruction}", "input": "{input}", "response": "{output}",
         "system": "{system}", "turn_separator": None}


def _fill(part: str, placeholder: str, value: str) -> str:
    """``part`` with its one ``placeholder`` replaced by ``value``. The value is inserted as is
    (braces or other placeholders in user text are never expanded: no ``str.format``)."""
    before, _, after = part.partition(placeholder)
    return before + value + after


class TemplateStyle(PromptStyle):
    """A prompt template made of parts, each holding one placeholder.

    The prompt for an instruction is ``preamble + instruction + input + response-prefix``,
    where the input part appears only when the input is non-empty and the response prefix is
    the response part up to ``{output}``. The training text is the prompt, then the output,
    then the rest of the response part after ``{output}`` (:attr:`response_end`); the
    end-of-text id follows it (added as an id by the collate function, never as text).

    In a chat, a system message replaces the preamble (through the ``system`` part), each
    user turn is an instruction part, each assistant turn a whole response part, and
    ``turn_separator`` goes between a reply and the next user turn.

    Args (all optional; a subclass sets them as class attributes): the style's ``name`` and
    the parts and ``stop_strings`` that :class:`PromptConfig` describes.

    Raises:
        ConfigError: a part without its placeholder, with it twice, or with another part's.
    """

    preamble: str = ""
    instruction: str = "{instruction}"
    input: str = "\n{input}"
    response: str = "\n{output}"
    system: str = "{system}"
    turn_separator: str = ""

    def __init__(self, name: str | None = None, *, preamble: str | None = None, instruction: str | None = None,
                 input: str | None = None, response: str | None = None, system: str | None = None,
                 turn_separator: str | None = None, stop_strings: Sequence[str] | None = None) -> None:
        given = {"name": name, "preamble": preamble, "instruction": instruction, "input": input,
                 "response": response, "system": system, "turn_separator": turn_separator}
        for key, value in given.items():
            if value is not None:
                if not isinstance(value, str):
                    raise ConfigError(f"prompt template: {key} must be a string, got {type(value).__name__}")
                setattr(self, key, value)
        if stop_strings is not None:
            if isinstance(stop_strings, str) or any(not isinstance(s, str) or not s for s in stop_strings):
                raise ConfigError(f"prompt template: stop_strings must be a list of non-empty strings, got {stop_strings!r}")
            self.stop_strings = tuple(stop_strings)
        for part, own in PARTS.items():
            text = getattr(self, part)
            if own is not None and text.count(own) != 1:
                raise ConfigError(f"prompt template {self.name!r}: the {part} part must contain {own} "
                                  f"exactly once, got {text!r}")
            for other in filter(None, PARTS.values()):
                if other != own and other in text:
                    rule = f"may not contain {other}" if own else "may hold no placeholders"
                    raise ConfigError(f"prompt template {self.name!r}: the {part} part {rule}, got {text!r}")
        self.response_end = self.response.partition("{output}")[2]

    @property
    def response_prefix(self) -> str:
        """The text that opens a reply (the response part up to ``{output}``)."""
        return self.response.partition("{output}")[0]

    def format_input(self, instruction: str, input: str | None = None) -> str:
        """The preamble, instruction and (non-empty) input: the prompt without the response prefix."""
        text = self.preamble + _fill(self.instruction, "{instruction}", instruction)
        if input:
            text += _fill(self.input, "{input}", input)
        return text

    def format_instruction(self, instruction: str, input: str | None = None) -> str:
        return self.format_input(instruction, input) + self.response_prefix

    def _format_chat(self, msgs: list[Message]) -> str:
        parts = [self.preamble]
        if msgs[0].role == "system":
            parts, msgs = [_fill(self.system, "{system}", msgs[0].content)], msgs[1:]
        previous = None
        for m in msgs:
            if m.role == "user":
                if previous == "assistant":
                    parts.append(self.turn_separator)
                parts.append(_fill(self.instruction, "{instruction}", m.content))
            else:
                parts.append(_fill(self.response, "{output}", m.content))
            previous = m.role
        return "".join(parts) + self.response_prefix


class AlpacaStyle(TemplateStyle):
    """Stanford Alpaca's template, as the reference recipe (LLMs-from-scratch, chapter 7) writes it::

        {preamble}\n\n### Instruction:\n{instruction}[\n\n### Input:\n{input}]\n\n### Response:\n{output}

    A chat repeats Instruction/Response sections after one preamble (a system message, if
    any, replaces the preamble)."""

    name = "alpaca"
    stop_strings = ("### Instruction:", "### Input:", "### Response:")
    preamble = ("Below is an instruction that describes a task. "
                "Write a response that appropriately completes the request.")
    instruction = "\n\n### Instruction:\n{instruction}"
    input = "\n\n### Input:\n{input}"
    response = "\n\n### Response:\n{output}"


class Phi3Style(TemplateStyle):
    """The Phi-3-like template of the reference recipe's exercise (LLMs-from-scratch, chapter 7)::

        <|user|>\n{instruction}[\n{input}]\n<|assistant|>:\n{output}

    With the GPT-2 vocabulary the markers are ordinary text, not special tokens. A chat puts a
    newline between a reply and the next ``<|user|>`` turn; a system message is a
    ``<|system|>`` turn. ``<|end|>`` (Phi-3's own turn end) also stops a reply."""

    name = "phi3"
    stop_strings = ("<|end|>", "<|user|>", "<|assistant|>", "<|system|>")
    instruction = "<|user|>\n{instruction}"
    input = "\n{input}"
    response = "\n<|assistant|>:\n{output}"
    system = "<|system|>\n{system}\n"
    turn_separator = "\n"


class PlainStyle(PromptStyle):
    """No template for an instruction; a ``User:``/``Assistant:`` transcript for a chat."""

    name = "plain"
    stop_strings = ("\nUser:",)

    def format_instruction(self, instruction: str, input: str | None = None) -> str:
        return f"{instruction}\n\n{input}" if input else instruction

    def format_example(self, instruction: str, input: str | None, output: str) -> tuple[str, str]:
        # Without a template nothing separates prompt from response; a blank line does.
        return self.format_instruction(instruction, input) + "\n\n", output

    def _format_chat(self, msgs: list[Message]) -> str:
        parts = []
        for m in msgs:
            if m.role == "system":
                parts.append(f"{m.content}\n\n")
            else:
                parts.append(f"{'User' if m.role == 'user' else 'Assistant'}: {m.content}\n")
        return "".join(parts) + "Assistant:"


#: The registry: style name -> style. Add one with :func:`register_prompt_style`.
PROMPT_STYLES: dict[str, PromptStyle] = {}


def register_prompt_style(style: PromptStyle) -> PromptStyle:
    """Add a style to :data:`PROMPT_STYLES` (an existing name is an error)."""
    if not style.name:
        raise ConfigError("a prompt style needs a name")
    if style.name in PROMPT_STYLES:
        raise ConfigError(f"prompt style {style.name!r} is already registered")
    PROMPT_STYLES[style.name] = style
    return style


for _style in (AlpacaStyle(), Phi3Style(), PlainStyle()):
    register_prompt_style(_style)


def get_prompt_style(name: str | PromptStyle) -> PromptStyle:
    """The style registered under ``name`` (a style object is returned as is)."""
    if isinstance(name, PromptStyle):
        return name
    try:
        return PROMPT_STYLES[name]
    except KeyError:
        raise ConfigError(
            f"unknown prompt style {name!r}; known styles: {', '.join(PROMPT_STYLES)}"
        ) from None


@dataclass
class PromptConfig:
    """The prompt style of a run: a registered name, or a template of your own.

    Setting any template part (``instruction``, ``input``, ``response``, ``preamble``,
    ``system``, ``turn_separator``, ``stop_strings``) defines a :class:`TemplateStyle` named
    ``style``; unset parts keep :class:`TemplateStyle`'s defaults.
    """

    style: str = "alpaca"
    """A registered style (alpaca, phi3, plain), or the name of the template defined below."""
    preamble: str | None = None
    """Template: text before the first instruction."""
    instruction: str | None = None
    """Template: the instruction part, with {instruction}."""
    input: str | None = None
    """Template: the input part, with {input}, used only when a record's input is non-empty."""
    response: str | None = None
    """Template: the response part, with {output}; text after {output} ends every training response."""
    system: str | None = None
    """Template: how a chat's system message is written, with {system}."""
    turn_separator: str | None = None
    """Template: text between an assistant reply and the next user turn in a chat."""
    stop_strings: list[str] | None = None
    """Template: strings that end a reply when generating."""

    def build(self) -> PromptStyle:
        """The style: a new :class:`TemplateStyle` when a part is set, else the registered one.

        Raises:
            ConfigError: an unknown style name, or a template part without its placeholder.
        """
        if all(getattr(self, k) is None for k in _TEMPLATE_KEYS):
            return get_prompt_style(self.style)
        if self.style in PROMPT_STYLES:
            raise ConfigError(f"prompt.style: {self.style!r} is a registered style; give the template its own name")
        return TemplateStyle(self.style, **{k: getattr(self, k) for k in _TEMPLATE_KEYS})


_TEMPLATE_KEYS = (*PARTS, "stop_strings")


def prompt_style_to_dict(style: PromptStyle) -> dict[str, Any]:
    """What a saved model records of its style: ``{"name": ...}`` for a registered one, the
    whole template otherwise."""
    if PROMPT_STYLES.get(style.name) is style:
        return {"name": style.name}
    if isinstance(style, TemplateStyle):
        data = {key: getattr(style, key) for key in ("name", *_TEMPLATE_KEYS)}
        return {**data, "stop_strings": list(style.stop_strings)}
    raise ConfigError(f"prompt style {style.name!r} is neither registered nor a template: it cannot be saved")


def prompt_style_from_dict(data: Mapping[str, Any], where: str = "prompt style") -> PromptStyle:
    """Undo :func:`prompt_style_to_dict`.

    Raises:
        ConfigError: not a mapping, unknown keys, an unknown name, a bad template.
    """
    if not isinstance(data, Mapping) or not isinstance(data.get("name"), str):
        raise ConfigError(f"{where}: expected a mapping with a 'name', got {data!r}")
    rest = {k: v for k, v in data.items() if k != "name"}
    if not rest:
        try:
            return get_prompt_style(data["name"])
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None
    unknown = sorted(set(rest) - set(_TEMPLATE_KEYS))
    if unknown:
        raise ConfigError(f"{where}: unknown template key(s) {', '.join(unknown)}")
    return TemplateStyle(data["name"], **rest)


def trim_chat_history(
    style: PromptStyle | str,
    messages: Sequence[MessageLike],
    count_tokens: Callable[[str], int],
    max_tokens: int,
) -> list[Message]:
    """Drop the oldest turns until the formatted chat fits in ``max_tokens`` tokens.

    A leading system message and the final user message are always kept; turns go oldest
    first, a user message together with the assistant reply that answered it. When even the
    shortest history is too long it is returned anyway (generation then crops from the left).
    """
    style = get_prompt_style(style)
    msgs = to_messages(messages)
    system = msgs[:1] if msgs and msgs[0].role == "system" else []
    rest = msgs[len(system):]
    while len(rest) > 1 and count_tokens(style.format_chat(system + rest)) > max_tokens:
        rest = rest[1:]
        # Never start the kept history with an orphaned assistant reply.
        while len(rest) > 1 and rest[0].role == "assistant":
            rest = rest[1:]
    return system + rest


def saved_prompt_style(folder: str | os.PathLike[str]) -> PromptStyle | None:
    """The prompt style a model folder records in its ``metadata.json`` (instruction and
    preference tuning write it), or None when the path is no folder or records none.

    Raises:
        ConfigError: a recorded style that cannot be rebuilt (see :func:`prompt_style_from_dict`).
        CheckpointError: a ``metadata.json`` that is not a JSON object.
    """
    path = Path(folder).expanduser() / "metadata.json"
    if not path.is_file():
        return None
    data = read_json_object(path).get("prompt_style")
    return prompt_style_from_dict(data, f"{path}: prompt_style") if data else None


def style_for_model(requested: str | None, model: str, default: str) -> PromptStyle:
    """The style a front end uses for ``model``: the one asked for, else the one the model
    folder records, else ``default``."""
    if requested:
        return get_prompt_style(requested)
    return saved_prompt_style(model) or get_prompt_style(default)
