"""What the web app does, without the web: loading models (keeping errors for the page), the
chat settings, a chat reply generated in a worker thread with a stop flag (the conversation
itself is a :class:`~customgpt.generate.ChatSession`), and the classification table.
:mod:`customgpt.ui.app` wires these to Chainlit; everything here runs (and is tested)
without a browser.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from customgpt.checkpoints import load_model, resolve_model_spec
from customgpt.classifier import HEAD_CONFIG, load_classifier, predict_texts
from customgpt.device import resolve_device
from customgpt.errors import ConfigError, CustomGPTError
from customgpt.generate import ChatSession, GenerationResult, SamplingParams
from customgpt.prompts import Message, PromptStyle, style_for_model
from customgpt.tokenizer import Tokenizer, get_tokenizer
from customgpt.ui.config import AppConfig

log = logging.getLogger("customgpt.ui")


# =========================================================================== loading


@dataclass
class LoadedModel:
    """A model the app serves, or the reason it could not be loaded.

    Attributes:
        role: ``"chat"``, ``"compare"`` or ``"classifier"`` (the option that named it).
        spec: what the user gave.
        model: the loaded module (None when loading failed).
        description: where it came from (``"customgpt checkpoint ..."``, ``"preset ..."``).
        error: why loading failed (None when it did not).
        info: a classifier's ``classifier.json`` (labels, max_length).
        style: a chat model's prompt style.
        lock: one generation (or classification) at a time per model: the KV cache lives in
            the model, so two sessions must not decode with it at once.
    """

    role: str
    spec: str
    model: Any = None
    description: str = ""
    error: str | None = None
    info: dict[str, Any] = field(default_factory=dict)
    style: PromptStyle | None = None
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def ok(self) -> bool:
        return self.model is not None

    @property
    def context_length(self) -> int:
        return int(self.model.config.context_length)

    def summary(self) -> str:
        """One markdown line for the welcome message."""
        if not self.ok:
            return f"- **{self.role}** `{self.spec}`: **failed to load**: {self.error}"
        n = sum(p.numel() for p in self.model.parameters())
        device = next(self.model.parameters()).device
        if self.role == "classifier":
            extra = f", classes: {', '.join(str(x) for x in self.info.get('labels', []))}"
        else:
            extra = f", context window {self.context_length} tokens, prompt style {self.style.name}"
        return f"- **{self.role}** `{self.spec}`: {self.description}; {n / 1e6:.1f}M parameters on {device}{extra}"


def _load(loaded: LoadedModel, what: str, load: Callable[[], None]) -> LoadedModel:
    """Run ``load`` (which fills ``loaded``); any failure is kept in ``loaded.error`` (our
    errors as they are, anything else with its type) and logged."""
    try:
        load()
    except Exception as exc:  # noqa: BLE001 - the page shows it and the app keeps running
        ours = isinstance(exc, CustomGPTError)
        loaded.error = str(exc) if ours else f"{type(exc).__name__}: {exc}"
        log.error("cannot load %s %s: %s", what, loaded.spec, loaded.error, exc_info=not ours)
    return loaded


def load_chat_model(role: str, spec: str, device: torch.device, tokenizer_vocab_size: int | None = None,
                    prompt_style: str | None = None) -> LoadedModel:
    """Load a language model for chatting; any failure is kept in ``error`` (and logged).

    ``tokenizer_vocab_size``: a model whose vocabulary is smaller than the tokenizer's is
    refused here (the tokenizer would give it ids it has no embedding for). ``prompt_style``:
    the style asked for; None: the one the model's folder records, else alpaca."""
    loaded = LoadedModel(role, spec)

    def load() -> None:
        if (Path(spec).expanduser() / HEAD_CONFIG).is_file():  # the file that makes a folder a classifier
            raise ConfigError(
                f"{spec} is a classifier (it holds {HEAD_CONFIG}), not a language model: give it "
                f"with --classifier, and a language model with --{role}"
            )
        loaded.style = style_for_model(prompt_style, spec, "alpaca")
        source = resolve_model_spec(spec)
        loaded.description = source.describe()
        seed = 0 if source.kind == "preset" else None
        loaded.model = load_model(spec, device=device, seed=seed, tokenizer_vocab_size=tokenizer_vocab_size).eval()
        log.info("%s model %s: %s", role, spec, loaded.description)

    return _load(loaded, f"the {role} model", load)


