"""Request bodies of the OpenAI-compatible API, as pydantic models (validated by FastAPI).

Only the fields the server acts on are declared; unknown fields are ignored (pydantic's
default), as OpenAI's clients send some (``user``, ``metadata``) that change nothing here.
Fields the server cannot honour are declared so that a request using them gets a clear 400
instead of a silently different answer: ``n`` and ``best_of`` here (only 1), ``logit_bias``,
tools and the rest by the app.

References: OpenAI's API reference for ``/v1/chat/completions``, ``/v1/completions`` (the
legacy endpoint lm-evaluation-harness's ``local-completions`` model calls) and
``/v1/embeddings``.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field


class StreamOptions(BaseModel):
    include_usage: bool = False


class _Sampling(BaseModel):
    """The sampling fields shared by chat and completions."""

    model: str
    max_tokens: int | None = Field(default=None, ge=0)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0, allow_inf_nan=False)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0, allow_inf_nan=False)
    n: Literal[1] = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = Field(default=None, ge=0, lt=2**63)
    presence_penalty: float = Field(default=0.0, ge=-2.0, le=2.0, allow_inf_nan=False)
    frequency_penalty: float = Field(default=0.0, ge=-2.0, le=2.0, allow_inf_nan=False)
    logit_bias: dict[str, float] | None = None


class ChatMessage(BaseModel):
    role: Literal["system", "developer", "user", "assistant"]
    #: A string, or OpenAI's list of content parts (only ``{"type": "text"}`` parts here).
    content: str | list[dict[str, Any]] | None = None


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=0)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    tools: list[Any] | None = None
    response_format: dict[str, Any] | None = None


class CompletionRequest(_Sampling):
    #: Text, texts, token ids, or lists of token ids (one choice per prompt).
    prompt: str | list[str] | list[int] | list[list[int]]
    echo: bool = False
    #: How many top alternatives to list per position (0 lists only the chosen token's).
    logprobs: int | None = Field(default=None, ge=0, le=20)
    best_of: Literal[1] | None = None
    suffix: str | None = None


class EmbeddingRequest(BaseModel):
    model: str
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None


class ClassifyRequest(BaseModel):
    model: str | None = None
    input: str | list[str]
