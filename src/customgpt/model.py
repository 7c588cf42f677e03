"""The GPT-2 network, block by block.

Read top to bottom: LayerNorm and GELU, the KV cache, causal self-attention, the MLP, the
transformer block, then the full model. Module names mirror the keys of OpenAI's GPT-2
checkpoints as Hugging Face stores them (``transformer.wte``, ``transformer.h.0.attn.c_attn``,
...), so loading real weights is a short loop (see :mod:`customgpt.checkpoints`).

Shapes in comments: B batch, T new tokens in this call, S cached + new tokens,
H heads, D head width, C = H * D model width, V vocabulary, L layers.

The KV cache is an object the caller owns and passes in, with the position to write at
(litgpt's ``input_pos``, here the number of cache columns already filled); the model keeps
no counter, so two generations on one model never share state::

    cache = model.new_kv_cache(batch_size=2, max_len=64)
    logits = model(prompt_ids, kv_cache=cache, input_pos=0)               # prefill, (2, T, V)
    logits = model(next_ids, kv_cache=cache, input_pos=T)                 # one step, (2, 1, V)

A batch of prompts of different lengths is left-padded to a common length T. Then pass
``attention_mask`` (B, S): 1 for real tokens and 0 for padding, over every column of the
cache so far (the new tokens included), growing by one column per decode step. Padded keys
are never attended to, and each row's position ids count its real tokens only (or pass
``position_ids`` (B, T) yourself), so every row computes exactly what it computes alone::

    logits = model(padded_ids, attention_mask=mask, kv_cache=cache, input_pos=0)
    mask = torch.cat([mask, torch.ones(B, 1, dtype=mask.dtype)], dim=1)
    logits = model(next_ids, attention_mask=mask, kv_cache=cache, input_pos=T)

Generation on the CPU may call :meth:`GPT.use_decode_layout` first: the same weights, stored
in the memory layout that single-token steps read fastest. There is one copy of the math.
"""

from __future__ import annotations

import ctypes
import math
import sys

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from customgpt.config import GPTConfig
from customgpt.errors import CustomGPTError


class ContextLengthError(CustomGPTError, ValueError):
    """An input reaches past the model's context window (or past the KV cache)."""


# --------------------------------------------------------------------------- primitives


def layer_norm_explicit(x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float) -> Tensor:
    """LayerNorm written out: normalise each vector to zero mean and unit (biased) variance."""
    mean = x.mean(dim=-1, keepdim=True)
    var = x.var(dim=-1, keepdim=True, unbiased=False)
    y = (x - mean) / torch.sqrt(var + eps)
    if weight is not None:
        y = y * weight
    if bias is not None:
        y = y + bias
    return y


def gelu_tanh_explicit(x: Tensor) -> Tensor:
    """GPT-2's GELU, the tanh approximation: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))."""
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


class LayerNorm(nn.Module):
    """LayerNorm with an optional bias; ``explicit`` runs :func:`layer_norm_explicit`."""

    def __init__(self, dim: int, eps: float, bias: bool = True, explicit: bool = False) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim)) if bias else None
        self.eps = eps
        self.explicit = explicit

    def forward(self, x: Tensor) -> Tensor:
        if self.explicit:
            return layer_norm_explicit(x, self.weight, self.bias, self.eps)
        return F.layer_norm(x, (x.shape[-1],), self.weight, self.bias, self.eps)


# --------------------------------------------------------------------------- KV cache


class KVCache:
    """Keys and values of every layer for ``batch_size`` rows and ``max_len`` columns:
    ``k`` and ``v`` of shape (L, B, H, max_len, D). Made by :meth:`GPT.new_kv_cache`.

    It only stores: the caller says where each call writes (``input_pos``), and the model
    reads columns ``[0, input_pos + T)`` only, so columns left from an earlier request are
    never read; a cache can be reused by starting again at ``input_pos=0``.
    """

    def __init__(self, n_layer: int, batch_size: int, n_head: int, max_len: int, head_dim: int, *,
                 device: torch.device | str, dtype: torch.dtype) -> None:
        shape = (n_layer, batch_size, n_head, max_len, head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)

    @property
    def batch_size(self) -> int:
        return self.k.shape[1]

    @property
    def max_len(self) -> int:
        return self.k.shape[3]


