"""The batch engine: every model forward of the server runs in ONE worker thread, which
decodes the running requests together, one token per row per step, as rows of one KV cache
(docs/serve.md, "Batched decoding", says how rows are laid out, join, leave and share the window).

Requests come in through :meth:`BatchEngine.submit` (from the asyncio event loop or any
thread) and wait in a bounded queue (full: :class:`QueueFullError`, the server's 429). Results
go back as events (:class:`TokenEvent`, :class:`FinishEvent`, :class:`ErrorEvent`) on an
:class:`asyncio.Queue` per request, posted with ``loop.call_soon_threadsafe``. Other model work
(embeddings, classification) runs on the same thread between decode steps through
:meth:`BatchEngine.call`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from customgpt.errors import CustomGPTError
from customgpt.generate import (
    CPUDecodeStep,
    SamplingParams,
    cpu_decode_unsupported,
    lm_head_for_generation,
    make_generator,
    sample,
    sampled_vocab_size,
)
from customgpt.generate.sampling import TokenStats
from customgpt.generate.stream import RowOutput

if TYPE_CHECKING:
    from customgpt.model import GPT, KVCache
    from customgpt.tokenizer import Tokenizer


class QueueFullError(CustomGPTError):
    """The engine's waiting queue is full (the server answers 429)."""


class EngineStoppedError(CustomGPTError):
    """The engine is not running."""


# --------------------------------------------------------------------------- requests and events


@dataclass
class GenerationJob:
    """One generation request, as the engine runs it.

    Attributes:
        prompt_ids: the prompt's token ids (1 ..= context_length of them).
        params: sampling; ``max_new_tokens`` must leave the prompt plus output within the
            window plus one (``len(prompt_ids) + max_new_tokens <= context_length + 1``: the
            last token is sampled, never fed back).
        logprobs: None, or how many top alternatives to return with each generated token's
            log-probability (0: the chosen token's only).
        prompt_logprobs: None, or the same for the prompt's tokens (``echo`` in the API).
    """

    prompt_ids: list[int]
    params: SamplingParams
    logprobs: int | None = None
    prompt_logprobs: int | None = None


@dataclass
class TokenLogprob:
    """The log-probability (natural log, the model's own distribution before penalties,
    temperature and filters) of one token, and the ``top`` alternatives as (id, logprob).
    ``logprob`` None: a prompt's first token, which nothing predicts."""

    token_id: int
    logprob: float | None
    top: list[tuple[int, float]]


@dataclass
class TokenEvent:
    """A generated token: ``text`` is the new text it releases (may be empty while a
    multi-byte character or a possible stop string is held back)."""

    token_id: int
    text: str
    logprob: TokenLogprob | None = None


@dataclass
class FinishEvent:
    """The end of a request. ``finish_reason``: ``"stop"`` (end-of-text token or a stop
    string) or ``"length"`` (the token budget or the context window). ``completion_tokens``
    counts every sampled token (a final end-of-text token included). ``prompt_logprobs``
    holds one entry per prompt token after the first (when asked for)."""

    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    text: str = ""
    prompt_logprobs: list[TokenLogprob] | None = None


@dataclass
class ErrorEvent:
    message: str


class RequestHandle:
    """The caller's side of a submitted job: an asyncio queue of events, and :meth:`cancel`."""

    def __init__(self, job: GenerationJob, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.job = job
        self.loop = loop
        self.events: asyncio.Queue | None = asyncio.Queue() if loop is not None else None
        self.sync_events: list[Any] = []
        self.done = threading.Event()
        self.cancelled = False

    def cancel(self) -> None:
        """The client went away: the engine frees the row at its next step."""
        self.cancelled = True

    def _post(self, event: Any) -> None:
        if isinstance(event, (FinishEvent, ErrorEvent)):
            self.done.set()
        if self.loop is None:
            self.sync_events.append(event)
            return
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)
        except RuntimeError:  # the event loop is closed: nobody listens any more
            self.cancelled = True


@dataclass
class _Row:
    handle: RequestHandle
    length: int  # tokens of this row in the cache
    out: RowOutput  # the text, stop strings, token count and finish reason, as single generation keeps them
    generator: torch.Generator | None
    stats: TokenStats  # the penalties' token counts
    last_token: int = -1
    prompt_logprobs: list[TokenLogprob] | None = None


# --------------------------------------------------------------------------- the engine


