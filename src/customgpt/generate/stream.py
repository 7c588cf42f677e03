"""Text out of the token loop: stop strings held back until they can no longer match
(:class:`StopStringBuffer`), UTF-8-safe pieces as tokens arrive (:class:`TextStream`,
:func:`stream_text`), and the outcome of a request (:class:`GenerationResult`).

Prompts are text from a user, so :func:`encode_prompt` encodes them as plain text by default
(``<|endoftext|>`` typed in a message is seven ordinary tokens, never the control id): only
a caller that means it (the raw ``generate`` command without a prompt style) allows special
tokens. Outputs never contain ids the tokenizer cannot decode (a model vocabulary padded
past the tokenizer's is masked, see :func:`~customgpt.generate.loop.sampled_vocab_size`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import closing
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from torch import Tensor

from customgpt.generate.loop import FinishReason, _generate_tokens, check_prompt
from customgpt.generate.sampling import SamplingParams

if TYPE_CHECKING:
    from customgpt.model import GPT
    from customgpt.tokenizer import AllowedSpecial, Tokenizer

#: How prompt text is encoded unless a caller says otherwise: plain text, no special ids.
PLAIN_TEXT: AllowedSpecial = "none"


class StopStringBuffer:
    """Releases streamed text, except what could still turn out to be a stop string.

    :meth:`push` returns the text that is safe to show: everything before a stop string once
    one appears (then :attr:`stopped` is True and nothing more is released), otherwise all but
    the longest tail that is the beginning of some stop string.
    """

    def __init__(self, stop: Sequence[str]) -> None:
        self.stop = tuple(stop)
        self.pending = ""
        self.stopped = False

    def push(self, piece: str) -> str:
        if self.stopped:
            return ""
        if not self.stop:
            return piece
        text = self.pending + piece
        # Every match starts inside the held text: a released character was never part of
        # a possible stop string (else it would have been held).
        hits = [i for i in (text.find(s) for s in self.stop) if i >= 0]
        if hits:
            self.stopped = True
            self.pending = ""
            return text[: min(hits)]
        hold = 0
        for k in range(min(len(text), max(len(s) for s in self.stop) - 1), 0, -1):
            tail = text[-k:]
            if any(s.startswith(tail) for s in self.stop):
                hold = k
                break
        self.pending = text[len(text) - hold :]
        return text[: len(text) - hold]

    def flush(self) -> str:
        """The stream ended without completing a stop string: release what was held."""
        out, self.pending = ("" if self.stopped else self.pending), ""
        return out


@dataclass
class GenerationResult:
    """The outcome of one generation.

    Attributes:
        text: the output text (without a stop string or the end-of-text token).
        token_ids: the generated ids, without a final end-of-text token (ids that spelled a
            stop string are included: tokens and text need not align at a stop string).
        prompt_tokens: tokens in the prompt as given (before any cropping).
        completion_tokens: tokens sampled (a final end-of-text token included).
        finish_reason: ``"stop"`` (stop string), ``"length"`` (budget), ``"eot"`` (end-of-text
            token) or ``"interrupted"`` (the caller closed the stream).
        seconds: wall time from the start of the request to its end.
        time_to_first_token: seconds until the first token was sampled (the prefill).
        tokens_per_second: ``completion_tokens / seconds``.
        context_cropped: the window had to be cropped from the left at some point.
    """

    text: str
    token_ids: list[int]
    prompt_tokens: int
    completion_tokens: int
    finish_reason: FinishReason
    seconds: float
    time_to_first_token: float | None = None
    context_cropped: bool = False
    tokens_per_second: float = field(init=False)

    def __post_init__(self) -> None:
        self.tokens_per_second = self.completion_tokens / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def encode_prompt(
    tokenizer: Tokenizer, prompt: str | Sequence[int], *, allowed_special: AllowedSpecial = PLAIN_TEXT
) -> list[int]:
    """Token ids of a prompt: text is encoded as plain text (``allowed_special="none"``: a
    user who types ``<|endoftext|>`` gets those characters, never the end-of-text id); ids
    are taken as they are. An empty prompt becomes the end-of-text token alone, which is how
    GPT-2 samples unconditionally (it was trained with that token between documents).

    This is the encoder every front end (CLI, chat, web app, server) uses for user text; a
    prompt template is plain text in the GPT-2 vocabulary, so a formatted chat prompt is
    encoded the same way. ``allowed_special`` (as in :meth:`Tokenizer.encode`) is for a
    caller that deliberately lets its text hold special tokens.
    """
    if isinstance(prompt, str):
        ids = tokenizer.encode(prompt, allowed_special=allowed_special)
    elif isinstance(prompt, Tensor):
        ids = prompt.tolist()
    else:
        ids = list(prompt)
    return ids or [tokenizer.eot_id]


class TextStream:
    """Iterate to receive text pieces as they are generated; :attr:`result` is set at the end.

        stream = stream_text(model, tokenizer, "Once upon a time", SamplingParams(seed=1))
        for piece in stream:
            print(piece, end="", flush=True)
        print(stream.result.finish_reason, stream.result.tokens_per_second)

    :meth:`close` stops early (the result then says ``"interrupted"``). The pieces are UTF-8
    safe (a character split over tokens comes out whole) and never include any part of a
    stop string. ``on_finish`` is called with the result once, however the stream ends.
    """

    def __init__(
        self,
        model: GPT,
        tokenizer: Tokenizer,
        prompt: str | Sequence[int],
        params: SamplingParams | None = None,
        *,
        use_cache: bool = True,
        on_context_full: Callable[[], None] | None = None,
        on_finish: Callable[[GenerationResult], None] | None = None,
        allowed_special: AllowedSpecial = PLAIN_TEXT,
    ) -> None:
        self.params = params or SamplingParams()
        self.on_finish = on_finish
        ids = encode_prompt(tokenizer, prompt, allowed_special=allowed_special)
        self.prompt_ids = check_prompt(ids, model.config.vocab_size)
        self.tokenizer = tokenizer
        self.on_context_full = on_context_full
        self.context_cropped = False
        self.result: GenerationResult | None = None
        self._text: list[str] = []
        self._token_ids: list[int] = []
        self._sampled = 0
        self._t_start: float | None = None
        self._t_first: float | None = None
        self._steps = _generate_tokens(
            model, self.prompt_ids, self.params, tokenizer.eot_id, use_cache, None, vocab_size=tokenizer.vocab_size
        )
        self._pieces = self._run()

    def __iter__(self) -> TextStream:
        return self

    def __next__(self) -> str:
        return next(self._pieces)

    def _run(self) -> Iterator[str]:
        self._t_start = time.perf_counter()
        decoder = self.tokenizer.incremental_decoder()
        stops = StopStringBuffer(self.params.stop)
        reason: FinishReason = "length"
        with closing(self._steps):
            for step in self._steps:
                if self._t_first is None:
                    self._t_first = time.perf_counter()
                self._sampled += 1
                if step.context_cropped and not self.context_cropped:
                    self.context_cropped = True
                    if self.on_context_full is not None:
                        self.on_context_full()
                if step.finish_reason == "eot":
                    reason = "eot"
                    break
                self._token_ids.append(step.token_id)
                piece = stops.push(decoder.feed(step.token_id))
                if piece:
                    self._text.append(piece)
                    yield piece
                if stops.stopped:
                    reason = "stop"
                    break
        if not stops.stopped:
            piece = stops.push(decoder.flush()) + stops.flush()
            if piece:
                self._text.append(piece)
                yield piece
        self._finish(reason)

    def _finish(self, reason: FinishReason) -> None:
        now = time.perf_counter()
        start = self._t_start if self._t_start is not None else now
        self.result = GenerationResult(
            text="".join(self._text),
            token_ids=list(self._token_ids),
            prompt_tokens=len(self.prompt_ids),
            completion_tokens=self._sampled,
            finish_reason=reason,
            seconds=now - start,
            time_to_first_token=None if self._t_first is None else self._t_first - start,
            context_cropped=self.context_cropped,
        )
        if self.on_finish is not None:
            self.on_finish(self.result)

    def close(self) -> None:
        """Stop generating now (the model's cache is released for the next request)."""
        self._pieces.close()
        self._steps.close()
        if self.result is None:
            self._finish("interrupted")

    def collect(self) -> GenerationResult:
        """Run to the end and return the result."""
        for _ in self:
            pass
        assert self.result is not None
        return self.result


def stream_text(
    model: GPT,
    tokenizer: Tokenizer,
    prompt: str | Sequence[int],
    params: SamplingParams | None = None,
    *,
    use_cache: bool = True,
    on_context_full: Callable[[], None] | None = None,
    allowed_special: AllowedSpecial = PLAIN_TEXT,
) -> TextStream:
    """Stream the continuation of ``prompt`` (text, or token ids) as text pieces.

    ``on_context_full`` is called once, the first time prompt + output no longer fit the
    context window and generation goes on from a window cropped on the left. Text is encoded
    by :func:`encode_prompt` (plain text unless ``allowed_special`` says otherwise).
    """
    return TextStream(model, tokenizer, prompt, params, use_cache=use_cache, on_context_full=on_context_full,
                      allowed_special=allowed_special)


def generate_text(
    model: GPT,
    tokenizer: Tokenizer,
    prompt: str | Sequence[int],
    params: SamplingParams | None = None,
    *,
    use_cache: bool = True,
    allowed_special: AllowedSpecial = PLAIN_TEXT,
) -> GenerationResult:
    """Generate to the end and return the :class:`GenerationResult` (no streaming)."""
    return stream_text(model, tokenizer, prompt, params, use_cache=use_cache, allowed_special=allowed_special).collect()
