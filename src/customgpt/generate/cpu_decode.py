"""The CPU decode fast path: one single-token step of the model with its KV cache, written as
a straight line of kernels for batch-1 decoding on the CPU.

This is the one place beside :mod:`customgpt.model` that spells out the block math. It stays
because the model's own forward does not reach its speed: it saves the module calls,
reshapes and mask work of the general forward (``docs/generation.md`` has the numbers). It
reads the model's own weights (in their decode layout, :meth:`GPT.use_decode_layout`; no
copies) and writes into the caller's :class:`~customgpt.model.KVCache`; the model's forward
is the reference it is tested against (logits within 1e-5, with left padding, biases or
none, tied or untied head).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from customgpt.model import GPT, MLP, Block, CausalSelfAttention, ContextLengthError, KVCache, LayerNorm

#: Run single-token steps on the CPU through :class:`CPUDecodeStep` (set to False, or pass
#: ``fast_path=False`` to ``generate_tokens`` / ``generate_batch``, for the model's forward).
CPU_DECODE_FAST_PATH = True

#: The module types the step knows how to run (anything else, e.g. a LoRA-wrapped linear).
_STOCK = (nn.ModuleDict, nn.ModuleList, nn.Embedding, nn.Dropout, nn.Linear, Block, CausalSelfAttention, MLP,
          LayerNorm)


def cpu_decode_unsupported(model: GPT) -> str | None:
    """Why :class:`CPUDecodeStep` cannot stand in for ``model``'s forward, or None when it can.

    It handles exactly the stock modules in eval mode: fp32 weights on the CPU, the fused
    implementation (``impl="fast"``), no replaced module (a LoRA-wrapped linear falls back
    to the model's forward), no forward hooks, and the model's own ``forward_hidden``. The
    LM head is not part of the step (generation runs it separately).
    """
    if type(model).forward_hidden is not GPT.forward_hidden:
        return "the model overrides forward_hidden"
    if model.training:
        return "the model is in training mode"
    if len(model.transformer.h) == 0:
        return "the model has no blocks"
    if nn.modules.module._global_forward_hooks or nn.modules.module._global_forward_pre_hooks:
        return "global forward hooks are registered"
    for name, module in model.transformer.named_modules(prefix="transformer"):
        if type(module) not in _STOCK:
            return f"{name} is a {type(module).__name__}, not a stock module"
        if getattr(module, "explicit", False):
            return f"{name} uses the explicit implementation"
        if module._forward_hooks or module._forward_pre_hooks:
            return f"{name} has hooks"
    for name, p in model.transformer.named_parameters():
        if p.device.type != "cpu" or p.dtype != torch.float32:
            return f"{name} is {p.dtype} on {p.device.type}, not float32 on the CPU"
    return None


class CPUDecodeStep:
    """One single-token step of ``model`` with a KV cache: calling it computes what
    ``model.forward_hidden(tokens[:, None], kv_cache=kv_cache, input_pos=input_pos,
    ...)[:, -1]`` computes, for a model :func:`cpu_decode_unsupported` accepts.

    Made once per request: it holds views of the model's own weights (``weight.t()``: the
    contiguous (in, out) matrix once the decode layout is on, a transposed view for the
    narrowing ``mlp.c_proj``), so the steps do no module attribute lookups. No copies.
    """

    def __init__(self, model: GPT) -> None:
        t, cfg = model.transformer, model.config
        self.n_head, self.head_dim, self.n_embd, self.context_length = cfg.n_head, cfg.head_dim, cfg.n_embd, cfg.context_length
        self.wte, self.wpe = t.wte.weight.detach(), t.wpe.weight.detach()
        self.ln_f = (t.ln_f.weight, t.ln_f.bias, t.ln_f.eps)
        self.layers = []
        for block in t.h:
            linears = []
            for lin in (block.attn.c_attn, block.attn.c_proj, block.mlp.c_fc, block.mlp.c_proj):
                linears += [lin.weight.detach().t(), None if lin.bias is None else lin.bias.detach()]
            ln1, ln2 = block.ln_1, block.ln_2
            self.layers.append((ln1.weight, ln1.bias, ln1.eps, ln2.weight, ln2.bias, ln2.eps, *linears))

    def __call__(
        self,
        tokens: Tensor,
        kv_cache: KVCache,
        input_pos: int,
        position_ids: Tensor | None = None,
        attn_mask: Tensor | None = None,
    ) -> Tensor:
        """Append one token per row at cache column ``input_pos``; return the final hidden
        states (B, C), after ``ln_f``.

        Args:
            tokens: (B,) the new token of each row.
            kv_cache: the cache holding columns ``[0, input_pos)``.
            position_ids: (B,) their positions (default: ``input_pos`` for every row).
            attn_mask: None, or a boolean (B, 1, 1, input_pos + 1) mask of the keys each row
                may attend to (as ``forward_hidden`` builds it from a padding mask).

        Raises:
            ContextLengthError: the cache or the context window is full.
        """
        B = tokens.shape[0]
        H, D, C = self.n_head, self.head_dim, self.n_embd
        S = input_pos + 1
        if S > self.context_length or S > kv_cache.max_len:
            raise ContextLengthError(f"the KV cache is full ({input_pos} positions)")
        x = self.wte[tokens] + self.wpe[input_pos if position_ids is None else position_ids]  # (B, C)
        ln, sdpa, shape = F.layer_norm, F.scaled_dot_product_attention, (C,)
        for i, (w1, b1, e1, w2, b2, e2, wqkv, bqkv, wo, bo, wfc, bfc, wpr, bpr) in enumerate(self.layers):
            k_cache, v_cache = kv_cache.k[i], kv_cache.v[i]  # (B, H, max_len, D)
            qkv = _linear(ln(x, shape, w1, b1, e1), wqkv, bqkv).view(B, 3, H, D)
            k_cache[:, :, input_pos] = qkv[:, 1]
            v_cache[:, :, input_pos] = qkv[:, 2]
            y = sdpa(qkv[:, 0, :, None], k_cache[:, :, :S], v_cache[:, :, :S], attn_mask=attn_mask)  # (B, H, 1, D)
            x = _linear(y.reshape(B, C), wo, bo).add_(x)
            h = F.gelu(_linear(ln(x, shape, w2, b2, e2), wfc, bfc), approximate="tanh")
            x = _linear(h, wpr, bpr).add_(x)
        w, b, eps = self.ln_f
        return ln(x, shape, w, b, eps)


def _linear(x: Tensor, weight_t: Tensor, bias: Tensor | None) -> Tensor:
    """x (B, in) @ weight_t (in, out) + bias."""
    return x @ weight_t if bias is None else torch.addmm(bias, x, weight_t)
