"""Model configuration: one validated dataclass and a table of named presets.

The GPT-2 presets carry the exact shapes of OpenAI's released checkpoints, so a preset plus
loaded weights reproduces Hugging Face's ``GPT2LMHeadModel``. The small ``cpu-*`` presets
keep the GPT-2 vocabulary and are sized for demos and tests on a laptop CPU.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from typing import Any

from customgpt.constants import GPT2_VOCAB_SIZE
from customgpt.errors import ConfigError


@dataclass
class GPTConfig:
    """Shape and behaviour of a GPT-2 style decoder.

    Attributes:
        vocab_size: number of token ids (GPT-2: 50,257).
        context_length: the longest sequence the model accepts (GPT-2: 1,024 positions).
        n_embd: width of the residual stream.
        n_layer: number of transformer blocks.
        n_head: attention heads per block; ``n_embd`` must be divisible by it.
        dropout: dropout on embeddings, attention output and MLP output (0 at inference).
        attn_dropout: dropout on the attention weights; ``None`` means the same as ``dropout``.
        bias: biases in the linear layers and LayerNorms (GPT-2: True).
        layer_norm_eps: LayerNorm epsilon (GPT-2: 1e-5).
        mlp_ratio: MLP hidden width as a multiple of ``n_embd`` (GPT-2: 4).
        tie_embeddings: share the LM head's weight with the token embedding (GPT-2: True).
        impl: ``"fast"`` uses fused PyTorch kernels (SDPA, ``F.layer_norm``, ``F.gelu``);
            ``"explicit"`` runs the written-out math. Both give the same numbers (tested).
        name: the preset name this config came from, if any (informational).
    """

    vocab_size: int = GPT2_VOCAB_SIZE
    context_length: int = 1024
    n_embd: int = 768
    n_layer: int = 12
    n_head: int = 12
    dropout: float = 0.0
    attn_dropout: float | None = None
    bias: bool = True
    layer_norm_eps: float = 1e-5
    mlp_ratio: int = 4
    tie_embeddings: bool = True
    impl: str = "fast"
    name: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        for key in ("vocab_size", "context_length", "n_embd", "n_layer", "n_head", "mlp_ratio"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ConfigError(f"model.{key} must be a positive integer, got {value!r}")
        if self.n_embd % self.n_head != 0:
            raise ConfigError(
                f"model.n_embd ({self.n_embd}) must be divisible by model.n_head ({self.n_head})"
            )
        for key in ("dropout", "attn_dropout") if self.attn_dropout is not None else ("dropout",):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
                raise ConfigError(f"model.{key} must be a number in [0, 1), got {value!r}")
        if not isinstance(self.layer_norm_eps, (int, float)) or self.layer_norm_eps <= 0:
            raise ConfigError(f"model.layer_norm_eps must be > 0, got {self.layer_norm_eps!r}")
        for key in ("bias", "tie_embeddings"):
            if not isinstance(getattr(self, key), bool):
                raise ConfigError(f"model.{key} must be true or false, got {getattr(self, key)!r}")
        if self.impl not in ("fast", "explicit"):
            raise ConfigError(f"model.impl must be one of fast, explicit, got {self.impl!r}")

    # ------------------------------------------------------------------ derived values
    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def attn_pdrop(self) -> float:
        return self.dropout if self.attn_dropout is None else self.attn_dropout

    @property
    def n_inner(self) -> int:
        return self.mlp_ratio * self.n_embd

    def num_parameters(self) -> int:
        """Parameter count computed from the shapes alone (tied head counted once)."""
        d, v, L = self.n_embd, self.vocab_size, self.n_layer
        b = 1 if self.bias else 0
        ln = d + b * d
        attn = d * 3 * d + b * 3 * d + d * d + b * d
        mlp = d * self.n_inner + b * self.n_inner + self.n_inner * d + b * d
        block = 2 * ln + attn + mlp
        head = 0 if self.tie_embeddings else v * d
        return v * d + self.context_length * d + L * block + ln + head

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, where: str = "model") -> GPTConfig:
        """Build a config from a mapping; unknown keys are an error that names them."""
        if not isinstance(data, dict):
            raise ConfigError(f"{where} must be a mapping, got {type(data).__name__}")
        if data.get("token_ngram_buckets"):  # hashed token n-gram embeddings: a removed option
            raise ConfigError(f"{where}: token_ngram_buckets {data['token_ngram_buckets']!r}: hashed token n-gram "
                              "embeddings were removed; this model cannot be loaded by this version")
        data = {k: v for k, v in data.items() if k != "token_ngram_buckets"}  # 0, as earlier versions saved
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(
                f"unknown key(s) in {where}: {', '.join(unknown)} (known: {', '.join(sorted(known))})"
            )
        return cls(**data)

    def replace(self, **changes: Any) -> GPTConfig:
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> GPTConfig:
        """A named preset (see :data:`PRESETS`), optionally with some fields changed."""
        key = _PRESET_ALIASES.get(name, name)
        if key not in PRESETS:
            raise ConfigError(f"unknown model preset {name!r}; known presets: {', '.join(PRESETS)}")
        return cls(**{**PRESETS[key], "name": key, **overrides})

    # ------------------------------------------------------------------ Hugging Face
    def to_hf_dict(self) -> dict[str, Any]:
        """The equivalent ``transformers.GPT2Config`` fields."""
        if not self.tie_embeddings:
            raise ConfigError("Hugging Face GPT-2 ties the LM head to wte; this model has tie_embeddings=false")
        return {
            "model_type": "gpt2",
            "architectures": ["GPT2LMHeadModel"],
            "vocab_size": self.vocab_size,
            "n_positions": self.context_length,
            "n_ctx": self.context_length,
            "n_embd": self.n_embd,
            "n_layer": self.n_layer,
            "n_head": self.n_head,
            "n_inner": self.n_inner,
            "activation_function": "gelu_new",
            "resid_pdrop": self.dropout,
            "embd_pdrop": self.dropout,
            "attn_pdrop": self.attn_pdrop,
            "layer_norm_epsilon": self.layer_norm_eps,
            "initializer_range": 0.02,
            "bos_token_id": min(50256, self.vocab_size - 1),
            "eos_token_id": min(50256, self.vocab_size - 1),
            "tie_word_embeddings": True,
        }

    @classmethod
    def from_hf_dict(cls, hf: dict[str, Any]) -> GPTConfig:
        """Read a Hugging Face GPT-2 ``config.json`` mapping."""
        model_type = hf.get("model_type", "gpt2")
        if model_type != "gpt2":
            raise ConfigError(f"not a GPT-2 config: model_type is {model_type!r}")
        act = hf.get("activation_function", "gelu_new")
        if act not in ("gelu_new", "gelu_pytorch_tanh"):
            raise ConfigError(f"unsupported activation_function {act!r} (customgpt uses tanh GELU, 'gelu_new')")
        n_embd = int(hf.get("n_embd", 768))
        n_inner = hf.get("n_inner") or 4 * n_embd
        if n_inner % n_embd != 0:
            raise ConfigError(f"n_inner ({n_inner}) must be a multiple of n_embd ({n_embd})")
        if hf.get("add_cross_attention") or hf.get("scale_attn_by_inverse_layer_idx") or hf.get(
            "reorder_and_upcast_attn"
        ):
            raise ConfigError("GPT-2 variants with cross-attention or layer-scaled attention are not supported")
        if hf.get("scale_attn_weights", True) is False:
            raise ConfigError("GPT-2 configs with scale_attn_weights=false are not supported")
        return cls(
            vocab_size=int(hf.get("vocab_size", GPT2_VOCAB_SIZE)),
            context_length=int(hf.get("n_positions", hf.get("n_ctx", 1024))),
            n_embd=n_embd,
            n_layer=int(hf.get("n_layer", 12)),
            n_head=int(hf.get("n_head", 12)),
            dropout=float(hf.get("resid_pdrop", 0.1)),
            attn_dropout=float(hf.get("attn_pdrop", 0.1)),
            layer_norm_eps=float(hf.get("layer_norm_epsilon", 1e-5)),
            mlp_ratio=n_inner // n_embd,
            tie_embeddings=bool(hf.get("tie_word_embeddings", True)),
        )


#: Named presets. GPT-2 sizes follow OpenAI's released checkpoints exactly.
PRESETS: dict[str, dict[str, Any]] = {
    "gpt2-124M": dict(n_layer=12, n_head=12, n_embd=768, context_length=1024),
    "gpt2-355M": dict(n_layer=24, n_head=16, n_embd=1024, context_length=1024),
    "gpt2-774M": dict(n_layer=36, n_head=20, n_embd=1280, context_length=1024),
    "gpt2-1558M": dict(n_layer=48, n_head=25, n_embd=1600, context_length=1024),
    # Small CPU presets (GPT-2 vocabulary, so they work with the GPT-2 tokenizer).
    "cpu-tiny": dict(n_layer=2, n_head=2, n_embd=64, context_length=256),
    "cpu-small": dict(n_layer=4, n_head=4, n_embd=128, context_length=256),
    "cpu-medium": dict(n_layer=6, n_head=6, n_embd=192, context_length=512),
}

_PRESET_ALIASES = {
    "gpt2": "gpt2-124M",
    "gpt2-small": "gpt2-124M",
    "gpt2-medium": "gpt2-355M",
    "gpt2-large": "gpt2-774M",
    "gpt2-xl": "gpt2-1558M",
}

#: Hugging Face hub ids of the four released GPT-2 checkpoints, by preset name.
HF_HUB_IDS = {
    "gpt2-124M": "openai-community/gpt2",
    "gpt2-355M": "openai-community/gpt2-medium",
    "gpt2-774M": "openai-community/gpt2-large",
    "gpt2-1558M": "openai-community/gpt2-xl",
}


def list_presets() -> list[str]:
    return list(PRESETS)


def is_preset(name: str) -> bool:
    return name in PRESETS or name in _PRESET_ALIASES
