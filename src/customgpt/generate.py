"""Text generation: one engine that the CLI, the UI and the HTTP server all stream from.

Layers, bottom up:

* :class:`SamplingParams`: every knob, validated on construction.
* :func:`sample`: a pure function from next-token logits to token ids. The logit processors
  run in a fixed order (the order Hugging Face ``generate`` uses):

  1. repetition penalty (tokens seen in prompt or output: ``l / p`` if ``l > 0`` else ``l * p``)
  2. presence and frequency penalties (tokens of the output: ``l - presence*[c>0] - frequency*c``)
  3. temperature (0 means greedy: argmax of the penalised logits, the filters below are skipped)
  4. top-k, 5. top-p (nucleus), 6. min-p
  7. a draw from the softmax (``torch.multinomial`` with the request's own generator).

* :func:`generate_tokens`: yields tokens one at a time for one prompt, with the model's KV
  cache (a prefill, then one position per step, last-position logits only).
* :func:`generate_batch`: several prompts at once, left-padded with an attention mask, each row
  stopping on its own.
* :func:`stream_text` / :func:`generate_text`: text pieces (UTF-8 safe) with stop strings, and a
  :class:`GenerationResult` with counts, finish reason and speed.

The context window. GPT-2 has learned *absolute* positions, so a KV cache cannot simply slide:
once prompt + output outgrow ``context_length``, every step re-runs the model on the last
``context_length`` tokens (the window, cropped from the left) and rebuilds the cache from it.
That keeps cached generation token-for-token identical to running the full model on the
window each step (tested), at the price of a full forward per token past the limit. Steps
past the limit are flagged (:attr:`TokenStep.context_cropped`) so a front end can say so.

On the CPU, the single-token steps inside the window run through :class:`CPUDecoder` (block
weights copied into the layout the CPU's matrix-vector kernels read fastest; the model's
forward stays the reference, and runs wherever the decoder does not apply). It costs extra
memory and can be turned off: see ``docs/generation.md``.

The KV cache belongs to the model, so one model runs one generation at a time: each request
resets the cache (nothing leaks between requests), and a generation that finds another one
started on its model meanwhile stops with an error instead of reading the other's cache.
The cache stays allocated between requests; :func:`free_generation_memory` releases it.
"""

from __future__ import annotations

import math
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import closing
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from customgpt.constants import EOT_ID
from customgpt.errors import ConfigError, CustomGPTError
from customgpt.prompts import Message, PromptStyle, get_prompt_style, trim_chat_history

if TYPE_CHECKING:
    from customgpt.model import GPT
    from customgpt.tokenizer import Tokenizer

#: Why a generation ended: a stop string, the token budget, the end-of-text token, or the
#: caller closing the stream early (Ctrl-C in the chat, a client that went away).
FinishReason = Literal["stop", "length", "eot", "interrupted"]


class GenerationError(CustomGPTError, ValueError):
    """A request that cannot be generated (an empty prompt, a token outside the vocabulary)."""


# =========================================================================== parameters


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
        repetition_penalty: > 1 discourages every token already in the prompt or output:
            its logit l becomes ``l / penalty`` if l > 0 else ``l * penalty`` (1: off).
        presence_penalty: subtracted from the logit of every token the output already holds.
        frequency_penalty: subtracted once per occurrence of a token in the output.
        stop: strings that end the output; the output stops just before the first one.
        stop_at_eot: stop when the model emits the end-of-text token.
        seed: seeds this request's own random generator (None: a fresh random seed).
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

        if isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 0:
            raise bad("max_new_tokens", "an integer >= 0")
        if not _is_number(self.temperature) or self.temperature < 0:
            raise bad("temperature", "a number >= 0 (0 = greedy)")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 0:
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
        stop = self.stop
        if isinstance(stop, str):
            stop = (stop,)
        if stop is None:
            stop = ()
        try:
            stop = tuple(stop)
        except TypeError:
            raise bad("stop", "a string or a list of strings") from None
        for s in stop:
            if not isinstance(s, str) or not s:
                raise ConfigError(f"every stop string must be a non-empty string, got {s!r}")
        object.__setattr__(self, "stop", stop)
        if not isinstance(self.stop_at_eot, bool):
            raise bad("stop_at_eot", "true or false")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0):
            raise bad("seed", "an integer >= 0 or None")

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
        return SamplingParams(**{**asdict(self), **changes})


def make_generator(seed: int | None, device: torch.device | str = "cpu") -> torch.Generator:
    """A random generator for one request: seeded, or from fresh OS entropy."""
    gen = torch.Generator(device=device)
    if seed is None:
        gen.seed()
    else:
        gen.manual_seed(seed)
    return gen


