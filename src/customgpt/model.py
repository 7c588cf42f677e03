"""The GPT-2 network, block by block.

Read top to bottom: LayerNorm and GELU, causal self-attention (with its KV cache), the MLP,
the transformer block, then the full model. Module names mirror the keys of OpenAI's GPT-2
checkpoints as Hugging Face stores them (``transformer.wte``, ``transformer.h.0.attn.c_attn``,
...), so loading real weights is a short loop (see :mod:`customgpt.checkpoints`).

Shapes in comments: B batch, T new tokens in this call, S cached + new tokens,
H heads, D head width, C = H * D model width, V vocabulary.

There is one model. Features are options of it, not copies: the KV cache is a buffer each
attention layer may hold; heads other than the LM head use :meth:`GPT.forward_hidden`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from customgpt.config import GPTConfig
from customgpt.errors import ConfigError, CustomGPTError
from customgpt.token_ngrams import TokenNgramEmbedding


class ContextLengthError(CustomGPTError, ValueError):
    """An input reaches past the model's context window."""


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


# --------------------------------------------------------------------------- attention


class KVCache(nn.Module):
    """Preallocated keys and values of one attention layer: (B, H, max_len, D) each.

    The model tracks how many positions are filled (``GPT.cache_len``); this buffer only
    stores. Positions past the filled length are never read, so nothing from an earlier
    request can leak into a new one after :meth:`GPT.reset_kv_cache`.
    """

    def __init__(self, batch_size: int, n_head: int, max_len: int, head_dim: int, *, device, dtype) -> None:
        super().__init__()
        shape = (batch_size, n_head, max_len, head_dim)
        self.register_buffer("k", torch.zeros(shape, device=device, dtype=dtype), persistent=False)
        self.register_buffer("v", torch.zeros(shape, device=device, dtype=dtype), persistent=False)

    def update(self, start: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Write new keys/values at ``start`` and return all keys/values up to the end of them."""
        end = start + k.shape[2]
        if end > self.k.shape[2]:
            raise ContextLengthError(f"KV cache holds {self.k.shape[2]} positions; {end} needed")
        if k.shape[0] != self.k.shape[0]:
            raise ValueError(f"KV cache was set up for batch size {self.k.shape[0]}, got {k.shape[0]}")
        self.k[:, :, start:end] = k
        self.v[:, :, start:end] = v
        return self.k[:, :, :end], self.v[:, :, :end]


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
        self.kv_cache: KVCache | None = None

    def forward(self, x: Tensor, mask: Tensor | None, cache_start: int | None) -> Tensor:
        """x: (B, T, C). ``mask``: None for plain causal attention, else a boolean (B|1, 1, T, S)
        mask where True means "may attend". ``cache_start``: where the new keys go in the KV
        cache, or None to run without the cache."""
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q = q.view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, H, T, D)
        k = k.view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, H, T, D)
        v = v.view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, H, T, D)
        if cache_start is not None:
            if self.kv_cache is None:
                raise RuntimeError("use_cache=True needs GPT.setup_kv_cache() first")
            k, v = self.kv_cache.update(cache_start, k, v)  # (B, H, S, D)
        # With no mask and as many queries as keys the causal structure is the plain triangle.
        # A single new query against the cache attends to everything cached: no mask needed.
        is_causal = mask is None and k.shape[2] == T and T > 1
        if mask is None and not is_causal and T > 1:
            mask = causal_mask(T, k.shape[2], x.device)
        if self.explicit:
            y = self._explicit_attention(q, k, v, mask, is_causal)
        else:
            y = F.scaled_dot_product_attention(
                q, k, v,
                attn_mask=mask,
                dropout_p=self.attn_dropout.p if self.training else 0.0,
                is_causal=is_causal,
            )  # (B, H, T, D)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # re-assemble the heads side by side
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

    def forward(self, x: Tensor, mask: Tensor | None = None, cache_start: int | None = None) -> Tensor:
        x = x + self.attn(self.ln_1(x), mask, cache_start)
        x = x + self.mlp(self.ln_2(x))
        return x


# --------------------------------------------------------------------------- the model


class GPT(nn.Module):
    """GPT-2: token + learned position embeddings, ``n_layer`` blocks, final LayerNorm, LM head."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        explicit = config.impl == "explicit"
        self.transformer = nn.ModuleDict(
            dict(
                wte=(TokenNgramEmbedding(config.vocab_size, config.n_embd, config.token_ngram_buckets)
                     if config.token_ngram_buckets else nn.Embedding(config.vocab_size, config.n_embd)),
                wpe=nn.Embedding(config.context_length, config.n_embd),
                drop=nn.Dropout(config.dropout),
                h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
                ln_f=LayerNorm(config.n_embd, config.layer_norm_eps, config.bias, explicit),
            )
        )
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.transformer.wte.weight
        self.cache_len = 0  # filled positions of the KV cache
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

    def add_token_ngrams(self, buckets: int) -> None:
        """Give a model without them (pretrained GPT-2, say) ``buckets`` character n-gram
        embeddings (:mod:`customgpt.token_ngrams`), initialised to zero: the model computes
        exactly what it did until the buckets are trained. The token table (and the LM head
        tied to it) is kept as it is."""
        if isinstance(buckets, bool) or not isinstance(buckets, int) or buckets < 1:
            raise ConfigError(f"model.token_ngram_buckets must be an integer >= 1, got {buckets!r}")
        if self.config.token_ngram_buckets:
            raise ConfigError(f"model.token_ngram_buckets: this model already has "
                              f"{self.config.token_ngram_buckets} n-gram buckets")
        config = self.config.replace(token_ngram_buckets=buckets)  # checks the value and the vocabulary
        old = self.transformer.wte
        with torch.device("meta"):  # the new module's own table is replaced by the existing one
            new = TokenNgramEmbedding(old.num_embeddings, old.embedding_dim, buckets)
        new.weight = old.weight
        new.ngrams = nn.Embedding(buckets, old.embedding_dim, device=old.weight.device, dtype=old.weight.dtype)
        nn.init.zeros_(new.ngrams.weight)
        self.transformer.wte = new
        self.config = config

    @torch.no_grad()
    def zero_token_embeddings(self) -> None:
        """Set the token embedding table ``transformer.wte.weight`` to zero.

        For training from scratch on little data: AdamW leaves a row whose gradient is always
        zero exactly where it is, so a token the training data never shows stays a zero,
        neutral input instead of the random vector N(0, 0.02) would give it. Character n-gram
        buckets keep their random start (zeroing them too scored lower in cross-validation).
        With a tied LM head the head starts at zero too (uniform next-token logits)."""
        self.transformer.wte.weight.zero_()

    # ------------------------------------------------------------------ bookkeeping
    def num_parameters(self, trainable_only: bool = False) -> int:
        """Parameters counted once each (the tied head is not counted twice)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    @property
    def device(self) -> torch.device:
        return self.transformer.wte.weight.device

    # ------------------------------------------------------------------ KV cache
    def setup_kv_cache(self, batch_size: int, max_len: int | None = None, *, dtype: torch.dtype | None = None) -> None:
        """Allocate a KV cache in every attention layer for ``batch_size`` rows and
        ``max_len`` positions (default: the context window); starts empty."""
        max_len = max_len or self.config.context_length
        if max_len > self.config.context_length:
            raise ContextLengthError(f"max_len {max_len} exceeds the context window {self.config.context_length}")
        dtype = dtype or self.transformer.wte.weight.dtype
        for block in self.transformer.h:
            block.attn.kv_cache = KVCache(
                batch_size, self.config.n_head, max_len, self.config.head_dim, device=self.device, dtype=dtype
            )
        self.cache_len = 0

    def reset_kv_cache(self) -> None:
        """Forget everything cached (the buffers stay allocated; nothing stale is ever read)."""
        self.cache_len = 0

    def clear_kv_cache(self) -> None:
        """Free the cache buffers."""
        for block in self.transformer.h:
            block.attn.kv_cache = None
        self.cache_len = 0

    @property
    def has_kv_cache(self) -> bool:
        return self.transformer.h[0].attn.kv_cache is not None if len(self.transformer.h) else False

    # ------------------------------------------------------------------ forward
    def forward_hidden(
        self,
        idx: Tensor,
        *,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        use_cache: bool = False,
    ) -> Tensor:
        """Token ids (B, T) → final hidden states (B, T, C), after ``ln_f``.

        Args:
            idx: token ids, (B, T).
            attention_mask: optional (B, S) of 1 for real tokens and 0 for padding, covering
                every position seen so far (cached ones included). Padded keys are never
                attended to; position ids then count real tokens only (as Hugging Face does),
                so a left-padded row computes exactly what it computes alone.
            position_ids: optional (B, T) explicit positions.
            use_cache: read and extend the KV cache (after :meth:`setup_kv_cache`).
        """
        if idx.dim() != 2:
            raise ValueError(f"idx must have shape (batch, time), got {tuple(idx.shape)}")
        B, T = idx.shape
        start = self.cache_len if use_cache else 0
        S = start + T
        if S > self.config.context_length:
            what = f"{start} cached + {T} new tokens" if use_cache else f"an input of {T} tokens"
            raise ContextLengthError(
                f"{what} exceed the context window of {self.config.context_length} positions; "
                "crop the input (generation crops from the left automatically)"
            )

        mask = None
        if attention_mask is not None:
            if attention_mask.shape != (B, S):
                raise ValueError(f"attention_mask must have shape {(B, S)}, got {tuple(attention_mask.shape)}")
            am = attention_mask.to(torch.bool)
            if position_ids is None:
                position_ids = (am.long().cumsum(-1) - 1).clamp_min(0)[:, start:]
            # causal AND key is real; a padded query may still see itself so no row is empty
            mask = causal_mask(T, S, idx.device) & am[:, None, None, :]
            diag = torch.zeros(T, S, dtype=torch.bool, device=idx.device)
            diag[torch.arange(T), torch.arange(start, S)] = True
            mask = mask | diag[None, None]
        elif use_cache and start > 0 and T > 1:
            mask = causal_mask(T, S, idx.device)
        if position_ids is None:
            position_ids = torch.arange(start, S, device=idx.device)[None, :]  # (1, T)
        elif int(position_ids.max()) >= self.config.context_length:
            raise ContextLengthError(
                f"position id {int(position_ids.max())} is outside the context window of "
                f"{self.config.context_length} positions"
            )

        tok = self.transformer.wte(idx)  # (B, T, C)
        pos = self.transformer.wpe(position_ids)  # (B|1, T, C)
        x = self.transformer.drop(tok + pos)
        cache_start = start if use_cache else None
        for block in self.transformer.h:
            x = block(x, mask, cache_start)
        if use_cache:
            self.cache_len = S
        return self.transformer.ln_f(x)

    def forward(
        self,
        idx: Tensor,
        *,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        use_cache: bool = False,
        last_only: bool = False,
    ) -> Tensor:
        """Token ids (B, T) → next-token logits (B, T, V), or (B, 1, V) with ``last_only``
        (generation needs only the last position; it skips most of the LM head's work)."""
        x = self.forward_hidden(idx, attention_mask=attention_mask, position_ids=position_ids, use_cache=use_cache)
        if last_only:
            x = x[:, -1:, :]
        return self.lm_head(x)  # (B, T, V)