class BatchEngine:
    """Decodes concurrent requests together in one worker thread (see the module docstring).

    Args:
        model: the GPT (eval mode; the engine owns its KV cache from now on).
        tokenizer: decodes the output and defines the ids that may be sampled.
        max_batch: the most rows decoded together (1: one request at a time).
        max_queue: the most requests waiting for a row; more raise :class:`QueueFullError`.
    """

    def __init__(self, model: GPT, tokenizer: Tokenizer, *, max_batch: int = 16, max_queue: int = 64) -> None:
        if model.config.vocab_size < tokenizer.vocab_size:
            raise CustomGPTError(
                f"the model's vocabulary ({model.config.vocab_size} ids) is smaller than the tokenizer's "
                f"({tokenizer.vocab_size}): some tokens could not be embedded"
            )
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.ctx = model.config.context_length
        self.device = model.device
        self.vocab = model.config.vocab_size
        #: Ids from this one up are not in the tokenizer: never sampled.
        self.decodable = sampled_vocab_size(model, tokenizer.vocab_size)
        if self.device.type == "cpu":
            model.use_decode_layout()  # the same weights, in the layout decode steps read fastest
        self.head = lm_head_for_generation(model)
        self._decode_step: CPUDecodeStep | None = None  # made on the first CPU decode step
        self.eot_id = tokenizer.eot_id
        self._cond = threading.Condition()
        self._waiting: deque[RequestHandle] = deque()
        self._calls: deque[tuple[Callable[[], Any], concurrent.futures.Future]] = deque()
        self._rows: list[_Row | None] = []
        self._kv: KVCache | None = None  # the batch's cache, (L, B, H, ctx, D)
        self._mask: Tensor | None = None  # (B, ctx) long, 1 = real token
        self._n = 0  # shared cache end
        self._stopping = False
        self._thread: threading.Thread | None = None
        #: Decode steps run and the largest batch seen (for tests).
        self.steps = 0
        self.max_rows_seen = 0

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> BatchEngine:
        if self._thread is None:
            self._stopping = False
            self._thread = threading.Thread(target=self._run, name="customgpt-engine", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def active(self) -> int:
        return sum(r is not None for r in self._rows)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    # ------------------------------------------------------------------ submitting
    def submit(self, job: GenerationJob, loop: asyncio.AbstractEventLoop | None = None) -> RequestHandle:
        """Queue ``job``; its events arrive on the handle's queue (on ``loop``), or in
        ``handle.sync_events`` when ``loop`` is None (then wait on ``handle.done``).

        Raises:
            QueueFullError: ``max_queue`` requests already wait.
            EngineStoppedError: the engine is not running.
        """
        n = len(job.prompt_ids)
        if not 1 <= n <= self.ctx:
            raise ValueError(f"a prompt must hold 1 to {self.ctx} tokens, got {n}")
        if n + job.params.max_new_tokens > self.ctx + 1:
            raise ValueError(f"{n} prompt tokens + {job.params.max_new_tokens} new ones exceed the window")
        handle = RequestHandle(job, loop)
        with self._cond:
            if not self.alive or self._stopping:
                raise EngineStoppedError("the generation engine is not running")
            if len(self._waiting) >= self.max_queue + max(self.max_batch - self.active, 0):
                raise QueueFullError(f"the server is busy: {len(self._waiting)} requests are waiting")
            self._waiting.append(handle)
            self._cond.notify_all()
        return handle

    def call(self, fn: Callable[[], Any]) -> concurrent.futures.Future:
        """Run ``fn()`` on the engine thread between decode steps (for other model work)."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        with self._cond:
            if not self.alive or self._stopping:
                raise EngineStoppedError("the generation engine is not running")
            if len(self._calls) >= max(self.max_queue, 1):
                raise QueueFullError(f"the server is busy: {len(self._calls)} calls are waiting")
            self._calls.append((fn, future))
            self._cond.notify_all()
        return future

    # ------------------------------------------------------------------ the worker
    def _run(self) -> None:
        while True:
            with self._cond:
                while not (self._stopping or self._waiting or self._calls or self.active):
                    self._cond.wait()
                if self._stopping:
                    break
                calls = list(self._calls)
                self._calls.clear()
                new: list[RequestHandle] = []
                while self._waiting and self.active + len(new) < self.max_batch:
                    handle = self._waiting.popleft()
                    if not handle.cancelled:
                        new.append(handle)
            for fn, future in calls:
                if future.set_running_or_notify_cancel():
                    try:
                        with torch.inference_mode():
                            future.set_result(fn())
                    except BaseException as exc:  # delivered to the caller
                        future.set_exception(exc)
            try:
                with torch.inference_mode():
                    if new:
                        self._admit(new)
                    self._drop_cancelled()
                    if self.active:
                        self._step()
                    self._compact()
            except Exception as exc:  # a failed forward must not take the server down
                self._fail_all(new, f"generation failed: {type(exc).__name__}: {exc}")
        with self._cond:
            waiting, self._waiting = list(self._waiting), deque()
        self._fail_all(waiting, "the server is shutting down")

    def _fail_all(self, handles_not_in_rows: list[RequestHandle], message: str) -> None:
        handles = {id(h): h for h in handles_not_in_rows}
        handles.update({id(r.handle): r.handle for r in self._rows if r is not None})
        for handle in handles.values():
            if not handle.done.is_set():
                handle._post(ErrorEvent(message))
        self._rows, self._kv, self._mask, self._n = [], None, None, 0

    # ------------------------------------------------------------------ cache plumbing
    def _resize_rows(self, keep: list[int], extra: int) -> None:
        """Keep the rows at indices ``keep`` (in that order) and append ``extra`` free rows."""
        B = len(keep) + extra
        old, old_mask = self._kv, self._mask
        self._kv = self.model.new_kv_cache(B, self.ctx)  # zeros: padded columns are finite
        self._mask = torch.zeros(B, self.ctx, dtype=torch.long, device=self.device)
        if old is None:
            return
        index = torch.tensor(keep, dtype=torch.long, device=self.device)
        n = self._n
        self._kv.k[:, : len(keep), :, :n] = old.k[:, :, :, :n].index_select(1, index)
        self._kv.v[:, : len(keep), :, :n] = old.v[:, :, :, :n].index_select(1, index)
        self._mask[: len(keep)] = old_mask.index_select(0, index)

    def _shift(self, by: int) -> None:
        """Move every row's cache slots by ``by`` (> 0: right, < 0: left); ``n`` follows."""
        n = self._n
        if by > 0:
            src, dst = slice(0, n), slice(by, n + by)
        else:
            src, dst = slice(-by, n), slice(0, n + by)
        self._kv.k[:, :, :, dst] = self._kv.k[:, :, :, src].clone()
        self._kv.v[:, :, :, dst] = self._kv.v[:, :, :, src].clone()
        self._mask[:, dst] = self._mask[:, src].clone()
        if by > 0:
            self._mask[:, :by] = 0
        else:
            self._mask[:, n + by :] = 0
        self._n = n + by

    def _compact(self) -> None:
        """Drop free rows when nobody waits for them and at least a quarter of the rows are
        free (a free row costs compute every step; dropping it costs a copy of the cache)."""
        free = [i for i, r in enumerate(self._rows) if r is None]
        if not free or self._waiting or (self.active and 4 * len(free) < len(self._rows)):
            return
        if not self.active:
            self._rows, self._kv, self._mask, self._n = [], None, None, 0
            return
        keep = [i for i, r in enumerate(self._rows) if r is not None]
        self._resize_rows(keep, 0)
        self._rows = [self._rows[i] for i in keep]

    def _drop_cancelled(self) -> None:
        for i, row in enumerate(self._rows):
            if row is not None and row.handle.cancelled:
                self._rows[i] = None

    # ------------------------------------------------------------------ sampling
    def _logprob(self, logprobs: Tensor, token: int, k: int) -> TokenLogprob:
        """``logprobs``: (V,) log-softmax of one position."""
        top: list[tuple[int, float]] = []
        if k > 0:
            values, ids = torch.topk(logprobs, k)
            top = list(zip(ids.tolist(), values.tolist()))
        return TokenLogprob(token, float(logprobs[token]), top)

    def _sample_row(self, row: _Row, logits: Tensor) -> bool:
        """Sample the row's next token from its logits (1, V), post the events; True when
        the row is finished."""
        params = row.handle.job.params
        if self.decodable < self.vocab:
            logits = logits.clone()
            logits[:, self.decodable :] = float("-inf")
        tokens = sample(logits, params, row.generator, seen=row.stats.seen, output_counts=row.stats.counts)
        token = int(tokens[0])
        row.last_token = token
        row.stats.update(tokens)
        k = row.handle.job.logprobs
        lp = self._logprob(torch.log_softmax(logits[0].float(), dim=-1), token, k) if k is not None else None
        piece = row.out.add(token)
        if row.out.reason != "eot" or lp is not None:  # an end-of-text token is listed with its log-prob only
            row.handle._post(TokenEvent(token, piece, lp))
        if row.out.reason is None:
            return False
        return self._finish(row, "length" if row.out.reason == "length" else "stop")

    def _finish(self, row: _Row, reason: str) -> bool:
        handle, out = row.handle, row.out
        tail = out.flush()
        if tail:
            handle._post(TokenEvent(-1, tail, None))
        text = "".join(out.text)
        handle._post(FinishEvent(reason, out.prompt_tokens, out.sampled, text, row.prompt_logprobs))
        return True

    # ------------------------------------------------------------------ prefill and decode
    def _admit(self, new: list[RequestHandle]) -> None:
        """Prefill the new requests together, sample their first tokens, and give the
        unfinished ones rows of the running batch."""
        model = self.model
        lengths = [len(h.job.prompt_ids) for h in new]
        G, P = len(new), max(lengths)
        ids = torch.zeros(G, P, dtype=torch.long, device=self.device)
        am = torch.zeros(G, P, dtype=torch.long, device=self.device)
        for g, h in enumerate(new):
            ids[g, P - lengths[g] :] = torch.as_tensor(h.job.prompt_ids, dtype=torch.long)
            am[g, P - lengths[g] :] = 1
        # The newcomers are prefilled in a cache of their own, then copied into free rows.
        new_kv = model.new_kv_cache(G, P)
        hidden = model.forward_hidden(ids, attention_mask=am if min(lengths) < P else None, kv_cache=new_kv)
        logits = self.head(hidden[:, -1])  # (G, V)
        joining: list[tuple[_Row, int]] = []
        for g, h in enumerate(new):
            params = h.job.params
            row = _Row(
                handle=h,
                length=lengths[g],
                out=RowOutput(lengths[g], params, self.eot_id, self.tokenizer, self.ctx),
                generator=None if params.greedy else make_generator(params.seed, self.device),
                stats=TokenStats([h.job.prompt_ids], self.vocab, params, self.device),
            )
            k = h.job.prompt_logprobs
            if k is not None:
                # Position t predicts token t + 1: log-probs of prompt tokens 1 .. p-1.
                lp = torch.log_softmax(self.head(hidden[g, P - lengths[g] : P - 1]).float(), dim=-1)
                prompt = h.job.prompt_ids
                row.prompt_logprobs = [self._logprob(lp[t], prompt[t + 1], k) for t in range(lengths[g] - 1)]
            if params.max_new_tokens == 0:
                self._finish(row, "length")
                continue
            if not self._sample_row(row, logits[g : g + 1]):
                joining.append((row, g))
        if not joining:
            return
        free = [i for i, r in enumerate(self._rows) if r is None]
        if len(free) < len(joining):  # (no batch yet: no rows, no cache, n = 0)
            extra = len(joining) - len(free)
            self._resize_rows(list(range(len(self._rows))), extra)
            self._rows += [None] * extra
        if P > self._n:
            self._shift(P - self._n)
        n = self._n
        free = [i for i, r in enumerate(self._rows) if r is None]
        for (row, g), slot in zip(joining, free):
            p = row.length
            self._kv.k[:, slot, :, n - p : n] = new_kv.k[:, g, :, P - p : P]
            self._kv.v[:, slot, :, n - p : n] = new_kv.v[:, g, :, P - p : P]
            self._mask[slot] = 0
            self._mask[slot, n - p : n] = 1
            self._rows[slot] = row
        self.max_rows_seen = max(self.max_rows_seen, self.active)

    def _step(self) -> None:
        """Feed every row its last token and sample the next one."""
        if self._n + 1 > self.ctx:
            # Every row is right-aligned at n: drop the padding they all share on the left.
            self._shift(-(self._n - max(r.length for r in self._rows if r is not None)))
        n = self._n
        tokens = torch.tensor([0 if r is None else r.last_token for r in self._rows], dtype=torch.long,
                              device=self.device)
        # A free row attends to its new column too: no row is all padding (which would give
        # NaN states, and NaN keys that a later occupant of the row would multiply by zero).
        self._mask[:, n] = 1
        mask = self._mask[:, : n + 1]
        if cpu_decode_unsupported(self.model) is None:  # checked each step: hooks may come and go
            # What forward_hidden derives from the padding mask: the row's own position, its real keys.
            positions = mask.sum(-1) - 1
            if self._decode_step is None:
                self._decode_step = CPUDecodeStep(self.model)
            hidden = self._decode_step(tokens, self._kv, n, positions, mask.to(torch.bool)[:, None, None, :])
        else:
            hidden = self.model.forward_hidden(tokens[:, None], attention_mask=mask, kv_cache=self._kv, input_pos=n)[:, -1]
        self._n = n + 1
        self.steps += 1
        logits = self.head(hidden)  # (B, V)
        for i, row in enumerate(self._rows):
            if row is None:
                continue
            row.length += 1
            if self._sample_row(row, logits[i : i + 1]):
                self._rows[i] = None
