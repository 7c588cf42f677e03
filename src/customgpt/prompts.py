"""Prompt styles: the ONE place a prompt template is written.

A :class:`PromptStyle` turns an instruction (with an optional input) or a chat history into
the text a model continues, and knows the strings that mark the end of its reply. Generation
(CLI, UI, server) and instruction fine-tuning both import the templates from here, so the
text a model is trained on and the text it is prompted with cannot drift apart.

Styles:

* ``alpaca``: "Below is an instruction that describes a task..." with ``### Instruction:``,
  ``### Input:`` and ``### Response:`` sections (the Stanford Alpaca format).
* ``phi3``: ``<|user|>\\n...<|end|>\\n<|assistant|>\\n`` turns (the Phi-3 chat format). With the
  GPT-2 vocabulary the markers are ordinary text, not special tokens.
* ``plain``: no template for a single instruction (the text is continued as is); a chat is a
  ``User:`` / ``Assistant:`` transcript, which base models continue reasonably.

A chat history is a list of :class:`Message` (or ``{"role": ..., "content": ...}`` mappings,
as in OpenAI's API) with roles ``system``, ``user`` and ``assistant``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from customgpt.errors import ConfigError

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
        for m in msgs[1:]:
            if m.role == "system":
                raise ConfigError("a system message may only come first in a chat")
        return self._format_chat(msgs)

    def _format_chat(self, msgs: list[Message]) -> str:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


ALPACA_PREAMBLE = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request."
)


class AlpacaStyle(PromptStyle):
    """Stanford Alpaca's template. A chat repeats Instruction/Response sections after one
    preamble (a system message, if any, replaces the preamble)."""

    name = "alpaca"
    stop_strings = ("### Instruction:", "### Input:", "### Response:")
    response_end = ""

    def format_instruction(self, instruction: str, input: str | None = None) -> str:
        text = f"{ALPACA_PREAMBLE}\n\n### Instruction:\n{instruction}"
        if input:
            text += f"\n\n### Input:\n{input}"
        return text + "\n\n### Response:\n"

    def _format_chat(self, msgs: list[Message]) -> str:
        preamble = ALPACA_PREAMBLE
        if msgs[0].role == "system":
            preamble, msgs = msgs[0].content, msgs[1:]
        parts = [preamble]
        for m in msgs:
            if m.role == "user":
                parts.append(f"\n\n### Instruction:\n{m.content}")
            else:
                parts.append(f"\n\n### Response:\n{m.content}")
        return "".join(parts) + "\n\n### Response:\n"


class Phi3Style(PromptStyle):
    """Phi-3's chat template: ``<|user|>\\n{text}<|end|>\\n<|assistant|>\\n{reply}<|end|>\\n``."""

    name = "phi3"
    stop_strings = ("<|end|>", "<|user|>", "<|assistant|>", "<|system|>")
    response_end = "<|end|>"

    def format_instruction(self, instruction: str, input: str | None = None) -> str:
        content = f"{instruction}\n{input}" if input else instruction
        return f"<|user|>\n{content}<|end|>\n<|assistant|>\n"

    def _format_chat(self, msgs: list[Message]) -> str:
        parts = [f"<|{m.role}|>\n{m.content}<|end|>\n" for m in msgs]
        return "".join(parts) + "<|assistant|>\n"


class PlainStyle(PromptStyle):
    """No template for an instruction; a ``User:``/``Assistant:`` transcript for a chat."""

    name = "plain"
    stop_strings = ("\nUser:",)
    response_end = ""

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


def list_prompt_styles() -> list[str]:
    return list(PROMPT_STYLES)


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
