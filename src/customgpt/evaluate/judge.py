"""An LLM judge: a larger model scores each response 0-100 against the reference output.

Any OpenAI-compatible chat endpoint works (Ollama's ``/v1``, llama.cpp's server, vLLM,
customgpt's own server): :class:`JudgeClient` posts to ``{url}/chat/completions`` with
temperature 0 and a fixed seed, so a deterministic server answers the same every time.

The prompt is the reference recipe's (LLMs-from-scratch, chapter 7, ``ollama_evaluate.py``),
word for word (:data:`JUDGE_PROMPT`), with the record's instruction and input written in the
Alpaca format. As in the reference, an empty response scores 0 without asking. An answer that
is not a whole number from 0 to 100 (surrounding whitespace allowed) is reported and left out
of the mean, never guessed. Connection errors, timeouts and HTTP 408 / 429 / 5xx are retried with
exponential backoff (``Retry-After`` honoured); other HTTP errors stop the run at once.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from customgpt.errors import CustomGPTError
from customgpt.prompts import get_prompt_style

#: The reference prompt; ``{input}``, ``{output}`` and ``{response}`` are filled by
#: :func:`judge_prompt` (by plain replacement: braces in the texts are left alone).
JUDGE_PROMPT = (
    "Given the input `{input}` and correct output `{output}`, score the model response `{response}` "
    "on a scale from 0 to 100, where 100 is the best score. Respond with the integer number only."
)

#: HTTP statuses worth another try (the server is busy or failed for a moment).
RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})

_SCORE = re.compile(r"\s*(\d{1,3})\s*")


class JudgeError(CustomGPTError):
    """The judge endpoint failed: refused, unreachable after the retries, or a malformed reply."""


def judge_prompt(record: Mapping[str, Any], *, response_key: str = "model_response") -> str:
    """The reference prompt for one record (instruction and input in the Alpaca format)."""
    given = get_prompt_style("alpaca").format_input(record["instruction"], record.get("input") or "")
    parts = {"{input}": given, "{output}": record["output"], "{response}": record[response_key]}
    pieces = re.split(r"(\{input\}|\{output\}|\{response\})", JUDGE_PROMPT)
    return "".join(parts.get(piece, piece) for piece in pieces)


def parse_score(answer: str) -> int | None:
    """The score in a judge's answer: a whole number from 0 to 100 and nothing else (None otherwise)."""
    match = _SCORE.fullmatch(answer)
    if match is None:
        return None
    score = int(match.group(1))
    return score if 0 <= score <= 100 else None


class JudgeClient:
    """A client of an OpenAI-compatible ``/chat/completions`` endpoint.

    Args:
        url: the API base (``http://localhost:11434/v1``) or the full ``.../chat/completions`` address.
        model: the judge model's name on that server.
        api_key: sent as a bearer token when given.
        timeout: seconds to wait for each answer.
        max_retries: further tries after a transient failure.
        backoff: seconds before the first retry; doubled for each further one.
        seed: sent with every request, with temperature 0 (deterministic answers).
        sleep: the wait function (tests).
    """

    def __init__(self, url: str, model: str, *, api_key: str | None = None, timeout: float = 120.0,
                 max_retries: int = 3, backoff: float = 1.0, seed: int = 123,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        import httpx

        if not url.startswith(("http://", "https://")):
            raise JudgeError(f"judge url must start with http:// or https://, got {url!r}")
        if max_retries < 0 or timeout <= 0 or backoff < 0:
            raise JudgeError("judge: max_retries and backoff must be >= 0 and timeout > 0")
        base = url.rstrip("/")
        self.url = base if base.endswith("/chat/completions") else base + "/chat/completions"
        self.model, self.seed = model, seed
        self.max_retries, self.backoff, self.sleep = max_retries, backoff, sleep
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.Client(timeout=timeout, headers=headers)

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> JudgeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _wait(self, attempt: int, retry_after: str | None) -> None:
        delay = self.backoff * 2**attempt
        if retry_after is not None:
            try:
                delay = max(delay, min(float(retry_after), 60.0))
            except ValueError:
                pass
        self.sleep(delay)

    def complete(self, prompt: str) -> str:
        """The judge's answer to one user message.

        Raises:
            JudgeError: a non-transient HTTP error, no answer after the retries, a reply
                without ``choices[0].message.content``.
        """
        import httpx

        payload = {"model": self.model, "messages": [{"role": "user", "content": prompt}],
                   "temperature": 0.0, "seed": self.seed, "stream": False}
        last = ""
        for attempt in range(self.max_retries + 1):
            retry_after = None
            try:
                response = self._client.post(self.url, json=payload)
            except httpx.TimeoutException:
                last = f"no answer within {self._client.timeout.read} s"
            except httpx.TransportError as exc:
                last = f"{type(exc).__name__}: {exc}"
            else:
                if response.status_code in RETRY_STATUSES:
                    last = f"HTTP {response.status_code}"
                    retry_after = response.headers.get("retry-after")
                elif response.status_code >= 400:
                    raise JudgeError(f"{self.url} answered HTTP {response.status_code}: {response.text[:300]}")
                else:
                    try:
                        content = response.json()["choices"][0]["message"]["content"]
                    except (ValueError, LookupError, TypeError):
                        raise JudgeError(f"{self.url}: not an OpenAI chat completion: {response.text[:300]!r}") from None
                    if not isinstance(content, str):
                        raise JudgeError(f"{self.url}: the answer's content is not text: {content!r}")
                    return content
            if attempt < self.max_retries:
                self._wait(attempt, retry_after)
        raise JudgeError(f"{self.url}: no answer after {self.max_retries + 1} tries (last: {last})")


@dataclass
class JudgeReport:
    """Per-record results and the mean.

    Attributes:
        records: ``{"index", "score", "answer"}`` per record; ``score`` None when unparseable.
        mean: the mean of the parsed scores (NaN when none parsed).
        scored: how many records have a score.
        unparseable: indices of the records whose answer was not a score.
    """

    records: list[dict[str, Any]]
    mean: float
    scored: int
    unparseable: list[int]

    def summary(self) -> dict[str, Any]:
        return {"mean": self.mean, "scored": self.scored, "total": len(self.records),
                "unparseable": self.unparseable}


def judge_responses(records: Sequence[Mapping[str, Any]], client: JudgeClient, *, response_key: str = "model_response",
                    progress: bool = True, report: Callable[[str], None] | None = None) -> JudgeReport:
    """Ask the judge about every record (an empty response scores 0 without asking).

    ``report`` receives one line per unparseable answer (default: printed beside the progress bar).
    """
    from tqdm.auto import tqdm

    rows: list[dict[str, Any]] = []
    unparseable: list[int] = []
    with tqdm(total=len(records), desc="judge", unit="record", dynamic_ncols=True, disable=not progress) as bar:
        say = report or bar.write
        for i, record in enumerate(records):
            if not record[response_key].strip():
                rows.append({"index": i, "score": 0, "answer": None})
            else:
                answer = client.complete(judge_prompt(record, response_key=response_key))
                score = parse_score(answer)
                if score is None:
                    unparseable.append(i)
                    say(f"record {i}: the judge's answer is not a score from 0 to 100, left out: {answer[:200]!r}")
                rows.append({"index": i, "score": score, "answer": answer})
            bar.update(1)
    scores = [r["score"] for r in rows if r["score"] is not None]
    mean = sum(scores) / len(scores) if scores else float("nan")
    return JudgeReport(rows, mean, len(scores), unparseable)
