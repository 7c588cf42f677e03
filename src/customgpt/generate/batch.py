"""Batched generation: several prompts at once, left-padded with an attention mask, each row
stopping on its own (the model's KV cache takes a padded batch with per-row positions, see
:mod:`customgpt.model`)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from contextlib import closing
from typing import TYPE_CHECKING

from customgpt.constants import EOT_ID
from customgpt.errors import ConfigError
from customgpt.generate.loop import FinishReason, check_prompt, token_loop
from customgpt.generate.sampling import SamplingParams
from customgpt.generate.stream import PLAIN_TEXT, GenerationResult, StopStringBuffer, encode_prompt

if TYPE_CHECKING:
    from customgpt.model import GPT
    from customgpt.tokenizer import AllowedSpecial, Tokenizer


def generate_batch(
    model: GPT,
    prompts: Sequence[Sequence[int]] | Sequence[str],
    params: SamplingParams | None = None,
    *,
    tokenizer: Tokenizer | None = None,
    eot_id: int | None = None,
    use_cache: bool = True,
    fast_path: bool | None = None,
    vocab_size: int | None = None,
    allowed_special: AllowedSpecial = PLAIN_TEXT,
) -> list[GenerationResult]:
    """Generate for several prompts at once (left-padded, with an attention mask).

    Each row stops on its own (end-of-text, or a stop string when a ``tokenizer`` is given);
    the batch ends when every row has. A greedy row gives the same tokens as generating that
    prompt alone. Sampled rows share one random generator, so their tokens depend on the
    batch they ran in (still reproducible with a seed).

    Args:
        prompts: token id lists, or strings (then ``tokenizer`` is required).
        tokenizer: decodes the outputs into ``text`` and enables stop strings.
        eot_id: the end-of-text id (default: the tokenizer's, else GPT-2's).
        fast_path: as in :func:`~customgpt.generate.loop.generate_tokens`.
        vocab_size: ids at or past it are never sampled (default: the tokenizer's vocabulary
            when a tokenizer is given, else the model's).
        allowed_special: how text prompts are encoded (:func:`encode_prompt`: plain text).

    Raises:
        GenerationError: a prompt is empty or holds an id outside the model's vocabulary.
    """
    params = params or SamplingParams()
    if not prompts:
        return []
    if tokenizer is None:
        if any(isinstance(p, str) for p in prompts):
            raise ConfigError("text prompts need a tokenizer: pass tokenizer=...")
        if params.stop:
            raise ConfigError("stop strings need a tokenizer to decode the output: pass tokenizer=...")
    eot = eot_id if eot_id is not None else (tokenizer.eot_id if tokenizer is not None else EOT_ID)
    rows = [
        check_prompt(
            encode_prompt(tokenizer, p, allowed_special=allowed_special) if tokenizer is not None else p,
            model.config.vocab_size, f"prompt {i}",
        )
        for i, p in enumerate(prompts)
    ]
    if vocab_size is None and tokenizer is not None:
        vocab_size = tokenizer.vocab_size
    B = len(rows)
    decoders = [tokenizer.incremental_decoder() for _ in rows] if tokenizer is not None else None
    stops = [StopStringBuffer(params.stop) for _ in rows]
    texts: list[list[str]] = [[] for _ in rows]
    token_ids: list[list[int]] = [[] for _ in rows]
    sampled = [0] * B
    reasons: list[FinishReason | None] = [None] * B
    cropped = [False] * B
    t_start = time.perf_counter()
    t_first: float | None = None
    last = params.max_new_tokens - 1
    loop = token_loop(model, rows, params, use_cache=use_cache, fast_path=fast_path, vocab_size=vocab_size)
    with closing(loop):
        for step, (_, tokens, _) in enumerate(loop):
            if t_first is None:
                t_first = time.perf_counter()
            for b, token in enumerate(tokens):
                if reasons[b] is not None:
                    continue  # this row is done; the batch carries it along until all are
                sampled[b] += 1
                # A row is cropped when its own tokens outgrow the window (padding is not).
                cropped[b] = cropped[b] or len(rows[b]) + step > model.config.context_length
                if params.stop_at_eot and token == eot:
                    reasons[b] = "eot"
                    continue
                token_ids[b].append(token)
                if decoders is not None:
                    texts[b].append(stops[b].push(decoders[b].feed(token)))
                    if stops[b].stopped:
                        reasons[b] = "stop"
                        continue
                if step == last:
                    reasons[b] = "length"
            if all(r is not None for r in reasons):
                break
    now = time.perf_counter()
    results = []
    for b in range(B):
        if decoders is not None and not stops[b].stopped:
            texts[b].append(stops[b].push(decoders[b].flush()) + stops[b].flush())
        results.append(
            GenerationResult(
                text="".join(texts[b]),
                token_ids=token_ids[b],
                prompt_tokens=len(rows[b]),
                completion_tokens=sampled[b],
                finish_reason=reasons[b] or "length",
                seconds=now - t_start,
                time_to_first_token=None if t_first is None else t_first - t_start,
                context_cropped=cropped[b],
            )
        )
    return results
