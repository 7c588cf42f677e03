"""The OpenAI-compatible HTTP API over :class:`~customgpt.serve.engine.BatchEngine` (FastAPI).

Routes: ``GET /health``, ``GET /v1/models``, ``POST /v1/chat/completions``,
``POST /v1/completions``, ``POST /v1/embeddings`` and ``POST /v1/classify`` (customgpt's own),
with FastAPI's ``/docs``. The request and response shapes follow OpenAI's API reference;
streams are server-sent events in OpenAI's chunk format, ending with ``data: [DONE]``.

The rules the routes share (user text is plain text, the context window, the error
shapes and statuses, log-probabilities) are written out in docs/serve.md.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException

from customgpt.classifier import pool_hidden, predict_texts
from customgpt.data.classification import collate_classification
from customgpt.errors import ConfigError
from customgpt.generate import PLAIN_TEXT, GenerationError, SamplingParams, check_prompt, encode_prompt
from customgpt.prompts import Message, PromptStyle, get_prompt_style
from customgpt.serve.engine import (
    BatchEngine,
    EngineStoppedError,
    ErrorEvent,
    FinishEvent,
    GenerationJob,
    QueueFullError,
    RequestHandle,
    TokenEvent,
    TokenLogprob,
)
from customgpt.serve.schemas import (
    ChatCompletionRequest,
    ClassifyRequest,
    CompletionRequest,
    EmbeddingRequest,
)

if TYPE_CHECKING:
    from torch import nn

    from customgpt.model import GPT
    from customgpt.tokenizer import Tokenizer

EMBEDDING_POOLINGS = ("mean", "last")
#: ``max_tokens`` of a ``/v1/completions`` request that gives none (OpenAI's default).
COMPLETION_MAX_TOKENS = 16


@dataclass
class ServerConfig:
    """What the server is started with (the ``customgpt serve`` options).

    Attributes:
        model_name: the id clients name in ``model`` (and ``/v1/models`` lists).
        max_tokens: the most tokens one request may generate (larger ``max_tokens`` are capped;
            a chat request without ``max_tokens`` may use them all, a completion request gets
            :data:`COMPLETION_MAX_TOKENS`).
        prompt_style: the :mod:`customgpt.prompts` style that renders chat messages.
        api_key: when set, every ``/v1`` request needs ``Authorization: Bearer <api_key>``.
        crop_prompt: crop prompts longer than the window from the left instead of refusing them.
        max_batch: rows decoded together; max_queue: requests that may wait for a row.
        embedding_pooling: ``"mean"`` (mean of the final hidden states, after the last
            LayerNorm, over the input's tokens) or ``"last"`` (the last token's).
    """

    model_name: str
    max_tokens: int = 512
    prompt_style: str | PromptStyle = "plain"
    api_key: str | None = None
    crop_prompt: bool = False
    max_batch: int = 16
    max_queue: int = 64
    embedding_pooling: str = "mean"

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise ConfigError(f"max_tokens must be >= 1, got {self.max_tokens}")
        if self.max_batch < 1:
            raise ConfigError(f"max_batch must be >= 1, got {self.max_batch}")
        if self.max_queue < 0:
            raise ConfigError(f"max_queue must be >= 0, got {self.max_queue}")
        if self.embedding_pooling not in EMBEDDING_POOLINGS:
            raise ConfigError(f"embedding_pooling must be one of {', '.join(EMBEDDING_POOLINGS)}, "
                              f"got {self.embedding_pooling!r}")
        if self.api_key is not None and not self.api_key:
            raise ConfigError("api_key must not be empty")
        get_prompt_style(self.prompt_style)


class APIError(Exception):
    """An error answered in OpenAI's shape with ``status``."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status)