# =========================================================================== logit processors


def apply_repetition_penalty(logits: Tensor, seen: Tensor, penalty: float) -> Tensor:
    """CTRL's rule: a seen token's logit l becomes l / penalty if l > 0 else l * penalty, so a
    penalty > 1 lowers its probability whatever the sign. ``seen``: (B, V) bool."""
    penalised = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, penalised, logits)


def apply_presence_frequency(logits: Tensor, counts: Tensor, presence: float, frequency: float) -> Tensor:
    """OpenAI's rule: l - presence * [count > 0] - frequency * count, ``counts``: (B, V)."""
    out = logits
    if frequency != 0.0:
        out = out - frequency * counts
    if presence != 0.0:
        out = out - presence * (counts > 0).to(logits.dtype)
    return out


def top_k_filter(logits: Tensor, k: int) -> Tensor:
    """Set every logit below the k-th largest of its row to -inf (k = 0 or >= V: no change)."""
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: Tensor, p: float) -> Tensor:
    """Nucleus filter: keep the smallest set of most likely tokens whose probability reaches p.

    A token is dropped when the tokens more likely than it already reach p on their own; the
    most likely token is always kept.
    """
    if p >= 1.0:
        return logits
    probs = torch.softmax(logits, dim=-1)
    sorted_probs, order = torch.sort(probs, dim=-1, descending=True)
    mass_before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs
    drop_sorted = mass_before >= p
    drop_sorted[..., 0] = False
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def min_p_filter(logits: Tensor, min_p: float) -> Tensor:
    """Drop tokens whose probability is below ``min_p`` times the row's highest probability."""
    if min_p <= 0.0:
        return logits
    probs = torch.softmax(logits, dim=-1)
    threshold = min_p * probs.max(dim=-1, keepdim=True).values
    return logits.masked_fill(probs < threshold, float("-inf"))


def process_logits(
    logits: Tensor,
    params: SamplingParams,
    *,
    seen: Tensor | None = None,
    output_counts: Tensor | None = None,
) -> Tensor:
    """All processors in the documented order, on float32 logits of shape (B, V).

    Returns the logits :func:`sample` draws from (-inf for filtered tokens). With
    ``temperature == 0`` only the penalties apply (the filters cannot change the argmax).
    """
    logits = logits.float()
    if params.uses_repetition_penalty and seen is not None:
        logits = apply_repetition_penalty(logits, seen, params.repetition_penalty)
    if params.uses_output_penalties and output_counts is not None:
        logits = apply_presence_frequency(logits, output_counts, params.presence_penalty, params.frequency_penalty)
    if params.greedy:
        return logits
    if params.temperature != 1.0:
        logits = logits / params.temperature
    logits = top_k_filter(logits, params.top_k)
    logits = top_p_filter(logits, params.top_p)
    logits = min_p_filter(logits, params.min_p)
    return logits


def sample(
    logits: Tensor,
    params: SamplingParams,
    generator: torch.Generator | None = None,
    *,
    seen: Tensor | None = None,
    output_counts: Tensor | None = None,
) -> Tensor:
    """Pick the next token of each row.

    Args:
        logits: next-token logits, (B, V) or (V,).
        params: the sampling parameters.
        generator: the request's random generator (ignored when greedy).
        seen: (B, V) bool, True for tokens in the prompt or output (repetition penalty).
        output_counts: (B, V) how often each token occurs in the output so far
            (presence and frequency penalties).

    Returns:
        Token ids, (B,) (or a 0-d tensor for 1-D logits).
    """
    squeeze = logits.dim() == 1
    if squeeze:
        logits = logits[None]
    processed = process_logits(logits, params, seen=seen, output_counts=output_counts)
    if params.greedy:
        out = processed.argmax(dim=-1)
    else:
        probs = torch.softmax(processed, dim=-1)
        out = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
    return out[0] if squeeze else out


class _TokenStats:
    """What the penalties need, kept on the device: which tokens were seen (prompt + output)
    and how often each occurs in the output. Only built when a penalty is on."""

    def __init__(self, rows: Sequence[Sequence[int]], vocab_size: int, params: SamplingParams, device) -> None:
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
        index = tokens[:, None]
        if self.seen is not None:
            self.seen.scatter_(1, index, True)
        if self.counts is not None:
            self.counts.scatter_add_(1, index, torch.ones_like(index, dtype=self.counts.dtype))


# =========================================================================== the token loop


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


_OWNER_ATTR = "_customgpt_generation_owner"


