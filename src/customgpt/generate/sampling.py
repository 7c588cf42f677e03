"""Sampling: the request's knobs (:class:`SamplingParams`), the logits processors
(:func:`process_logits`) and :func:`sample`, a pure function from next-token logits to ids."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from customgpt.errors import ConfigError

#: The largest seed a torch random generator accepts (seeds are 64-bit).
MAX_SEED = 2**64 - 1


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class SamplingParams:
    """How to pick tokens and when to stop. Invalid values raise :class:`ConfigError`.

    Attributes:
        max_new_tokens: the most tokens to generate (the end-of-text token counts as one).
        temperature: divides the logits; 0 means greedy decoding (always the most likely token).
        top_k: keep only the k most likely tokens (0: off).
        top_p: keep the smallest set of most likely tokens whose probability reaches p (1: off).
        min_p: drop tokens less likely than ``min_p`` times the most likely one (0: off).
        repetition_penalty: > 1 discourages every token already in the prompt or output (1: off).
        presence_penalty: subtracted from the logit of every token the output already holds.
        frequency_penalty: subtracted once per occurrence of a token in the output.
        stop: strings that end the output; the output stops just before the first one.
        stop_at_eot: stop when the model emits the end-of-text token.
        seed: seeds this request's own random generator, 0 to 2**64 - 1 (None: a fresh
            random seed).

    The formulas are :func:`process_logits`'s.
    """

    max_new_tokens: int = 256
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    stop: tuple[str, ...] = ()
    stop_at_eot: bool = True
    seed: int | None = None

    def __post_init__(self) -> None:
        def bad(name: str, rule: str) -> ConfigError:
            return ConfigError(f"{name} must be {rule}, got {getattr(self, name)!r}")

        if not _is_int(self.max_new_tokens) or self.max_new_tokens < 0:
            raise bad("max_new_tokens", "an integer >= 0")
        if not _is_number(self.temperature) or self.temperature < 0:
            raise bad("temperature", "a number >= 0 (0 = greedy)")
        if not _is_int(self.top_k) or self.top_k < 0:
            raise bad("top_k", "an integer >= 0 (0 = off)")
        if not _is_number(self.top_p) or not 0 < self.top_p <= 1:
            raise bad("top_p", "a number in (0, 1] (1 = off)")
        if not _is_number(self.min_p) or not 0 <= self.min_p < 1:
            raise bad("min_p", "a number in [0, 1) (0 = off)")
        if not _is_number(self.repetition_penalty) or self.repetition_penalty <= 0:
            raise bad("repetition_penalty", "a number > 0 (1 = off)")
        for name in ("presence_penalty", "frequency_penalty"):
            if not _is_number(getattr(self, name)):
                raise bad(name, "a finite number (0 = off)")
        try:
            stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)
        except TypeError:
            raise bad("stop", "a string or a list of strings") from None
        for s in stop:
            if not isinstance(s, str) or not s:
                raise ConfigError(f"every stop string must be a non-empty string, got {s!r}")
        object.__setattr__(self, "stop", stop)
        if not isinstance(self.stop_at_eot, bool):
            raise bad("stop_at_eot", "true or false")
        if self.seed is not None and not (_is_int(self.seed) and 0 <= self.seed <= MAX_SEED):
            raise bad("seed", f"an integer in [0, {MAX_SEED}] (a 64-bit seed, what torch accepts) or None")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @property
    def uses_repetition_penalty(self) -> bool:
        return self.repetition_penalty != 1.0

    @property
    def uses_output_penalties(self) -> bool:
        return self.presence_penalty != 0.0 or self.frequency_penalty != 0.0

    def replace(self, **changes: Any) -> SamplingParams:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)


def make_generator(seed: int | None, device: torch.device | str = "cpu") -> torch.Generator:
    """A random generator for one request: seeded, or from fresh OS entropy."""
    gen = torch.Generator(device=device)
    if seed is None:
        gen.seed()
    else:
        gen.manual_seed(seed)
    return gen


def process_logits(
    logits: Tensor,
    params: SamplingParams,
    *,
    seen: Tensor | None = None,
    output_counts: Tensor | None = None,
) -> Tensor:
    """The logits :func:`sample` draws from: float32, (B, V), -inf for filtered tokens.

    The processors run in Hugging Face ``generate``'s order, each off at its neutral value:

    1. repetition penalty (CTRL, Keskar et al. 2019), on the tokens ``seen`` ((B, V) bool:
       prompt and output): a logit l becomes ``l / penalty`` if l > 0 else ``l * penalty``,
       so a penalty > 1 lowers the token's probability whatever the sign;
    2. presence and frequency penalties (OpenAI's rule), with ``output_counts`` ((B, V): how
       often each token occurs in the output): ``l - presence * [count > 0] - frequency * count``;
    3. temperature; 0 is greedy, where only the penalties apply (no filter changes the argmax);
    4. top-k: drop every logit below the row's k-th largest;
    5. top-p (nucleus, Holtzman et al. 2019): drop a token when the tokens more likely than it
       already reach p; the most likely token is always kept;
    6. min-p: drop tokens whose probability is below ``min_p`` times the row's highest.
    """
    logits = logits.float()
    if params.uses_repetition_penalty and seen is not None:
        penalty = params.repetition_penalty
        penalised = torch.where(logits > 0, logits / penalty, logits * penalty)
        logits = torch.where(seen, penalised, logits)
    if params.uses_output_penalties and output_counts is not None:
        present = (output_counts > 0).to(logits.dtype)
        logits = logits - params.frequency_penalty * output_counts - params.presence_penalty * present
    if params.greedy:
        return logits
    if params.temperature != 1.0:
        logits = logits / params.temperature
    if 0 < params.top_k < logits.shape[-1]:
        kth = torch.topk(logits, params.top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if params.top_p < 1.0:
        sorted_probs, order = torch.sort(torch.softmax(logits, dim=-1), dim=-1, descending=True)
        mass_before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs
        drop_sorted = mass_before >= params.top_p
        drop_sorted[..., 0] = False
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    if params.min_p > 0.0:
        probs = torch.softmax(logits, dim=-1)
        threshold = params.min_p * probs.max(dim=-1, keepdim=True).values
        logits = logits.masked_fill(probs < threshold, float("-inf"))
    return logits


def sample(
    logits: Tensor,
    params: SamplingParams,
    generator: torch.Generator | None = None,
    *,
    seen: Tensor | None = None,
    output_counts: Tensor | None = None,
) -> Tensor:
    """Pick the next token of each row: token ids (B,) from next-token ``logits`` (B, V).
    ``generator``: the request's (ignored when greedy); ``seen`` and ``output_counts``: what
    the penalties need (see :func:`process_logits`)."""
    processed = process_logits(logits, params, seen=seen, output_counts=output_counts)
    if params.greedy:
        return processed.argmax(dim=-1)
    probs = torch.softmax(processed, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


class TokenStats:
    """What the penalties need, kept on the device: :attr:`seen`, (B, V) bool, the tokens of
    each row's prompt and output, and :attr:`counts`, (B, V) float32, how often each token
    occurs in the output; each None while its penalty is off."""

    def __init__(
        self, rows: Sequence[Sequence[int]], vocab_size: int, params: SamplingParams, device: torch.device | str
    ) -> None:
        B = len(rows)
        self.seen: Tensor | None = None
        self.counts: Tensor | None = None
        if params.uses_repetition_penalty:
            self.seen = torch.zeros(B, vocab_size, dtype=torch.bool, device=device)
            for b, row in enumerate(rows):
                self.seen[b, torch.as_tensor(list(row), dtype=torch.long, device=device)] = True
        if params.uses_output_penalties:
            self.counts = torch.zeros(B, vocab_size, dtype=torch.float32, device=device)

    def update(self, tokens: Tensor) -> None:
        """Count the ids just sampled, ``tokens`` (B,)."""
        index = tokens[:, None]
        if self.seen is not None:
            self.seen.scatter_(1, index, True)
        if self.counts is not None:
            self.counts.scatter_add_(1, index, torch.ones_like(index, dtype=self.counts.dtype))
