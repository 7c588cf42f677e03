"""The token loop: a prefill, then one KV-cache step per new token, for one prompt or a
left-padded batch of them. Each request makes its own KV cache (:meth:`GPT.new_kv_cache`),
so generations on one model share no state; on the CPU see ``docs/generation.md`` for the
decode layout, :class:`~customgpt.generate.cpu_decode.CPUDecodeStep` and the LM head.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import closing
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch
from torch import Tensor

import customgpt.generate.cpu_decode as cpu_decode
from customgpt.constants import EOT_ID
from customgpt.errors import CustomGPTError
from customgpt.generate.sampling import SamplingParams, TokenStats, make_generator, sample

if TYPE_CHECKING:
    from customgpt.model import GPT

#: Why a generation ended: a stop string, the token budget, the end-of-text token, or the
#: caller closing the stream early (Ctrl-C in the chat, a client that went away).
FinishReason = Literal["stop", "length", "eot", "interrupted"]

#: False: on the CPU too, run the LM head as it is (no transposed copy; see
#: :func:`lm_head_for_generation`).
CPU_TRANSPOSED_HEAD = True


class GenerationError(CustomGPTError, ValueError):
    """A request that cannot be generated (an empty prompt, a token outside the vocabulary)."""


@dataclass(frozen=True, slots=True)
class TokenStep:
    """One generated token.

    Attributes:
        token_id: the token.
        finish_reason: None while generation goes on; ``"eot"`` when this token is the
            end-of-text token (which is then not part of the output text), ``"length"`` when
            it is the last token the budget allows.
        context_cropped: the prompt plus output no longer fit the context window, so this
            token was predicted from the last ``context_length`` tokens only.
    """

    token_id: int
    finish_reason: FinishReason | None = None
    context_cropped: bool = False


def check_prompt(prompt_ids: Sequence[int] | Tensor, vocab_size: int, what: str = "prompt") -> list[int]:
    """The prompt's ids as a list; :class:`GenerationError` if it is empty or holds an id
    outside ``[0, vocab_size)``."""
    ids = prompt_ids.tolist() if isinstance(prompt_ids, Tensor) else list(prompt_ids)
    if not ids:
        raise GenerationError(f"{what} is empty: give at least one token")
    for i in ids:
        if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < vocab_size:
            raise GenerationError(f"{what} holds token id {i!r}, outside the vocabulary (ids 0 to {vocab_size - 1})")
    return ids


def sampled_vocab_size(model: GPT, tokenizer_vocab_size: int | None) -> int:
    """How many ids may be sampled: the model's vocabulary, cut to the tokenizer's when the
    model's is larger (a table padded to a multiple of 64, as nanoGPT trains GPT-2 with 50,304
    rows: the ids past the tokenizer's cannot be decoded, so their logits are masked)."""
    n = model.config.vocab_size
    return n if tokenizer_vocab_size is None else min(n, tokenizer_vocab_size)


def lm_head_for_generation(model: GPT) -> Callable[[Tensor], Tensor]:
    """The LM head as generation runs it: last hidden states (B, C) -> logits (B, V).

    On x86 CPUs PyTorch reads the head's (V, C) weight at about half the memory bandwidth it
    reaches on the (C, V) layout (``benchmarks/generate.py``), and at batch 1 the head is a
    third of a decode step's bytes. So on the CPU the logits are ``hidden @ weight.t()`` from
    the (C, V) matrix: a view of the weight in the decode layout (:meth:`GPT.use_decode_layout`),
    else a contiguous copy per request (nothing cached on the model can go stale when training
    changes the weights in place; :data:`CPU_TRANSPOSED_HEAD` turns it off). Anything but a
    plain bias-free ``nn.Linear`` head (a LoRA-wrapped head, say) is called as it is.
    """
    head = model.lm_head
    if (
        not CPU_TRANSPOSED_HEAD
        or type(head) is not torch.nn.Linear
        or head.bias is not None
        or head.weight.device.type != "cpu"
    ):
        return head
    weight_t = head.weight.detach().t()  # (C, V)
    if not weight_t.is_contiguous():  # not in the decode layout (GPT.use_decode_layout)
        weight_t = weight_t.contiguous()
    return lambda hidden: hidden @ weight_t