def _check_prompt(prompt_ids: Sequence[int], vocab_size: int, what: str = "prompt") -> list[int]:
    ids = prompt_ids.tolist() if isinstance(prompt_ids, Tensor) else list(prompt_ids)
    if not ids:
        raise GenerationError(f"{what} is empty: give at least one token")
    for i in ids:
        if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < vocab_size:
            raise GenerationError(f"{what} holds token id {i!r}, outside the model's vocabulary of {vocab_size}")
    return ids


def _prepare_kv_cache(model: GPT, batch_size: int, max_len: int) -> None:
    """Reuse the model's cache when it fits (reset: nothing is read from an earlier request),
    otherwise allocate one of exactly the size this request needs."""
    cache = model.transformer.h[0].attn.kv_cache if model.has_kv_cache else None
    dtype = model.transformer.wte.weight.dtype
    if (
        cache is None
        or cache.k.shape[0] != batch_size
        or cache.k.shape[2] < max_len
        or cache.k.dtype != dtype
        or cache.k.device != model.device
    ):
        model.setup_kv_cache(batch_size, max_len)
    else:
        model.reset_kv_cache()


#: On the CPU, compute the LM head from a transposed copy of its weight (see
#: :func:`lm_head_for_generation`). Set to False to save the memory of that copy.
CPU_TRANSPOSED_HEAD = True
_HEAD_ATTR = "_customgpt_transposed_head"


def lm_head_for_generation(model: GPT) -> Callable[[Tensor], Tensor]:
    """The LM head as generation runs it: last hidden states (B, C) -> logits (B, V).

    Why not simply ``model.lm_head``: at batch 1 the head is a matrix-vector product that
    reads the whole (V, C) weight (154 MB for GPT-2 124M, a third of the bytes of a decode
    step). On x86 CPUs PyTorch's kernels read that (V, C) layout at about half the memory
    bandwidth they reach on the (C, V) layout (measured in ``benchmarks/generate.py``), so on
    the CPU generation keeps a contiguous transposed copy of the weight and multiplies by it.
    The copy is made on first use and made again whenever the weight changes (training in
    between, ``.to()``); it costs one extra copy of the head's weight in memory
    (:data:`CPU_TRANSPOSED_HEAD` turns it off). Anything but a plain bias-free
    ``nn.Linear`` head (a LoRA-wrapped head, say) is called as it is.
    """
    head = model.lm_head
    if (
        not CPU_TRANSPOSED_HEAD
        or type(head) is not torch.nn.Linear
        or head.bias is not None
        or head.weight.device.type != "cpu"
    ):
        return head
    weight = head.weight
    cached = model.__dict__.get(_HEAD_ATTR)
    if cached is None or cached[0]() is not weight or cached[1] != weight._version or cached[2] != weight.data_ptr():
        with torch.no_grad():
            transposed = weight.detach().t().contiguous()  # (C, V)
        cached = (weakref.ref(weight), weight._version, weight.data_ptr(), transposed)
        model.__dict__[_HEAD_ATTR] = cached
    transposed = cached[3]
    return lambda hidden: hidden @ transposed


def free_generation_memory(model: GPT) -> None:
    """Drop what generation keeps on the model between requests: the KV cache buffers, the
    transposed LM-head copy and the decode-layout block weights (all rebuilt by the next
    generation)."""
    model.clear_kv_cache()
    model.__dict__.pop(_HEAD_ATTR, None)
    model.__dict__.pop(_DECODE_ATTR, None)


# =========================================================================== CPU decode fast path

#: On the CPU, run each single-token step of the KV-cache loop with :class:`CPUDecoder`
#: (block weights in the layout the CPU's matrix-vector kernels read fastest) instead of the
#: model's forward. It keeps a copy of most block weights: set to False to save that memory
#: (or pass ``fast_path=False`` to :func:`generate_tokens` / :func:`generate_batch`).
CPU_DECODE_FAST_PATH = True
_DECODE_ATTR = "_customgpt_cpu_decoder"


def _param_key(p: Tensor) -> tuple[weakref.ref, int, int]:
    return (weakref.ref(p), p._version, p.data_ptr())


def _same_param(key: tuple[weakref.ref, int, int], p: Tensor) -> bool:
    return key[0]() is p and key[1] == p._version and key[2] == p.data_ptr()


def _has_hooks(module: torch.nn.Module) -> bool:
    return bool(
        module._forward_hooks or module._forward_pre_hooks or getattr(module, "_backward_hooks", None)
    )