def load_classifier_model(spec: str, device: torch.device) -> LoadedModel:
    """Load a classifier folder; any failure is kept in ``error`` (and logged)."""
    loaded = LoadedModel("classifier", spec, description="a customgpt classifier")

    def load() -> None:
        loaded.model, loaded.info = load_classifier(spec, device=device)
        log.info("classifier %s: labels %s", spec, loaded.info.get("labels"))

    return _load(loaded, "the classifier", load)


@dataclass
class AppState:
    """Everything loaded at start: the config, the models (or their errors), the tokenizer."""

    config: AppConfig
    tokenizer: Tokenizer
    chat: LoadedModel | None = None
    compare: LoadedModel | None = None
    classifier: LoadedModel | None = None
    device: str = "cpu"
    error: str | None = None  # a failure before any model (a bad device)

    @classmethod
    def load(cls, config: AppConfig) -> AppState:
        tokenizer = get_tokenizer()
        error = None
        try:
            device = resolve_device(config.device)
        except CustomGPTError as exc:
            log.error("%s; using the CPU", exc)
            device, error = resolve_device("cpu"), str(exc)
        state = cls(config, tokenizer, device=str(device), error=error)
        if config.chat:
            state.chat = load_chat_model("chat", config.chat, device, tokenizer.vocab_size, config.prompt_style)
        if config.chat and config.compare:
            state.compare = load_chat_model("compare", config.compare, device, tokenizer.vocab_size,
                                            config.prompt_style)
        if config.classifier:
            state.classifier = load_classifier_model(config.classifier, device)
        return state

    def summary(self) -> list[str]:
        """Markdown lines: the models loaded (or why not)."""
        lines = [m.summary() for m in (self.chat, self.compare, self.classifier) if m is not None]
        if self.error:
            lines.append(f"- **warning**: {self.error}")
        return lines


# =========================================================================== settings


@dataclass(frozen=True)
class Setting:
    """One slider or number of the settings panel: its id, label, start value and range."""

    id: str
    label: str
    initial: float
    min: float
    max: float
    step: float
    description: str
    integer: bool = False


