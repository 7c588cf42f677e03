"""Batched generation (:func:`generate_batch`): several prompts at once, each row stopping
on its own."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from customgpt.constants import EOT_ID
from customgpt.errors import ConfigError
from customgpt.generate.loop import check_prompt
from customgpt.generate.sampling import SamplingParams
from customgpt.generate.stream import PLAIN_TEXT, GenerationResult, RowOutput, _run_rows, encode_prompt

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
        use_cache, fast_path: as in :func:`~customgpt.generate.loop.token_loop`.
        vocab_size: ids at or past it are never sampled (default: the tokenizer's vocabulary
            when a tokenizer is given, else the model's).
        allowed_special: how text prompts are encoded (:func:`encode_prompt`: plain text).

    Raises:
        GenerationError: a prompt is empty or holds an id outside the vocabulary.
        ConfigError: text prompts or stop strings without a tokenizer.
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
    outputs = [RowOutput(len(row), params, eot, tokenizer, model.config.context_length) for row in rows]
    for _ in _run_rows(model, rows, outputs, params, use_cache=use_cache, fast_path=fast_path,
                       vocab_size=vocab_size):
        pass  # each row collects its own output
    for out in outputs:
        out.flush()
    return [out.result() for out in outputs]