def cpu_decoder_unsupported(model: GPT) -> str | None:
    """Why :class:`CPUDecoder` cannot stand in for ``model``'s forward, or None when it can.

    It handles exactly the stock modules in eval mode: fp32 weights on the CPU, the fused
    implementation (``impl="fast"``), plain ``nn.Linear`` layers (a LoRA-wrapped layer, or any
    other replaced module, falls back to the model's forward), no forward hooks, and the
    model's own ``forward_hidden`` (not a subclass override).
    """
    from customgpt.model import GPT, MLP, Block, CausalSelfAttention, LayerNorm

    if type(model).forward_hidden is not GPT.forward_hidden:
        return "the model overrides forward_hidden"
    if model.training:
        return "the model is in training mode"
    weight = model.transformer.wte.weight
    if weight.device.type != "cpu":
        return f"the model is on {weight.device.type}, not the CPU"
    if weight.dtype != torch.float32:
        return f"the weights are {weight.dtype}, not float32"
    if torch.nn.modules.module._global_forward_hooks or torch.nn.modules.module._global_forward_pre_hooks:
        return "global forward hooks are registered"
    t = model.transformer
    if len(t.h) == 0:
        return "the model has no blocks"
    if type(t.wte) is not torch.nn.Embedding or type(t.wpe) is not torch.nn.Embedding:
        return "the embeddings are not plain nn.Embedding"
    if type(t.ln_f) is not LayerNorm or t.ln_f.explicit:
        return "ln_f is not the fused LayerNorm"
    for i, block in enumerate(t.h):
        if type(block) is not Block or type(block.attn) is not CausalSelfAttention or type(block.mlp) is not MLP:
            return f"block {i} holds replaced modules"
        for name, module in block.named_modules():
            if _has_hooks(module):
                return f"block {i} has hooks ({name or 'the block'})"
        for name in ("ln_1", "ln_2"):
            ln = getattr(block, name)
            if type(ln) is not LayerNorm or ln.explicit:
                return f"block {i}.{name} is not the fused LayerNorm"
        if block.attn.explicit or block.mlp.explicit:
            return f"block {i} uses the explicit implementation"
        for lin in (block.attn.c_attn, block.attn.c_proj, block.mlp.c_fc, block.mlp.c_proj):
            if type(lin) is not torch.nn.Linear:
                return f"block {i} holds a {type(lin).__name__} instead of an nn.Linear"
            if lin.weight.device.type != "cpu" or lin.weight.dtype != torch.float32:
                return f"block {i} has a weight that is not float32 on the CPU"
    for module in (t.wte, t.wpe, t.ln_f):
        if _has_hooks(module):
            return "the embeddings or ln_f have hooks"
    return None


def _decode_layout(weight: Tensor) -> tuple[Tensor, bool]:
    """A (in, out) matrix to right-multiply by, and whether it is a copy.

    Measured on x86 CPUs with MKL (``benchmarks/generate.py``, and per shape in
    ``docs/generation.md``), a (1, in) x (in, out) product reads a contiguous (in, out)
    matrix at 1.2-1.6x the bandwidth of the (out, in) layout when out >= in (768->2304,
    768->768, 768->3072); for the narrowing 3072->768 projection it is the other way round,
    so that one is used as it is, through a transposed view (no copy).
    """
    out_features, in_features = weight.shape
    if out_features >= in_features:
        return weight.detach().t().contiguous(), True
    return weight.detach().t(), False