def chat_settings(context_length: int) -> list[Setting]:
    """The settings panel. The values start where a small model gives sensible text, and
    max new tokens goes up to the model's context window."""
    limit = max(1, int(context_length))
    return [
        Setting("temperature", "Temperature", 0.7, 0.0, 2.0, 0.05,
                "0 = greedy: always the most likely token; higher = more varied"),
        Setting("top_k", "Top-k", 50, 0, 200, 1, "sample among the k most likely tokens (0 = all)", True),
        Setting("top_p", "Top-p", 0.95, 0.05, 1.0, 0.05,
                "sample among the most likely tokens that reach this probability (1 = all)"),
        Setting("repetition_penalty", "Repetition penalty", 1.1, 1.0, 2.0, 0.05,
                "> 1 makes tokens already in the conversation less likely (1 = off)"),
        Setting("max_new_tokens", "Max new tokens", min(256, max(1, limit // 2)), 1, limit, 1,
                "the longest reply, in tokens", True),
    ]


#: The seed box: a number >= 0 makes replies reproducible; -1 draws a new seed per message.
SEED_SETTING = Setting("seed", "Seed", -1, -1, 2**63 - 1, 1, "-1 = a new random seed for every message", True)
RAW_SETTING_ID = "raw_text"


def sampling_params(values: Mapping[str, Any], context_length: int, extra_stop: Sequence[str] = ()) -> SamplingParams:
    """:class:`~customgpt.generate.SamplingParams` from the settings panel's values.

    Missing or unreadable values take the panel's start values; numbers are clamped into the
    panel's ranges (a browser can send anything). A seed of -1 (or none) becomes a fresh
    random seed, so the reply can be reproduced from the seed shown in the log.
    """
    out: dict[str, Any] = {}
    for s in chat_settings(context_length):
        value = _number(values.get(s.id), s.initial)
        value = min(max(value, s.min), s.max)
        out[s.id] = int(round(value)) if s.integer else float(value)
    seed = _number(values.get("seed"), -1)
    if seed < 0 or seed > SEED_SETTING.max:
        seed = random.randrange(2**31)
    return SamplingParams(**out, seed=int(seed), stop=tuple(dict.fromkeys(extra_stop)))


def _number(value: Any, default: float) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return default
    return number if math.isfinite(number) and not isinstance(value, bool) else default


# =========================================================================== generation


class Generation:
    """One chat reply generated in a worker thread, read as an async stream of text pieces.

        gen = Generation(session, "Hello", params, lock)
        async for piece in gen:
            await message.stream_token(piece)
        gen.result.finish_reason

    ``session`` is the user's :class:`~customgpt.generate.ChatSession` (the history inside
    the context window, user text encoded as plain text); ``params`` are this message's
    settings. The worker checks :attr:`stop_event` after each piece, so :meth:`stop` (or
    cancelling the task that iterates) ends the reply within one token; the reply then joins
    the history as far as it was handed out (what the page showed). The reply starts inside
    the model's lock, after the previous reply of the session was recorded. Notices (history
    left out, window full) arrive through ``on_notice`` on the event loop. Pieces go out at
    most once per ``min_interval`` seconds, those made meanwhile together (a page redrawn for
    every token of a fast model would take the CPU the model needs); the first at once.
    """

    def __init__(
        self,
        session: ChatSession,
        user_text: str,
        params: SamplingParams,
        lock: threading.Lock,
        on_notice: Callable[[str], Any] | None = None,
        min_interval: float = 0.03,
    ) -> None:
        self.session = session
        self.user_text = user_text
        self.params = params
        self.lock = lock
        self.on_notice = on_notice
        self.min_interval = min_interval
        self.stop_event = threading.Event()
        self.result: GenerationResult | None = None
        self.error: BaseException | None = None
        self.prompt_ids: list[int] = []
        self.time_to_first_piece: float | None = None
        # What the caller received, so that a stopped reply joins the history as it was shown.
        self._shown: list[str] = []
        self._shown_lock = threading.Lock()
        self._queue: asyncio.Queue | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def stop(self) -> None:
        self.stop_event.set()

    def _put(self, kind: str, value: Any) -> None:
        assert self._loop is not None and self._queue is not None
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, (kind, value))
        except RuntimeError:  # the loop closed (the server is stopping)
            self.stop_event.set()

    def _work(self) -> None:
        try:
            with self.lock:
                session = self.session
                # This message's settings, with the style's stop strings (as the session adds them).
                session.params = self.params.replace(
                    stop=tuple(dict.fromkeys(self.params.stop + session.style.stop_strings)))
                kept, _ = session.prompt_for(self.user_text)
                dropped = len(session.history) + 1 - sum(m.role != "system" for m in kept)
                if dropped:
                    self._put("notice", f"The conversation no longer fits in the model's context window "
                                        f"({session.model.config.context_length} tokens): the oldest "
                                        f"{dropped} message(s) were left out of the prompt.")

                def context_full() -> None:
                    self._put("notice", "The prompt and reply outgrew the context window: generation goes "
                                        "on from a window cropped on the left.")

                stream = session.send(self.user_text, on_context_full=context_full)
                self.prompt_ids = list(stream.prompt_ids)
                chunk, sent = "", 0.0
                try:
                    for piece in stream:
                        chunk += piece
                        if time.perf_counter() - sent >= self.min_interval:
                            self._put("piece", chunk)
                            chunk, sent = "", time.perf_counter()
                        if self.stop_event.is_set():
                            break
                    else:
                        if chunk:
                            self._put("piece", chunk)
                finally:
                    stream.close()  # the session records the reply
                    self.result = stream.result
                    with self._shown_lock:
                        if self.stop_event.is_set() and session.history and session.history[-1].role == "assistant":
                            session.history[-1] = Message("assistant", "".join(self._shown))
        except BaseException as exc:  # noqa: BLE001 - reported to the page, not lost in a thread
            self.error = exc
            self._put("error", exc)
        else:
            self._put("end", None)

    def __aiter__(self):
        return self._pieces()

    async def _pieces(self):
        self._loop = asyncio.get_running_loop()
        self._queue = asyncio.Queue()
        start = time.perf_counter()
        self._thread = threading.Thread(target=self._work, name="customgpt-ui-generate", daemon=True)
        self._thread.start()
        try:
            while True:
                kind, value = await self._queue.get()
                if kind == "piece":
                    if self.time_to_first_piece is None:
                        self.time_to_first_piece = time.perf_counter() - start
                    with self._shown_lock:
                        if self.stop_event.is_set():
                            return
                        self._shown.append(value)
                    yield value
                elif kind == "notice":
                    notice = self.on_notice(value) if self.on_notice is not None else None
                    if asyncio.iscoroutine(notice):
                        await notice
                elif kind == "error":
                    raise value
                else:
                    return
        finally:
            self.stop_event.set()  # cancelled (the stop button) or finished: the worker ends

    async def wait(self, timeout: float | None = None) -> None:
        """Wait until the worker thread has ended (it ends within one token of a stop)."""
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, timeout)