def token_loop(
    model: GPT,
    rows: list[list[int]],
    params: SamplingParams,
    *,
    use_cache: bool = True,
    fast_path: bool | None = None,
    vocab_size: int | None = None,
) -> Iterator[list[int]]:
    """The engine. Yields, per step, the sampled id of every row; the rows are left-padded to
    a common length, and the caller decides when they are finished (then closes the loop).

    GPT-2's positions are absolute, so the KV cache cannot slide: once prompt + output outgrow
    ``context_length``, every step re-runs the model on the last ``context_length`` tokens and
    rebuilds the cache from them (so the tokens equal a full forward on that window, tested).
    Nothing is sized by ``max_new_tokens``: the loop holds at most the prompt plus one window.

    Args:
        rows: checked prompts (:func:`check_prompt`), one per batch row.
        use_cache: False runs the full window every step (the reference).
        fast_path: on the CPU, put the weights in their decode layout and run single-token
            steps through :class:`~customgpt.generate.cpu_decode.CPUDecodeStep` (None: as
            :data:`~customgpt.generate.cpu_decode.CPU_DECODE_FAST_PATH` says).
        vocab_size: ids at or past it are never sampled (the tokenizer's vocabulary, see
            :func:`sampled_vocab_size`; None: the model's).
    """
    if params.max_new_tokens == 0:
        return
    device = model.device
    B, ctx = len(rows), model.config.context_length
    L = max(len(row) for row in rows)
    vocab = sampled_vocab_size(model, vocab_size)
    generator = None if params.greedy else make_generator(params.seed, device)
    was_training = model.training
    model.eval()
    fast = (cpu_decode.CPU_DECODE_FAST_PATH if fast_path is None else fast_path) and device.type == "cpu"
    if fast:
        model.use_decode_layout()
    fast = fast and use_cache and cpu_decode.cpu_decode_unsupported(model) is None
    try:
        with torch.inference_mode():
            # The tokens so far, left-padded, in a buffer of at most the prompt plus one window:
            # columns [0, n) are filled; past the window the oldest columns are dropped.
            capacity = L + min(params.max_new_tokens, ctx)
            seq = torch.zeros(B, capacity, dtype=torch.long, device=device)
            for b, row in enumerate(rows):
                seq[b, L - len(row) : L] = torch.as_tensor(row, dtype=torch.long)
            padding = torch.tensor([L - len(row) for row in rows], device=device)
            mask = None  # (B, capacity) 1 = real token; only needed when rows differ in length
            if padding.any():
                mask = (torch.arange(capacity, device=device) >= padding[:, None]).long()
            stats = TokenStats(rows, model.config.vocab_size, params, device)
            head = lm_head_for_generation(model)
            cache = model.new_kv_cache(B, min(ctx, L + params.max_new_tokens)) if use_cache else None
            decode_step = cpu_decode.CPUDecodeStep(model) if fast else None
            step_positions = step_mask = None
            if fast and mask is not None:
                # What forward_hidden derives from the padding mask for one new token at n-1:
                # its position counts the row's real tokens; it attends to the real keys.
                step_positions = (mask.cumsum(-1) - 1).clamp_min(0)  # (B, capacity)
                step_mask = mask.to(torch.bool)[:, None, None, :]  # (B, 1, 1, capacity)

            def forward_window(n: int) -> Tensor:
                """Run the model on the last ``ctx`` columns (a prefill when caching)."""
                start = max(0, n - ctx)
                am = mask[:, start:n] if mask is not None else None
                return head(model.forward_hidden(seq[:, start:n], attention_mask=am, kv_cache=cache)[:, -1])

            n = total = L  # columns filled; tokens so far (they differ once columns are dropped)
            logits = forward_window(n)  # (B, V)
        for step in range(params.max_new_tokens):
            with torch.inference_mode():
                if vocab < logits.shape[-1]:
                    logits[:, vocab:] = float("-inf")  # ids the tokenizer cannot decode
                tokens = sample(logits, params, generator, seen=stats.seen, output_counts=stats.counts)
            yield tokens.tolist()  # the one host-device sync per step
            if step == params.max_new_tokens - 1:
                break
            with torch.inference_mode():
                if n == capacity:  # keep the last ctx - 1 columns, then append
                    keep = ctx - 1
                    seq[:, :keep] = seq[:, n - keep : n].clone()
                    if mask is not None:
                        mask[:, :keep] = mask[:, n - keep : n].clone()
                    n = keep
                seq[:, n] = tokens
                n += 1
                total += 1
                stats.update(tokens)
                if use_cache and total <= ctx:
                    # The cache holds columns [0, n-1): append one and read the last logits.
                    if fast:
                        positions = step_positions[:, n - 1] if step_positions is not None else None
                        am = step_mask[..., :n] if step_mask is not None else None
                        hidden = decode_step(tokens, cache, n - 1, positions, am)
                    else:
                        am = mask[:, :n] if mask is not None else None
                        hidden = model.forward_hidden(tokens[:, None], attention_mask=am, kv_cache=cache,
                                                      input_pos=n - 1)[:, -1]
                    logits = head(hidden)
                else:
                    # Past the window (absolute positions shift: rebuild the cache from the
                    # cropped window), or no cache at all.
                    logits = forward_window(n)
    finally:
        if was_training:
            model.train()


def generate_tokens(
    model: GPT,
    prompt_ids: Sequence[int] | Tensor,
    params: SamplingParams | None = None,
    *,
    eot_id: int = EOT_ID,
    use_cache: bool = True,
    fast_path: bool | None = None,
    vocab_size: int | None = None,
) -> Iterator[TokenStep]:
    """Generate for one prompt, yielding each token as soon as it is sampled.

    Generation ends after ``params.max_new_tokens`` tokens (the last step has
    ``finish_reason="length"``) or, with ``params.stop_at_eot``, at the end-of-text token
    (yielded with ``finish_reason="eot"``). Stop strings are text: :func:`stream_text` handles
    them. Close the iterator to stop early. Prompts longer than the context window are cropped
    from the left.

    Args:
        model: a :class:`~customgpt.model.GPT` (put in eval mode while generating).
        prompt_ids: the prompt's token ids (at least one).
        params: sampling parameters (default: :class:`SamplingParams`).
        eot_id: the end-of-text token id.
        use_cache, fast_path: as in :func:`token_loop`.
        vocab_size: the tokenizer's vocabulary size: ids at or past it are never sampled
            (None: every id of the model's vocabulary may be).

    Raises:
        GenerationError: the prompt is empty or holds an id outside the vocabulary.
    """
    params = params or SamplingParams()
    ids = check_prompt(prompt_ids, model.config.vocab_size)
    loop = token_loop(model, [ids], params, use_cache=use_cache, fast_path=fast_path, vocab_size=vocab_size)

    def steps() -> Iterator[TokenStep]:  # a generator inside, so that a bad prompt raises at once
        with closing(loop):
            for step, (token,) in enumerate(loop):
                cropped = len(ids) + step > model.config.context_length
                if params.stop_at_eot and token == eot_id:
                    yield TokenStep(token, "eot", cropped)
                    return
                yield TokenStep(token, "length" if step == params.max_new_tokens - 1 else None, cropped)

    return steps()