class CPUDecoder:
    """One generation step (a single new token per row) of a :class:`~customgpt.model.GPT`
    with its KV cache, written for batch-1 decoding on the CPU.

    It computes what ``model.forward_hidden(tokens[:, None], attention_mask=..., use_cache=True)``
    computes (the model's forward stays the reference: the logits agree to float rounding,
    tested), with the block weights laid out as the CPU's matrix-vector kernels read them
    fastest (see :func:`_decode_layout`) and little Python in between: ``addmm`` with the
    bias, in-place residual adds, the keys and values written straight into the model's cache.

    Memory: the copies hold the weights of ``c_attn``, ``attn.c_proj`` and ``mlp.c_fc`` once
    more (for GPT-2 124M 56.6M parameters, 226 MB in fp32; ``mlp.c_proj`` needs no copy).
    They are made on first use, made again when a weight changes (an optimizer step, a
    ``load_state_dict``, ``.to()``), and dropped by :func:`free_generation_memory`.
    """

    def __init__(self, model: GPT) -> None:
        t = model.transformer
        cfg = model.config
        self.n_head, self.head_dim, self.n_embd = cfg.n_head, cfg.head_dim, cfg.n_embd
        self.wte, self.wpe = t.wte.weight.detach(), t.wpe.weight.detach()
        self.ln_f = (t.ln_f.weight.detach(), _detach(t.ln_f.bias), t.ln_f.eps)
        self.layers: list[tuple] = []
        copied = 0
        with torch.no_grad():
            for block in t.h:
                linears: list[Tensor] = []
                for lin in (block.attn.c_attn, block.attn.c_proj, block.mlp.c_fc, block.mlp.c_proj):
                    w, is_copy = _decode_layout(lin.weight)
                    copied += w.numel() if is_copy else 0
                    # No bias: add zeros (exact), so that every layer is one addmm.
                    b = lin.bias.detach() if lin.bias is not None else torch.zeros(w.shape[1], dtype=w.dtype)
                    linears += [w, b]
                ln1, ln2 = block.ln_1, block.ln_2
                self.layers.append(
                    (ln1.weight.detach(), _detach(ln1.bias), ln1.eps, ln2.weight.detach(), _detach(ln2.bias), ln2.eps,
                     *linears)
                )
        #: The parameters read (identity, version, storage), to notice when one changes.
        self._keys = [_param_key(p) for p in _decoder_sources(model)]
        #: Elements copied: the extra memory is ``copied_numel * 4`` bytes (fp32).
        self.copied_numel = copied
        #: Decode steps run since the copies were made (lets tests check the fast path ran).
        self.steps = 0

    def is_current(self, model: GPT) -> bool:
        """True when every parameter the decoder reads is still the same tensor, unchanged."""
        params = _decoder_sources(model)
        return len(params) == len(self._keys) and all(_same_param(k, p) for k, p in zip(self._keys, params))

    def step(
        self,
        model: GPT,
        tokens: Tensor,
        position_ids: Tensor | None = None,
        attn_mask: Tensor | None = None,
    ) -> Tensor:
        """Append one token per row to the model's KV cache; return the final hidden states (B, C).

        Args:
            tokens: (B,) the new token of each row.
            position_ids: (B,) their positions (default: the cache length, for every row).
            attn_mask: None, or a boolean (B, 1, 1, S) mask of the keys each row may attend
                to, S = cache length + 1 (as ``forward_hidden`` builds it from a padding mask).
        """
        B = tokens.shape[0]
        H, D, C = self.n_head, self.head_dim, self.n_embd
        pos = model.cache_len
        S = pos + 1
        blocks = model.transformer.h
        first = blocks[0].attn.kv_cache
        if first is None:
            raise RuntimeError("CPUDecoder.step needs the model's KV cache (GPT.setup_kv_cache())")
        if S > model.config.context_length or S > first.k.shape[2]:
            from customgpt.model import ContextLengthError

            raise ContextLengthError(f"the KV cache is full ({pos} positions)")
        if position_ids is None:
            x = self.wte[tokens] + self.wpe[pos]
        else:
            x = self.wte[tokens] + self.wpe[position_ids]
        ln, sdpa, addmm = F.layer_norm, F.scaled_dot_product_attention, torch.addmm
        shape = (C,)
        for block, (w1, b1, e1, w2, b2, e2, wqkv, bqkv, wo, bo, wfc, bfc, wpr, bpr) in zip(blocks, self.layers):
            cache = block.attn.kv_cache
            qkv = addmm(bqkv, ln(x, shape, w1, b1, e1), wqkv).view(B, 3, H, D)
            cache.k[:, :, pos] = qkv[:, 1]
            cache.v[:, :, pos] = qkv[:, 2]
            y = sdpa(qkv[:, 0, :, None], cache.k[:, :, :S], cache.v[:, :, :S], attn_mask=attn_mask)  # (B, H, 1, D)
            x = addmm(bo, y.reshape(B, C), wo).add_(x)
            h = F.gelu(addmm(bfc, ln(x, shape, w2, b2, e2), wfc), approximate="tanh")
            x = addmm(bpr, h, wpr).add_(x)
        model.cache_len = S
        self.steps += 1
        w, b, eps = self.ln_f
        return ln(x, shape, w, b, eps)


def _detach(p: Tensor | None) -> Tensor | None:
    return None if p is None else p.detach()


def _decoder_sources(model: GPT) -> list[Tensor]:
    """Every parameter :class:`CPUDecoder` reads, in a fixed order."""
    t = model.transformer
    params = [t.wte.weight, t.wpe.weight, t.ln_f.weight, t.ln_f.bias]
    for block in t.h:
        for module in (block.ln_1, block.attn.c_attn, block.attn.c_proj, block.ln_2, block.mlp.c_fc, block.mlp.c_proj):
            params += [module.weight, module.bias]
    return [p for p in params if p is not None]


def cpu_decoder_for_generation(model: GPT, enabled: bool | None = None) -> CPUDecoder | None:
    """The model's :class:`CPUDecoder`, made (or made again after a weight change) as needed.

    None, and the caller runs the model's forward, when ``enabled`` is False (None: follow
    :data:`CPU_DECODE_FAST_PATH`) or :func:`cpu_decoder_unsupported` gives a reason.
    """
    if enabled is None:
        enabled = CPU_DECODE_FAST_PATH
    if not enabled or cpu_decoder_unsupported(model) is not None:
        return None
    decoder = model.__dict__.get(_DECODE_ATTR)
    if decoder is None or not decoder.is_current(model):
        model.__dict__.pop(_DECODE_ATTR, None)  # free the stale copies before making new ones
        decoder = CPUDecoder(model)
        model.__dict__[_DECODE_ATTR] = decoder
    return decoder