# --------------------------------------------------------------------------- attention


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with one fused q/k/v projection (GPT-2's ``c_attn``)."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.n_head = config.n_head
        self.head_dim = config.head_dim
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.attn_dropout = nn.Dropout(config.attn_pdrop)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.explicit = config.impl == "explicit"

    def forward(self, x: Tensor, mask: Tensor | None, cache: tuple[Tensor, Tensor] | None, input_pos: int) -> Tensor:
        """x: (B, T, C). ``mask``: None for plain causal attention over these T tokens (or one
        query against everything cached), else a boolean (B|1, 1, T, S) mask, True = "may
        attend". ``cache``: this layer's (keys, values), each (B, H, max_len, D), or None;
        the new keys and values go to columns ``[input_pos, input_pos + T)``."""
        B, T, C = x.shape
        qkv = self.c_attn(x).view(B, T, 3, self.n_head, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, H, T, D)
        if cache is not None:
            end = input_pos + T
            cache[0][:, :, input_pos:end] = k
            cache[1][:, :, input_pos:end] = v
            k, v = cache[0][:, :, :end], cache[1][:, :, :end]  # (B, H, S, D)
        is_causal = mask is None and T > 1  # then S == T: the plain triangle
        if self.explicit:
            y = self._explicit_attention(q, k, v, mask, is_causal)
        else:
            y = F.scaled_dot_product_attention(
                q, k, v,
                attn_mask=mask,
                dropout_p=self.attn_dropout.p if self.training else 0.0,
                is_causal=is_causal,
            )  # (B, H, T, D)
        y = y.transpose(1, 2).reshape(B, T, C)  # re-assemble the heads side by side
        return self.resid_dropout(self.c_proj(y))

    def _explicit_attention(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, is_causal: bool) -> Tensor:
        """softmax(Q K^T / sqrt(D)) V with the causal mask, written out for reading."""
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(self.head_dim))  # (B, H, T, S)
        if is_causal:
            mask = causal_mask(q.shape[2], k.shape[2], q.device)
        if mask is not None:
            att = att.masked_fill(~mask, float("-inf"))
        att = F.softmax(att, dim=-1)
        att = self.attn_dropout(att)
        return att @ v  # (B, H, T, D)


def causal_mask(n_query: int, n_key: int, device: torch.device | str) -> Tensor:
    """(1, 1, T, S) boolean mask: the last query sits at the last key; True = may attend."""
    q_pos = torch.arange(n_key - n_query, n_key, device=device)[:, None]
    k_pos = torch.arange(n_key, device=device)[None, :]
    return (k_pos <= q_pos)[None, None]


# --------------------------------------------------------------------------- MLP and block


class MLP(nn.Module):
    """Position-wise feed-forward: expand 4x, tanh-GELU, project back."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, config.n_inner, bias=config.bias)
        self.c_proj = nn.Linear(config.n_inner, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)
        self.explicit = config.impl == "explicit"

    def forward(self, x: Tensor) -> Tensor:
        h = self.c_fc(x)
        h = gelu_tanh_explicit(h) if self.explicit else F.gelu(h, approximate="tanh")
        return self.dropout(self.c_proj(h))


class Block(nn.Module):
    """Pre-LayerNorm transformer block: x + attn(ln_1(x)), then x + mlp(ln_2(x))."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        explicit = config.impl == "explicit"
        self.ln_1 = LayerNorm(config.n_embd, config.layer_norm_eps, config.bias, explicit)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = LayerNorm(config.n_embd, config.layer_norm_eps, config.bias, explicit)
        self.mlp = MLP(config)

    def forward(self, x: Tensor, mask: Tensor | None = None, cache: tuple[Tensor, Tensor] | None = None,
                input_pos: int = 0) -> Tensor:
        x = x + self.attn(self.ln_1(x), mask, cache, input_pos)
        x = x + self.mlp(self.ln_2(x))
        return x


# --------------------------------------------------------------------------- the model


