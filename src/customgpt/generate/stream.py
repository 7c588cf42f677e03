"""Text out of the token loop: stop strings held back until they can no longer match
(:class:`StopStringBuffer`), UTF-8-safe pieces as tokens arrive (:class:`TextStream`), and
the outcome of a request (:class:`GenerationResult`)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import closing
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from torch import Tensor

from customgpt.generate.loop import FinishReason, check_prompt, token_loop
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


def encode_prompt(
    tokenizer: Tokenizer, prompt: str | Sequence[int], *, allowed_special: AllowedSpecial = PLAIN_TEXT
) -> list[int]:
    """Token ids of a prompt, the encoder of every front end: text is plain text (a user who
    types ``<|endoftext|>`` gets those characters, never the end-of-text id) unless the
    caller's ``allowed_special`` (as in :meth:`Tokenizer.encode`) says otherwise; ids are
    taken as they are. An empty prompt becomes the end-of-text token alone, which is how
    GPT-2 samples unconditionally (it was trained with that token between documents).
    """
    if isinstance(prompt, str):
        ids = tokenizer.encode(prompt, allowed_special=allowed_special)
    elif isinstance(prompt, Tensor):
        ids = prompt.tolist()
    else:
        ids = list(prompt)
    return ids or [tokenizer.eot_id]


class RowOutput:
    """One row's output as its tokens arrive: the ids, the text (UTF-8 safe, cut before a
    stop string; only with a tokenizer) and, once finished, why. Shared by the streams, batch
    generation and the server's batching engine."""

    def __init__(self, prompt_tokens: int, params: SamplingParams, eot_id: int,
                 tokenizer: Tokenizer | None, context_length: int) -> None:
        self.prompt_tokens = prompt_tokens
        self.params = params
        self.eot_id = eot_id
        self.decoder = tokenizer.incremental_decoder() if tokenizer is not None else None
        self.stops = StopStringBuffer(params.stop)
        self.context_length = context_length
        self.text: list[str] = []
        self.token_ids: list[int] = []
        self.sampled = 0
        self.context_cropped = False
        self.reason: FinishReason | None = None
        self.t_start: float | None = None  # when the token loop started
        self.t_first: float | None = None

    def add(self, token: int) -> str:
        """Take the next sampled token; returns the text it releases."""
        if self.t_first is None:
            self.t_first = time.perf_counter()
        # It was predicted from the prompt and the tokens before it; past the window, cropped.
        self.context_cropped |= self.prompt_tokens + self.sampled > self.context_length
        self.sampled += 1
        if self.params.stop_at_eot and token == self.eot_id:
            self.reason = "eot"
            return ""
        self.token_ids.append(token)
        piece = ""
        if self.decoder is not None:
            piece = self.stops.push(self.decoder.feed(token))
            self.text.append(piece)
            if self.stops.stopped:
                self.reason = "stop"
        if self.reason is None and self.sampled == self.params.max_new_tokens:
            self.reason = "length"
        return piece

    def flush(self) -> str:
        """The text held back at the end (a partial character or stop string)."""
        if self.decoder is None or self.stops.stopped:
            return ""
        piece = self.stops.push(self.decoder.flush()) + self.stops.flush()
        self.text.append(piece)
        return piece

    def result(self) -> GenerationResult:
        now = time.perf_counter()
        start = self.t_start if self.t_start is not None else now
        return GenerationResult(
            text="".join(self.text),
            token_ids=list(self.token_ids),
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.sampled,
            finish_reason=self.reason or "length",
            seconds=now - start,
            time_to_first_token=None if self.t_first is None else self.t_first - start,
            context_cropped=self.context_cropped,
        )


def _run_rows(model: GPT, rows: list[list[int]], outputs: list[RowOutput], params: SamplingParams,
              **loop_options: Any) -> Iterator[list[str]]:
    """The token loop, each row's tokens fed to its :class:`RowOutput` until it finishes; yields
    each step's new text per row and ends when every row has finished."""
    t_start = time.perf_counter()
    for out in outputs:
        out.t_start = t_start
    loop = token_loop(model, rows, params, **loop_options)
    with closing(loop):
        for tokens in loop:
            yield [out.add(token) if out.reason is None else "" for out, token in zip(outputs, tokens)]
            if all(out.reason is not None for out in outputs):
                return


class TextStream:
    """Stream the continuation of ``prompt`` (text, or token ids) as text pieces; at the end
    :attr:`result` holds the :class:`GenerationResult`. :func:`stream_text` is this class.

        stream = stream_text(model, tokenizer, "Once upon a time", SamplingParams(seed=1))
        for piece in stream:
            print(piece, end="", flush=True)
        print(stream.result.finish_reason, stream.result.tokens_per_second)

    :meth:`close` stops early (the result then says ``"interrupted"``). The pieces are UTF-8
    safe (a character split over tokens comes out whole) and never include any part of a
    stop string. Text is encoded by :func:`encode_prompt` (plain text unless
    ``allowed_special`` says otherwise). ``on_context_full`` is called once, the first time
    prompt + output no longer fit the context window and generation goes on from a window
    cropped on the left; ``on_finish`` is called with the result once, however the stream ends.

    Raises:
        GenerationError: the prompt holds an id outside the vocabulary.
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
        self.on_context_full = on_context_full
        self.on_finish = on_finish
        ids = encode_prompt(tokenizer, prompt, allowed_special=allowed_special)
        self.prompt_ids = check_prompt(ids, model.config.vocab_size)
        self.result: GenerationResult | None = None
        ctx = model.config.context_length
        self._row = RowOutput(len(self.prompt_ids), self.params, tokenizer.eot_id, tokenizer, ctx)
        self._steps = _run_rows(model, [self.prompt_ids], [self._row], self.params, use_cache=use_cache,
                                vocab_size=tokenizer.vocab_size)
        self._pieces = self._run()

    def __iter__(self) -> TextStream:
        return self

    def __next__(self) -> str:
        return next(self._pieces)

    def _run(self) -> Iterator[str]:
        notify = self.on_context_full
        for (piece,) in self._steps:
            if notify is not None and self._row.context_cropped:
                notify()
                notify = None
            if piece:
                yield piece
        piece = self._row.flush()
        if piece:
            yield piece
        self._finish()

    def _finish(self) -> None:
        self.result = self._row.result()
        if self.on_finish is not None:
            self.on_finish(self.result)

    def close(self) -> None:
        """Stop generating now (the model's cache is released for the next request)."""
        self._pieces.close()
        self._steps.close()
        if self.result is None:
            self._row.reason = "interrupted"
            self._finish()

    def collect(self) -> GenerationResult:
        """Run to the end and return the result."""
        for _ in self:
            pass
        assert self.result is not None
        return self.result


#: Stream the continuation of a prompt: the :class:`TextStream` class under a function's name.
stream_text = TextStream


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
    return TextStream(model, tokenizer, prompt, params, use_cache=use_cache,
                      allowed_special=allowed_special).collect()