def _token_loop(
    model: GPT,
    rows: list[list[int]],
    params: SamplingParams,
    generator: torch.Generator | None,
    use_cache: bool,
    fast_path: bool | None = None,
) -> Iterator[tuple[Tensor, list[int], bool]]:
    """The engine. Yields, per step, the sampled ids of all rows (as a tensor and a list) and
    whether the window was cropped. Rows are left-padded to a common length; the caller
    decides when rows are finished and closes the generator when all are.

    Each step inside the window appends one token to the KV cache: with :class:`CPUDecoder`
    where it applies (``fast_path``: None follows :data:`CPU_DECODE_FAST_PATH`), else with
    the model's forward."""
    if params.max_new_tokens == 0:
        return
    device = model.device
    B, ctx = len(rows), model.config.context_length
    lengths = [len(r) for r in rows]
    L = max(lengths)
    total = L + params.max_new_tokens
    if generator is None and not params.greedy:
        generator = make_generator(params.seed, device)
    owner = object()
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            # All tokens so far, left-padded: (B, L + max_new_tokens), filled up to n.
            seq = torch.zeros(B, total, dtype=torch.long, device=device)
            for b, row in enumerate(rows):
                seq[b, L - len(row) : L] = torch.as_tensor(row, dtype=torch.long)
            mask = None  # (B, total) 1 = real token; only needed when rows differ in length
            if any(n != L for n in lengths):
                mask = torch.ones(B, total, dtype=torch.long, device=device)
                for b, n_b in enumerate(lengths):
                    mask[b, : L - n_b] = 0
            stats = (
                _TokenStats(rows, model.config.vocab_size, params, device)
                if params.uses_repetition_penalty or params.uses_output_penalties
                else None
            )
            if use_cache:
                _prepare_kv_cache(model, B, min(ctx, total))
                model.__dict__[_OWNER_ATTR] = owner
            head = lm_head_for_generation(model)
            decoder = cpu_decoder_for_generation(model, fast_path) if use_cache else None
            step_positions = step_mask = None
            if decoder is not None and mask is not None:
                # What forward_hidden derives from the padding mask for one new token at n-1:
                # its position counts the row's real tokens; it attends to the real keys.
                step_positions = (mask.cumsum(-1) - 1).clamp_min(0)  # (B, total)
                step_mask = mask.to(torch.bool)[:, None, None, :]  # (B, 1, 1, total)

            def forward_window(n: int) -> Tensor:
                """Run the model on the last ``ctx`` positions (a prefill when caching)."""
                start = max(0, n - ctx)
                am = mask[:, start:n] if mask is not None else None
                if use_cache:
                    model.reset_kv_cache()
                return head(model.forward_hidden(seq[:, start:n], attention_mask=am, use_cache=use_cache)[:, -1])

            n = L
            logits = forward_window(n)  # (B, V)
        for step in range(params.max_new_tokens):
            with torch.inference_mode():
                tokens = sample(
                    logits,
                    params,
                    generator,
                    seen=stats.seen if stats else None,
                    output_counts=stats.counts if stats else None,
                )
            token_list = tokens.tolist()  # the one host-device sync per step
            yield tokens, token_list, n > ctx
            if step == params.max_new_tokens - 1:
                break
            if use_cache and model.__dict__.get(_OWNER_ATTR) is not owner:
                raise GenerationError(
                    "another generation started on this model while this one was running; the KV "
                    "cache belongs to the model, so run one generation per model at a time"
                )
            with torch.inference_mode():
                seq[:, n] = tokens
                n += 1
                if stats is not None:
                    stats.update(tokens)
                if use_cache and n <= ctx:
                    # The cache holds positions [0, n-1): append one and read the last logits.
                    if decoder is not None:
                        if step_mask is None:
                            hidden = decoder.step(model, tokens)
                        else:
                            hidden = decoder.step(model, tokens, step_positions[:, n - 1], step_mask[..., :n])
                        logits = head(hidden)
                    else:
                        am = mask[:, :n] if mask is not None else None
                        hidden = model.forward_hidden(tokens[:, None], attention_mask=am, use_cache=True)
                        logits = head(hidden[:, -1])
                else:
                    # Past the window (absolute positions shift: rebuild the cache from the
                    # cropped window), or no cache at all.
                    logits = forward_window(n)
    finally:
        if model.__dict__.get(_OWNER_ATTR) is owner:
            del model.__dict__[_OWNER_ATTR]
        if was_training:
            model.train()