# =========================================================================== classification


def classify_lines(loaded: LoadedModel, tokenizer: Tokenizer, text: str) -> tuple[list[str], torch.Tensor]:
    """Classify each non-empty line of ``text`` (the whole text if it has one line):
    (the lines, probabilities (N, K))."""
    lines = [line.strip() for line in text.splitlines() if line.strip()] or [text.strip()]
    with loaded.lock:
        probs = predict_texts(
            loaded.model, lines, lambda t: tokenizer.encode(t, allowed_special="none"),
            max_length=int(loaded.info.get("max_length", 1024)),
        )
    return lines, probs


_MARKDOWN_SPECIAL = set("\\`*_{}[]()#+-.!|<>~")


def escape_markdown(text: str) -> str:
    """Text shown as itself in Markdown: special characters backslash-escaped, lines joined."""
    text = " ".join(text.split())
    return "".join("\\" + ch if ch in _MARKDOWN_SPECIAL else ch for ch in text)


def _bar(p: float, width: int = 20) -> str:
    filled = int(round(p * width))
    return "█" * filled + "░" * (width - filled)


def classification_markdown(lines: Sequence[str], probs: Any, labels: Sequence[str], max_chars: int = 60) -> str:
    """The result as Markdown: for one text, its label and a bar per class; for several,
    one table row per text with its label and every class's probability."""
    labels = [str(x) for x in labels]
    rows = [[float(v) for v in row] for row in probs]
    if len(lines) == 1:
        row = rows[0]
        best = max(range(len(row)), key=row.__getitem__)
        out = [f"**{escape_markdown(labels[best])}** ({row[best]:.1%})", "", "| class | probability | |",
               "|---|---:|---|"]
        for k, label in enumerate(labels):
            out.append(f"| {escape_markdown(label)} | {row[k]:.1%} | `{_bar(row[k])}` |")
        return "\n".join(out)
    head = "| # | text | label | " + " | ".join(f"p({escape_markdown(lab)})" for lab in labels) + " |"
    out = [head, "|---:|---|---|" + "---:|" * len(labels)]
    for i, (line, row) in enumerate(zip(lines, rows), 1):
        best = max(range(len(row)), key=row.__getitem__)
        shown = line if len(line) <= max_chars else line[: max_chars - 1] + "…"
        out.append(f"| {i} | {escape_markdown(shown)} | **{escape_markdown(labels[best])}** | "
                   + " | ".join(f"{p:.1%}" for p in row) + " |")
    return "\n".join(out)