def _empty_on_huge_pages(shape: tuple[int, int], dtype: torch.dtype) -> Tensor:
    """An empty CPU tensor whose memory, on Linux, is marked for transparent huge pages
    (``madvise(MADV_HUGEPAGE)``) before anything touches it: a batch-1 decode step reads
    every weight once, and with 2 MiB pages instead of 4 KiB ones far fewer of those reads
    miss the TLB (5-8% less time per step at the gpt2-124M shape on an AMD EPYC, one
    thread). Best effort: other systems, or a kernel that refuses, give ordinary pages."""
    tensor = torch.empty(shape, dtype=dtype)
    huge = 2 << 20
    start = -(-tensor.data_ptr() // huge) * huge  # the whole 2 MiB pages inside the tensor
    end = (tensor.data_ptr() + tensor.nbytes) // huge * huge
    if sys.platform == "linux" and end > start:
        try:
            ctypes.CDLL(None).madvise(ctypes.c_void_p(start), ctypes.c_size_t(end - start), 14)  # MADV_HUGEPAGE
        except (OSError, AttributeError):
            pass
    return tensor



class GPT(nn.Module):
    """GPT-2: token + learned position embeddings, ``n_layer`` blocks, final LayerNorm, LM head."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        explicit = config.impl == "explicit"
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(config.vocab_size, config.n_embd),
                wpe=nn.Embedding(config.context_length, config.n_embd),
                drop=nn.Dropout(config.dropout),
                h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
                ln_f=LayerNorm(config.n_embd, config.layer_norm_eps, config.bias, explicit),
            )
        )
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.transformer.wte.weight
        self.apply(self._init_weights)
        # GPT-2 scales the residual projections by 1/sqrt(2 * n_layer) at init.
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_parameters(self, trainable_only: bool = False) -> int:
        """Parameters counted once each (the tied head is not counted twice)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    @property
    def device(self) -> torch.device:
        return self.transformer.wte.weight.device

    def new_kv_cache(self, batch_size: int, max_len: int | None = None, *, dtype: torch.dtype | None = None) -> KVCache:
        """An empty :class:`KVCache` for ``batch_size`` rows and ``max_len`` columns (default:
        the context window), on the model's device, in its dtype unless ``dtype`` is given.
        Raises :class:`ContextLengthError` when ``max_len`` exceeds the context window."""
        max_len = max_len or self.config.context_length
        if max_len > self.config.context_length:
            raise ContextLengthError(f"max_len {max_len} exceeds the context window {self.config.context_length}")
        cfg = self.config
        return KVCache(cfg.n_layer, batch_size, cfg.n_head, max_len, cfg.head_dim, device=self.device,
                       dtype=dtype or self.transformer.wte.weight.dtype)

    @torch.no_grad()
    def use_decode_layout(self) -> None:
        """Store the weight of every widening ``nn.Linear`` (out >= in: ``c_attn``,
        ``attn.c_proj``, ``mlp.c_fc``) transposed in memory: the same values and shape, as
        the transposed view of a contiguous (in, out) tensor, which is what a (1, in) x
        (in, out) product reads fastest on x86 CPUs (1.2-1.6x the bandwidth of the (out, in)
        layout; measured in ``docs/generation.md``). The LM head's (V, C) weight too (a
        plain ``nn.Linear`` head; tied, that is also the token embedding, whose lookups then
        gather strided rows: about 0.2 ms for 32 tokens at the gpt2-124M shape): its batch-1
        product reads the (C, V) layout at about twice the bandwidth. On Linux the new
        memory is backed by 2 MiB pages where the kernel allows (:func:`_empty_on_huge_pages`).
        Nothing is copied beside the model; the parameters stay the same objects. Idempotent;
        CPU weights only (others are left as they are)."""
        linears = [m for m in self.transformer.h.modules() if type(m) is nn.Linear and m.out_features >= m.in_features]
        if type(self.lm_head) is nn.Linear:
            linears.append(self.lm_head)
        for module in linears:
            weight = module.weight.data
            if weight.is_contiguous() and weight.device.type == "cpu":
                relaid = _empty_on_huge_pages((weight.shape[1], weight.shape[0]), weight.dtype)
                module.weight.data = relaid.copy_(weight.t()).t()

    # ------------------------------------------------------------------ forward
    def forward_hidden(
        self,
        idx: Tensor,
        *,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        kv_cache: KVCache | None = None,
        input_pos: int = 0,
    ) -> Tensor:
        """Token ids (B, T) → final hidden states (B, T, C), after ``ln_f``.

        Args:
            idx: token ids, (B, T).
            attention_mask: optional (B, S) of 1 for real tokens and 0 for padding, S =
                ``input_pos + T``: every column seen so far (cached ones included). Padded keys
                are never attended to; position ids then count real tokens only (as Hugging
                Face does), so a left-padded row computes exactly what it computes alone.
            position_ids: optional (B, T) explicit positions.
            kv_cache: a :class:`KVCache` to read columns ``[0, input_pos)`` from and to write
                these T tokens' keys and values to, at ``[input_pos, input_pos + T)``.
            input_pos: how many cache columns are already filled (0 without a cache).

        Raises:
            ContextLengthError: ``input_pos + T`` (or a position id) is past the context
                window or the cache.
        """
        if idx.dim() != 2:
            raise ValueError(f"idx must have shape (batch, time), got {tuple(idx.shape)}")
        B, T = idx.shape
        S = input_pos + T
        if S > self.config.context_length:
            what = f"{input_pos} cached + {T} new tokens" if input_pos else f"an input of {T} tokens"
            raise ContextLengthError(
                f"{what} exceed the context window of {self.config.context_length} positions; "
                "crop the input (generation crops from the left automatically)"
            )
        if kv_cache is None and input_pos:
            raise ValueError("input_pos > 0 needs the kv_cache that holds those positions")
        if kv_cache is not None:
            if S > kv_cache.max_len:
                raise ContextLengthError(f"the KV cache holds {kv_cache.max_len} positions; {S} needed")
            if B != kv_cache.batch_size:
                raise ValueError(f"the KV cache was made for batch size {kv_cache.batch_size}, got {B}")

        mask = None
        if attention_mask is not None:
            if attention_mask.shape != (B, S):
                raise ValueError(f"attention_mask must have shape {(B, S)}, got {tuple(attention_mask.shape)}")
            am = attention_mask.to(torch.bool)
            if position_ids is None:
                position_ids = (am.long().cumsum(-1) - 1).clamp_min(0)[:, input_pos:]  # (B, T)
            # causal AND key is real; a padded query may still see itself so no row is empty
            mask = causal_mask(T, S, idx.device) & am[:, None, None, :]  # (B, 1, T, S)
            mask[:, :, torch.arange(T), torch.arange(input_pos, S)] = True
        elif input_pos > 0 and T > 1:
            mask = causal_mask(T, S, idx.device)  # (1, 1, T, S)
        if position_ids is None:
            position_ids = torch.arange(input_pos, S, device=idx.device)[None, :]  # (1, T)
        elif int(position_ids.max()) >= self.config.context_length:
            raise ContextLengthError(
                f"position id {int(position_ids.max())} is outside the context window of "
                f"{self.config.context_length} positions"
            )

        tok = self.transformer.wte(idx)  # (B, T, C)
        pos = self.transformer.wpe(position_ids)  # (B|1, T, C)
        x = self.transformer.drop(tok + pos)
        for i, block in enumerate(self.transformer.h):
            cache = (kv_cache.k[i], kv_cache.v[i]) if kv_cache is not None else None  # (B, H, max_len, D) each
            x = block(x, mask, cache, input_pos)
        return self.transformer.ln_f(x)

    def forward(
        self,
        idx: Tensor,
        *,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        kv_cache: KVCache | None = None,
        input_pos: int = 0,
        last_only: bool = False,
    ) -> Tensor:
        """Token ids (B, T) → next-token logits (B, T, V), or (B, 1, V) with ``last_only``
        (generation needs only the last position; it skips most of the LM head's work).
        Arguments as in :meth:`forward_hidden`."""
        x = self.forward_hidden(idx, attention_mask=attention_mask, position_ids=position_ids,
                                kv_cache=kv_cache, input_pos=input_pos)
        if last_only:
            x = x[:, -1:, :]
        return self.lm_head(x)  # (B, T, V)