def generate_tokens(
    model: GPT,
    prompt_ids: Sequence[int] | Tensor,
    params: SamplingParams | None = None,
    *,
    eot_id: int = EOT_ID,
    use_cache: bool = True,
    generator: torch.Generator | None = None,
    fast_path: bool | None = None,
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
        use_cache: use the KV cache (``False`` runs the full window every step: the reference).
        generator: a random generator to use instead of one seeded from ``params.seed``.
        fast_path: run the decode steps on the CPU with :class:`CPUDecoder` (None: as
            :data:`CPU_DECODE_FAST_PATH` says; False: always the model's forward).
    """
    params = params or SamplingParams()
    ids = _check_prompt(prompt_ids, model.config.vocab_size)
    return _generate_tokens(model, ids, params, eot_id, use_cache, generator, fast_path)


def _generate_tokens(
    model: GPT,
    ids: list[int],
    params: SamplingParams,
    eot_id: int,
    use_cache: bool,
    generator,
    fast_path: bool | None = None,
) -> Iterator[TokenStep]:
    last = params.max_new_tokens - 1
    with closing(_token_loop(model, [ids], params, generator, use_cache, fast_path)) as loop:
        for step, (_, (token,), cropped) in enumerate(loop):
            if params.stop_at_eot and token == eot_id:
                yield TokenStep(token, "eot", cropped)
                return
            yield TokenStep(token, "length" if step == last else None, cropped)


# =========================================================================== text


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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def encode_prompt(tokenizer: Tokenizer, prompt: str | Sequence[int]) -> list[int]:
    """Token ids of a prompt; an empty prompt becomes the end-of-text token alone, which is
    how GPT-2 samples unconditionally (it was trained with that token between documents)."""
    if isinstance(prompt, str):
        ids = tokenizer.encode(prompt)
    elif isinstance(prompt, Tensor):
        ids = prompt.tolist()
    else:
        ids = list(prompt)
    return ids or [tokenizer.eot_id]


class TextStream:
    """Iterate to receive text pieces as they are generated; :attr:`result` is set at the end.

        stream = stream_text(model, tokenizer, "Once upon a time", SamplingParams(seed=1))
        for piece in stream:
            print(piece, end="", flush=True)
        print(stream.result.finish_reason, stream.result.tokens_per_second)

    :meth:`close` stops early (the result then says ``"interrupted"``). The pieces are UTF-8
    safe (a character split over tokens comes out whole) and never include any part of a
    stop string. ``on_finish`` is called with the result once, however the stream ends.
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
    ) -> None:
        self.params = params or SamplingParams()
        self.on_finish = on_finish
        self.prompt_ids = _check_prompt(encode_prompt(tokenizer, prompt), model.config.vocab_size)
        self.tokenizer = tokenizer
        self.on_context_full = on_context_full
        self.context_cropped = False
        self.result: GenerationResult | None = None
        self._text: list[str] = []
        self._token_ids: list[int] = []
        self._sampled = 0
        self._t_start: float | None = None
        self._t_first: float | None = None
        self._steps = _generate_tokens(model, self.prompt_ids, self.params, tokenizer.eot_id, use_cache, None)
        self._pieces = self._run()

    def __iter__(self) -> TextStream:
        return self

    def __next__(self) -> str:
        return next(self._pieces)

    def _run(self) -> Iterator[str]:
        self._t_start = time.perf_counter()
        decoder = self.tokenizer.incremental_decoder()
        stops = StopStringBuffer(self.params.stop)
        reason: FinishReason = "length"
        with closing(self._steps):
            for step in self._steps:
                if self._t_first is None:
                    self._t_first = time.perf_counter()
                self._sampled += 1
                if step.context_cropped and not self.context_cropped:
                    self.context_cropped = True
                    if self.on_context_full is not None:
                        self.on_context_full()
                if step.finish_reason == "eot":
                    reason = "eot"
                    break
                self._token_ids.append(step.token_id)
                piece = stops.push(decoder.feed(step.token_id))
                if piece:
                    self._text.append(piece)
                    yield piece
                if stops.stopped:
                    reason = "stop"
                    break
        if not stops.stopped:
            piece = stops.push(decoder.flush()) + stops.flush()
            if piece:
                self._text.append(piece)
                yield piece
        self._finish(reason)

    def _finish(self, reason: FinishReason) -> None:
        now = time.perf_counter()
        start = self._t_start if self._t_start is not None else now
        self.result = GenerationResult(
            text="".join(self._text),
            token_ids=list(self._token_ids),
            prompt_tokens=len(self.prompt_ids),
            completion_tokens=self._sampled,
            finish_reason=reason,
            seconds=now - start,
            time_to_first_token=None if self._t_first is None else self._t_first - start,
            context_cropped=self.context_cropped,
        )
        if self.on_finish is not None:
            self.on_finish(self.result)

    def close(self) -> None:
        """Stop generating now (the model's cache is released for the next request)."""
        self._pieces.close()
        self._steps.close()
        if self.result is None:
            self._finish("interrupted")

    def collect(self) -> GenerationResult:
        """Run to the end and return the result."""
        for _ in self:
            pass
        assert self.result is not None
        return self.result


def stream_text(
    model: GPT,
    tokenizer: Tokenizer,
    prompt: str | Sequence[int],
    params: SamplingParams | None = None,
    *,
    use_cache: bool = True,
    on_context_full: Callable[[], None] | None = None,
) -> TextStream:
    """Stream the continuation of ``prompt`` (text, or token ids) as text pieces.

    ``on_context_full`` is called once, the first time prompt + output no longer fit the
    context window and generation goes on from a window cropped on the left.
    """
    return TextStream(model, tokenizer, prompt, params, use_cache=use_cache, on_context_full=on_context_full)


def generate_text(
    model: GPT,
    tokenizer: Tokenizer,
    prompt: str | Sequence[int],
    params: SamplingParams | None = None,
    *,
    use_cache: bool = True,
) -> GenerationResult:
    """Generate to the end and return the :class:`GenerationResult` (no streaming)."""
    return stream_text(model, tokenizer, prompt, params, use_cache=use_cache).collect()


# =========================================================================== batches


def generate_batch(
    model: GPT,
    prompts: Sequence[Sequence[int]] | Sequence[str],
    params: SamplingParams | None = None,
    *,
    tokenizer: Tokenizer | None = None,
    eot_id: int | None = None,
    use_cache: bool = True,
    fast_path: bool | None = None,
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
        fast_path: as in :func:`generate_tokens`.
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
        _check_prompt(encode_prompt(tokenizer, p) if tokenizer is not None else p, model.config.vocab_size, f"prompt {i}")
        for i, p in enumerate(prompts)
    ]
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
    with closing(_token_loop(model, rows, params, None, use_cache, fast_path)) as loop:
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


# =========================================================================== chat


class ChatSession:
    """A conversation with a model: the history, formatted with a prompt style, kept inside
    the context window (oldest turns dropped first), and one streamed reply per user turn.

        chat = ChatSession(model, tokenizer, "alpaca", SamplingParams(temperature=0.7))
        for piece in chat.send("Name three colours."):
            print(piece, end="")

    The reply joins the history when its stream ends, also when it is closed early (then it
    holds what was shown). The style's stop strings are added to ``params.stop``.
    """

    def __init__(
        self,
        model: GPT,
        tokenizer: Tokenizer,
        style: str | PromptStyle,
        params: SamplingParams | None = None,
        *,
        system: str | None = None,
        use_cache: bool = True,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.style = get_prompt_style(style)
        params = params or SamplingParams()
        self.params = params.replace(stop=tuple(dict.fromkeys(params.stop + self.style.stop_strings)))
        self.system = system
        self.use_cache = use_cache
        self.history: list[Message] = []

    @property
    def prompt_budget(self) -> int:
        """Tokens the formatted history may take: the window minus room for the reply (but
        at least a quarter of the window, so a long reply budget still leaves some history)."""
        ctx = self.model.config.context_length
        return max(ctx - self.params.max_new_tokens, ctx // 4)

    def reset(self) -> None:
        """Forget the conversation."""
        self.history = []

    def prompt_for(self, user_text: str) -> tuple[list[Message], str]:
        """The messages kept for the next reply and the prompt text they format to."""
        system = [Message("system", self.system)] if self.system else []
        messages = system + self.history + [Message("user", user_text)]
        kept = trim_chat_history(
            self.style, messages, lambda text: len(self.tokenizer.encode(text)), self.prompt_budget
        )
        return kept, self.style.format_chat(kept)

    def send(self, user_text: str, *, on_context_full: Callable[[], None] | None = None) -> TextStream:
        """Stream the reply to ``user_text``."""
        kept, prompt = self.prompt_for(user_text)
        history = [m for m in kept if m.role != "system"]

        def record(result: GenerationResult) -> None:
            self.history = history + [Message("assistant", result.text)]

        return TextStream(
            self.model,
            self.tokenizer,
            prompt,
            self.params,
            use_cache=self.use_cache,
            on_context_full=on_context_full,
            on_finish=record,
        )