def _bad(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


def _sse(obj: Any) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


@contextlib.contextmanager
def _engine_errors() -> Iterator[None]:
    """The engine's refusals as API errors: a full queue is 429, a stopped engine 503."""
    try:
        yield
    except QueueFullError as exc:
        raise APIError(429, str(exc), type="rate_limit_error", code="queue_full") from None
    except EngineStoppedError as exc:
        raise APIError(503, str(exc), type="server_error", code="unavailable") from None


class _AuthMiddleware:
    """Checks ``Authorization: Bearer KEY`` on ``/v1`` paths before anything else (so a bad
    body without a key is a 401, not a 400). The comparison is constant-time."""

    def __init__(self, app, api_key: str) -> None:
        self.app = app
        self.key = api_key.encode("utf-8")

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/v1"):
            header = Headers(scope=scope).get("authorization", "")
            scheme, _, token = header.partition(" ")
            message = None
            if not header:
                message = "missing API key: send the header 'Authorization: Bearer KEY'"
            elif scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), self.key):
                message = "incorrect API key provided"
            if message is not None:
                await APIError(401, message, code="invalid_api_key").response()(scope, receive, send)
                return
        await self.app(scope, receive, send)


# =========================================================================== the app


class _Server:
    """The state behind the routes: model, tokenizer, engine, optional classifier."""

    def __init__(self, model: GPT, tokenizer: Tokenizer, config: ServerConfig,
                 classifier: nn.Module | None, classifier_info: dict[str, Any] | None) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.config = config
        self.ctx = model.config.context_length
        self.style = get_prompt_style(config.prompt_style)
        self.engine = BatchEngine(model, tokenizer, max_batch=config.max_batch, max_queue=config.max_queue)
        self.classifier = classifier
        self.classifier_info = classifier_info or {}
        self.created = int(time.time())

    # ------------------------------------------------------------------ checks
    def check_model(self, name: str | None) -> None:
        if name != self.config.model_name:
            raise APIError(404, f"the model {name!r} does not exist; this server serves "
                                f"{self.config.model_name!r}", param="model", code="model_not_found")

    def encode(self, text: str) -> list[int]:
        """Token ids of user text, as plain text (no special tokens)."""
        return self.tokenizer.encode(text, allowed_special=PLAIN_TEXT)

    @staticmethod
    def check_text(text: str, param: str) -> str:
        """JSON can carry a lone surrogate (``"\\ud800"``), which is no character: refuse it
        instead of letting the tokenizer replace it silently."""
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise _bad(f"{param} is not valid Unicode: a lone surrogate at character {exc.start}", param) from None
        return text

    def fit_prompt(self, ids: list[int], max_tokens: int, param: str) -> list[int]:
        """Refuse (or, with ``crop_prompt``, crop from the left) a prompt past the window."""
        if len(ids) <= self.ctx:
            return ids
        if not self.config.crop_prompt:
            raise _bad(f"this model's maximum context length is {self.ctx} tokens, but the {param} came to "
                       f"{len(ids)} tokens (start the server with --crop-prompt to crop long prompts from "
                       "the left)", param, "context_length_exceeded")
        room = min(max_tokens, self.ctx // 2)
        return ids[-min(self.ctx, self.ctx + 1 - room):]

    def prompt_ids(self, value: str | list[str] | list[int] | list[list[int]], max_tokens: int,
                   param: str) -> list[list[int]]:
        """The token ids of each prompt (or input) of a request: a text, texts, token ids or
        lists of token ids; text is plain text ("" is the end-of-text token: start a
        document); each fitted to the window (:meth:`fit_prompt`)."""
        if isinstance(value, str) or (value and all(isinstance(p, int) for p in value)):
            value = [value]
        if not value:
            raise _bad(f"{param} is empty", param)
        rows = []
        for item in value:
            try:
                if isinstance(item, str):
                    ids = encode_prompt(self.tokenizer, self.check_text(item, param))
                else:
                    ids = check_prompt(item, self.tokenizer.vocab_size, param)  # not empty, in the vocabulary
            except GenerationError as exc:
                raise _bad(str(exc), param) from None
            rows.append(self.fit_prompt(ids, max_tokens, param))
        return rows

    def requested_max_tokens(self, value: int | None, default: int) -> int:
        return min(default if value is None else value, self.config.max_tokens)

    def sampling(self, req, prompt_len: int, max_tokens: int, extra_stop: Sequence[str] = ()) -> SamplingParams:
        """The request's :class:`SamplingParams`; ``max_tokens`` also capped by the window
        (the request model's ranges are within what :class:`SamplingParams` accepts)."""
        if req.logit_bias:
            raise _bad("logit_bias is not supported", "logit_bias")
        stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
        if any(not s for s in stop):
            raise _bad("stop strings must not be empty", "stop")
        return SamplingParams(
            max_new_tokens=max(0, min(max_tokens, self.ctx + 1 - prompt_len)),
            temperature=req.temperature,
            top_p=req.top_p,
            presence_penalty=req.presence_penalty,
            frequency_penalty=req.frequency_penalty,
            stop=tuple(dict.fromkeys([*stop, *extra_stop])),
            seed=req.seed,
        )

    def submit(self, job: GenerationJob) -> RequestHandle:
        with _engine_errors():
            return self.engine.submit(job, asyncio.get_running_loop())

    async def call(self, fn) -> Any:
        with _engine_errors():
            future = self.engine.call(fn)
        return await asyncio.wrap_future(future)

    # ------------------------------------------------------------------ logprob shapes
    def token_text(self, token_id: int) -> str:
        return self.tokenizer.decode([token_id])

    def completion_logprobs(self, entries: Sequence[TokenLogprob]) -> dict[str, Any]:
        """OpenAI's legacy ``logprobs`` object (``logprob`` None: the first prompt token)."""
        tokens, token_logprobs, top_logprobs, text_offset = [], [], [], []
        offset = 0
        for entry in entries:
            text = self.token_text(entry.token_id)
            tokens.append(text)
            text_offset.append(offset)
            offset += len(text)
            token_logprobs.append(entry.logprob)
            if entry.logprob is None:
                top_logprobs.append(None)
            else:
                top: dict[str, float] = {}
                for token_id, lp in entry.top:
                    top.setdefault(self.token_text(token_id), lp)
                top_logprobs.append(top)
        return {"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": top_logprobs,
                "text_offset": text_offset}

    def chat_logprobs(self, entries: Sequence[TokenLogprob]) -> dict[str, Any]:
        def item(token_id: int, lp: float) -> dict[str, Any]:
            text = self.token_text(token_id)
            return {"token": text, "logprob": lp, "bytes": list(self.tokenizer.token_bytes(token_id))}

        return {"content": [
            {**item(e.token_id, e.logprob), "top_logprobs": [item(t, lp) for t, lp in e.top]} for e in entries
        ]}


def _event_stream(handle: RequestHandle, req: Any, chunk: dict[str, Any], choice: Callable[..., dict[str, Any]],
                  first: Sequence[dict[str, Any]] = ()) -> StreamingResponse:
    """The server-sent events of one streamed request, for chat and completions alike: a
    ``chunk`` with the choices ``first``, then ``choice(text, entries=...)`` for every decoded
    text, ``choice("", finish_reason, entries=...)`` once at the end, the usage chunk when
    ``req.stream_options`` asks for it, and ``data: [DONE]``. A client that leaves cancels
    the request (its row is freed)."""
    include_usage = bool(req.stream_options and req.stream_options.include_usage)

    def event(choice_: dict[str, Any]) -> str:
        body = {**chunk, "choices": [choice_]}
        if include_usage:
            body["usage"] = None
        return _sse(body)

    async def events() -> AsyncIterator[str]:
        try:
            for item in first:
                yield event(item)
            pending: list[TokenLogprob] = []
            while True:
                item = await handle.events.get()
                if isinstance(item, TokenEvent):
                    if item.logprob is not None:
                        pending.append(item.logprob)
                    if item.text:
                        yield event(choice(item.text, entries=pending))
                        pending = []
                elif isinstance(item, FinishEvent):
                    yield event(choice("", item.finish_reason, entries=pending))
                    if include_usage:
                        usage = _usage(item.prompt_tokens, item.completion_tokens)
                        yield _sse({**chunk, "choices": [], "usage": usage})
                    break
                else:
                    yield _sse(APIError(500, item.message, type="server_error").body())
                    break
            yield "data: [DONE]\n\n"
        finally:
            if not handle.done.is_set():
                handle.cancel()

    return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


async def _finish_of(handle: RequestHandle, request: Request) -> tuple[list[TokenEvent], FinishEvent]:
    """Wait for a whole result; a client that goes away cancels its row."""
    tokens: list[TokenEvent] = []
    loop = asyncio.get_running_loop()
    next_check = loop.time() + 1.0
    try:
        while True:
            try:
                event = await asyncio.wait_for(handle.events.get(), timeout=1.0)
            except asyncio.TimeoutError:
                event = None
            if loop.time() >= next_check:  # about once a second, busy or not
                next_check = loop.time() + 1.0
                if await request.is_disconnected():
                    handle.cancel()
                    raise APIError(499, "the client closed the request")
            if event is None:
                continue
            if isinstance(event, TokenEvent):
                tokens.append(event)
            elif isinstance(event, FinishEvent):
                return tokens, event
            elif isinstance(event, ErrorEvent):
                raise APIError(500, event.message, type="server_error")
    finally:
        if not handle.done.is_set():
            handle.cancel()


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def create_app(
    model: GPT,
    tokenizer: Tokenizer,
    config: ServerConfig,
    *,
    classifier: nn.Module | None = None,
    classifier_info: dict[str, Any] | None = None,
) -> FastAPI:
    """The FastAPI app serving ``model``; its engine thread starts and stops with the app
    (FastAPI's lifespan). ``classifier`` / ``classifier_info``: what
    :func:`customgpt.classifier.load_classifier` returns, for ``/v1/classify``.

    Raises:
        ConfigError: a bad setting in ``config``.
        CustomGPTError: a model vocabulary smaller than the tokenizer's.
    """
    server = _Server(model, tokenizer, config, classifier, classifier_info)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        server.engine.start()
        try:
            yield
        finally:
            server.engine.stop()

    app = FastAPI(
        title="customgpt",
        description="An OpenAI-compatible API for customgpt models, with batched decoding.",
        lifespan=lifespan,
    )
    app.state.server = server
    if config.api_key is not None:
        app.add_middleware(_AuthMiddleware, api_key=config.api_key)

    # ------------------------------------------------------------------ errors
    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {}
        if first.get("type") == "json_invalid":
            return _bad(f"the body is not valid JSON: {first.get('msg', '')}", code="invalid_json").response()
        loc = [str(p) for p in first.get("loc", ()) if p != "body"]
        # A union field reports one error per member: name the field and its first complaint.
        param = loc[0] if loc else None
        message = f"{'.'.join(loc) or 'body'}: {first.get('msg', 'invalid value')}"
        if len(errors) > 1 and param is not None and all(
                [str(p) for p in e.get("loc", ()) if p != "body"][:1] == [param] for e in errors):
            message = f"{param}: invalid value ({first.get('msg', '')})"
        elif len(errors) > 1:
            message += f" (and {len(errors) - 1} more problem(s))"
        return _bad(message, param).response()

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = "not_found" if exc.status_code == 404 else None
        return APIError(exc.status_code, str(exc.detail), code=kind).response()

    @app.exception_handler(Exception)
    async def server_error(request: Request, exc: Exception) -> JSONResponse:
        return APIError(500, f"internal error: {type(exc).__name__}: {exc}", type="server_error").response()

    # ------------------------------------------------------------------ info
    @app.get("/health")
    async def health() -> JSONResponse:
        alive = server.engine.alive
        body = {"status": "ok" if alive else "unavailable", "model": config.model_name,
                "running": server.engine.active, "waiting": server.engine.waiting}
        return JSONResponse(body, status_code=200 if alive else 503)

    def model_card() -> dict[str, Any]:
        return {"id": config.model_name, "object": "model", "created": server.created, "owned_by": "customgpt",
                "context_length": server.ctx, "embedding_pooling": config.embedding_pooling,
                "prompt_style": server.style.name}

    @app.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{name:path}")
    async def get_model(name: str) -> dict[str, Any]:
        server.check_model(name)
        return model_card()

    # ------------------------------------------------------------------ chat
    @app.post("/v1/chat/completions")
    async def chat_completions(req: ChatCompletionRequest, request: Request):
        server.check_model(req.model)
        if req.tools:
            raise _bad("tools are not supported", "tools")
        if req.response_format and req.response_format.get("type", "text") != "text":
            raise _bad("only the 'text' response format is supported", "response_format")
        messages = []
        for i, m in enumerate(req.messages):
            content = m.content
            if isinstance(content, list):
                parts = []
                for part in content:
                    if part.get("type") != "text" or not isinstance(part.get("text"), str):
                        raise _bad(f"messages[{i}]: only text content parts are supported", "messages")
                    parts.append(part["text"])
                content = "".join(parts)
            content = server.check_text(content or "", f"messages[{i}].content")
            messages.append(Message("system" if m.role == "developer" else m.role, content))
        try:
            text = server.style.format_chat(messages)
        except ConfigError as exc:
            raise _bad(str(exc), "messages") from None
        wanted = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
        max_tokens = server.requested_max_tokens(wanted, config.max_tokens)
        ids = server.fit_prompt(server.encode(text), max_tokens, "messages")
        params = server.sampling(req, len(ids), max_tokens, server.style.stop_strings)
        top = (req.top_logprobs or 0) if req.logprobs else None
        if req.top_logprobs and not req.logprobs:
            raise _bad("top_logprobs needs logprobs: true", "top_logprobs")
        handle = server.submit(GenerationJob(ids, params, logprobs=top))
        rid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        base = {"id": rid, "object": "chat.completion", "created": created, "model": config.model_name,
                "system_fingerprint": None}
        if not req.stream:
            tokens, finish = await _finish_of(handle, request)
            entries = [t.logprob for t in tokens if t.logprob is not None]
            choice = {"index": 0, "message": {"role": "assistant", "content": finish.text},
                      "logprobs": server.chat_logprobs(entries) if top is not None else None,
                      "finish_reason": finish.finish_reason}
            return {**base, "choices": [choice], "usage": _usage(finish.prompt_tokens, finish.completion_tokens)}

        def choice(text: str, finish_reason: str | None = None, entries=None) -> dict[str, Any]:
            return {"index": 0, "delta": {"content": text} if text else {},
                    "logprobs": server.chat_logprobs(entries) if entries else None, "finish_reason": finish_reason}

        first = {"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}
        return _event_stream(handle, req, {**base, "object": "chat.completion.chunk"}, choice, [first])

    # ------------------------------------------------------------------ completions
    @app.post("/v1/completions")
    async def completions(req: CompletionRequest, request: Request):
        server.check_model(req.model)
        if req.suffix:
            raise _bad("suffix is not supported", "suffix")
        if req.stream and req.echo and req.logprobs is not None:
            raise _bad("echo with logprobs is not supported when streaming", "echo")
        max_tokens = server.requested_max_tokens(req.max_tokens, COMPLETION_MAX_TOKENS)
        prompts = server.prompt_ids(req.prompt, max_tokens, "prompt")
        if len(prompts) > 1 and req.stream:
            raise _bad("streaming takes one prompt at a time", "prompt")
        jobs, texts = [], []
        for ids in prompts:
            params = server.sampling(req, len(ids), max_tokens)
            jobs.append(GenerationJob(ids, params, logprobs=req.logprobs,
                                      prompt_logprobs=req.logprobs if req.echo else None))
            texts.append(tokenizer.decode(ids) if req.echo else "")
        handles = []
        try:
            for job in jobs:
                handles.append(server.submit(job))
        except APIError:
            for h in handles:
                h.cancel()
            raise
        rid, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
        base = {"id": rid, "object": "text_completion", "created": created, "model": config.model_name,
                "system_fingerprint": None}
        if not req.stream:
            results = await asyncio.gather(*(_finish_of(h, request) for h in handles))
            choices, prompt_total, completion_total = [], 0, 0
            for i, ((tokens, finish), job) in enumerate(zip(results, jobs)):
                logprobs = None
                if req.logprobs is not None:
                    entries: list[TokenLogprob] = []
                    if req.echo:
                        entries.append(TokenLogprob(job.prompt_ids[0], None, []))  # type: ignore[arg-type]
                        entries += finish.prompt_logprobs or []
                    entries += [t.logprob for t in tokens if t.logprob is not None]
                    logprobs = server.completion_logprobs(entries)
                choices.append({"index": i, "text": texts[i] + finish.text, "logprobs": logprobs,
                                "finish_reason": finish.finish_reason})
                prompt_total += finish.prompt_tokens
                completion_total += finish.completion_tokens
            return {**base, "choices": choices, "usage": _usage(prompt_total, completion_total)}

        def choice(text: str, finish_reason: str | None = None, entries=None) -> dict[str, Any]:
            logprobs = server.completion_logprobs(entries or []) if req.logprobs is not None else None
            return {"index": 0, "text": text, "logprobs": logprobs, "finish_reason": finish_reason}

        return _event_stream(handles[0], req, base, choice, [choice(texts[0])] if texts[0] else [])

    # ------------------------------------------------------------------ embeddings
    @app.post("/v1/embeddings")
    async def embeddings(req: EmbeddingRequest) -> dict[str, Any]:
        server.check_model(req.model)
        if req.dimensions is not None and req.dimensions != model.config.n_embd:
            raise _bad(f"this model's embeddings have {model.config.n_embd} dimensions", "dimensions")
        rows = server.prompt_ids(req.input, 0, "input")
        vectors = await server.call(lambda: _embed(model, rows, config.embedding_pooling))
        data = []
        for i, vec in enumerate(vectors):
            if req.encoding_format == "base64":
                value: Any = base64.b64encode(vec.numpy().astype("<f4").tobytes()).decode("ascii")
            else:
                value = vec.tolist()
            data.append({"object": "embedding", "index": i, "embedding": value})
        n = sum(len(r) for r in rows)
        return {"object": "list", "data": data, "model": config.model_name,
                "usage": {"prompt_tokens": n, "total_tokens": n}}

    # ------------------------------------------------------------------ classification
    @app.post("/v1/classify")
    async def classify(req: ClassifyRequest) -> dict[str, Any]:
        if server.classifier is None:
            raise APIError(404, "no classifier is loaded (start the server with --classifier FOLDER)",
                           param="model", code="model_not_found")
        name = server.classifier_info.get("name") or "classifier"
        if req.model is not None and req.model not in (name, config.model_name):
            raise APIError(404, f"the classifier {req.model!r} does not exist; this server's is {name!r}",
                           param="model", code="model_not_found")
        texts = [server.check_text(t, "input") for t in ([req.input] if isinstance(req.input, str) else req.input)]
        if not texts:
            raise _bad("input is empty", "input")
        labels = [str(x) for x in server.classifier_info.get("labels", [])]
        classifier = server.classifier  # predict_texts crops each text to the classifier's window
        probs = await server.call(lambda: predict_texts(classifier, texts, server.encode,
                                                        max_length=classifier.config.context_length))
        data = []
        for i, row in enumerate(probs.tolist()):
            best = max(range(len(row)), key=row.__getitem__)
            names = labels if len(labels) == len(row) else [str(k) for k in range(len(row))]
            data.append({"index": i, "label": names[best], "probabilities": dict(zip(names, row))})
        return {"object": "list", "model": name, "data": data}

    return app


def _embed(model: GPT, rows: list[list[int]], pooling: str, batch_size: int = 16) -> list[Any]:
    """Pooled final hidden states (after ``ln_f``) of each row: (C,) float32 CPU tensors."""
    out = []
    for start in range(0, len(rows), batch_size):
        # Right padding: real tokens never see it (causal).
        batch = collate_classification([(r, 0) for r in rows[start:start + batch_size]], pad_id=0)
        am = batch["attention_mask"].to(model.device)
        hidden = model.forward_hidden(batch["input_ids"].to(model.device), attention_mask=am)
        out += list(pool_hidden(hidden, am, pooling).float().cpu())
    return out
