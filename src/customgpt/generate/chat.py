"""Chat: a conversation kept inside the context window, one streamed reply per user turn."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from customgpt.generate.sampling import SamplingParams
from customgpt.generate.stream import PLAIN_TEXT, GenerationResult, TextStream
from customgpt.prompts import Message, PromptStyle, get_prompt_style, trim_chat_history

if TYPE_CHECKING:
    from customgpt.model import GPT
    from customgpt.tokenizer import Tokenizer


class ChatSession:
    """A conversation with a model: the history, formatted with a prompt style, kept inside
    the context window (oldest turns dropped first), and one streamed reply per user turn.

        chat = ChatSession(model, tokenizer, "alpaca", SamplingParams(temperature=0.7))
        for piece in chat.send("Name three colours."):
            print(piece, end="")

    The reply joins the history when its stream ends, also when it is closed early (then it
    holds what was shown). The style's stop strings are added to ``params.stop``. Messages
    are plain text (:func:`~customgpt.generate.stream.encode_prompt`).
    """

    def __init__(
        self,
        model: GPT,
        tokenizer: Tokenizer,
        style: str | PromptStyle,
        params: SamplingParams | None = None,
        *,
        system: str | None = None,
        use_cache: bool = True,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.style = get_prompt_style(style)
        params = params or SamplingParams()
        self.params = params.replace(stop=tuple(dict.fromkeys(params.stop + self.style.stop_strings)))
        self.system = system
        self.use_cache = use_cache
        self.history: list[Message] = []

    @property
    def prompt_budget(self) -> int:
        """Tokens the formatted history may take: the window minus room for the reply (but
        at least a quarter of the window, so a long reply budget still leaves some history)."""
        ctx = self.model.config.context_length
        return max(ctx - self.params.max_new_tokens, ctx // 4)

    def reset(self) -> None:
        """Forget the conversation."""
        self.history = []

    def prompt_for(self, user_text: str) -> tuple[list[Message], str]:
        """The messages kept for the next reply and the prompt text they format to."""
        system = [Message("system", self.system)] if self.system else []
        messages = system + self.history + [Message("user", user_text)]
        kept = trim_chat_history(
            self.style, messages, lambda text: len(self.tokenizer.encode(text, allowed_special=PLAIN_TEXT)),
            self.prompt_budget,
        )
        return kept, self.style.format_chat(kept)

    def send(self, user_text: str, *, on_context_full: Callable[[], None] | None = None) -> TextStream:
        """Stream the reply to ``user_text``."""
        kept, prompt = self.prompt_for(user_text)
        history = [m for m in kept if m.role != "system"]

        def record(result: GenerationResult) -> None:
            self.history = history + [Message("assistant", result.text)]

        return TextStream(
            self.model,
            self.tokenizer,
            prompt,
            self.params,
            use_cache=self.use_cache,
            on_context_full=on_context_full,
            on_finish=record,
        )
