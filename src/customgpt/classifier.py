"""A text classifier on top of the GPT: the same network's hidden states, pooled, into a new head.

The classifier *composes* the model (``self.gpt`` is an ordinary :class:`~customgpt.model.GPT`)
and adds one linear layer, ``score`` (Hugging Face's name for GPT-2's classification head, and
a LoRA target name), that maps a pooled hidden state to class logits. Batches are right-padded:
a pad after every real token cannot influence a real token of a causal model, so the body runs
without an attention mask and the mask serves only the pooling. A saved classifier is a
customgpt model folder (the body) plus ``classifier.safetensors`` (the head) and
``classifier.json`` (labels, pooling, max length). Details: docs/classification.md; the
classification losses are modules in :mod:`customgpt.losses`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from customgpt.checkpoints import build_model, load_model, load_weights, save_model, save_weights
from customgpt.constants import EOT_ID
from customgpt.data.classification import collate_classification
from customgpt.errors import CheckpointError, ConfigError
from customgpt.io import atomic_folder, atomic_write_text, read_json_object
from customgpt.lora import lora_layers, mark_only_lora_trainable, merged_state_dict
from customgpt.model import GPT

POOLINGS = ("last", "mean", "max")
TRAINABLE = ("head", "last_blocks", "all", "lora")
HEAD_WEIGHTS = "classifier.safetensors"
HEAD_CONFIG = "classifier.json"
FORMAT = "customgpt-classifier"


def pool_hidden(hidden: Tensor, attention_mask: Tensor | None, pooling: str = "last") -> Tensor:
    """Pool (B, T, C) hidden states into (B, C) over the real tokens of right-padded rows.

    Args:
        hidden: hidden states (B, T, C).
        attention_mask: (B, T), 1 for real tokens, 0 for right padding; None: no padding.
        pooling: ``"last"`` (last real token), ``"mean"`` (mean over real tokens) or ``"max"``
            (per feature, the largest value over real tokens).
    """
    B, T, _ = hidden.shape
    if attention_mask is None:
        attention_mask = torch.ones(B, T, dtype=torch.long, device=hidden.device)
    lengths = attention_mask.long().sum(dim=1)  # (B,)
    if pooling in ("last", "max") and bool((lengths == 0).any()):
        raise ValueError("a row of the batch has no real tokens")
    if pooling == "last":
        return hidden[torch.arange(B, device=hidden.device), lengths - 1]  # (B, C)
    if pooling == "mean":
        mask = attention_mask.to(hidden.dtype).unsqueeze(-1)  # (B, T, 1)
        return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1.0)
    if pooling == "max":
        pads = (attention_mask == 0).unsqueeze(-1)  # (B, T, 1)
        return hidden.masked_fill(pads, float("-inf")).amax(dim=1)
    raise ConfigError(f"unknown pooling {pooling!r}; use one of {', '.join(POOLINGS)}")


class GPTClassifier(nn.Module):
    """GPT body + pooling + a linear head: token ids (B, T) → class logits (B, K).

    Args:
        gpt: the language model whose hidden states are classified.
        num_classes: number of classes K.
        pooling: ``"last"``, ``"mean"`` or ``"max"`` (see :func:`pool_hidden`).
        head_dropout: dropout on the pooled vector before the head (training only).
    """

    def __init__(self, gpt: GPT, num_classes: int, pooling: str = "last", head_dropout: float = 0.0) -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ConfigError(f"classifier.pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
        if num_classes < 2:
            raise ConfigError(f"a classifier needs at least 2 classes, got {num_classes}")
        self.gpt = gpt
        self.pooling = pooling
        self.num_classes = num_classes
        self.dropout = nn.Dropout(head_dropout)
        self.score = nn.Linear(gpt.config.n_embd, num_classes)
        nn.init.normal_(self.score.weight, mean=0.0, std=0.02)
        nn.init.zeros_(self.score.bias)

    @property
    def config(self):
        return self.gpt.config

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """Logits (B, K) of right-padded ``input_ids`` (B, T) with ``attention_mask`` (B, T)."""
        hidden = self.gpt.forward_hidden(input_ids)  # (B, T, C); causal: pads after the text are inert
        return self.classify_hidden(hidden, attention_mask)

    def classify_hidden(self, hidden: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """Logits (B, K) from the body's final hidden states (B, T, C): pooling, dropout, head."""
        return self.score(self.dropout(pool_hidden(hidden, attention_mask, self.pooling)))

    # ------------------------------------------------------------------ what trains
    def set_trainable(self, mode: str, last_blocks: int = 1) -> None:
        """Choose the trainable parameters (the head, new to a pretrained body, always trains).

        * ``head``: only the classification head;
        * ``last_blocks``: the last ``last_blocks`` transformer blocks + the final LayerNorm + head;
        * ``all``: everything;
        * ``lora``: the LoRA matrices + head (call :func:`customgpt.lora.inject_lora` first).
        """
        if mode not in TRAINABLE:
            raise ConfigError(f"classifier.trainable must be one of {', '.join(TRAINABLE)}, got {mode!r}")
        if mode == "lora":
            mark_only_lora_trainable(self, extra_trainable=("score",))
            return
        self.requires_grad_(mode == "all")
        if mode == "last_blocks":
            n_layer = len(self.gpt.transformer.h)
            if not 1 <= last_blocks <= n_layer:
                raise ConfigError(f"classifier.last_blocks must be in 1..{n_layer}, got {last_blocks}")
            for block in self.gpt.transformer.h[n_layer - last_blocks :]:
                block.requires_grad_(True)
            self.gpt.transformer.ln_f.requires_grad_(True)
        self.score.requires_grad_(True)

    def num_parameters(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)


# --------------------------------------------------------------------------- save / load


def save_classifier(
    model: GPTClassifier,
    folder: str | Path,
    labels: Sequence[str],
    *,
    max_length: int,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Save a classifier folder atomically (:func:`customgpt.io.atomic_folder`), LoRA adapters,
    if any, merged into the saved body. Raises ConfigError if ``labels`` does not have one name
    per class."""
    if len(labels) != model.num_classes:
        raise ConfigError(f"{len(labels)} label names for a {model.num_classes}-class head")
    head_info = {"format": FORMAT, "labels": list(labels), "pooling": model.pooling,
                 "max_length": int(max_length), **dict(extra or {})}
    gpt = model.gpt
    if lora_layers(gpt):
        gpt = build_model(gpt.config, merged_state_dict(gpt))
    folder = Path(folder)
    with atomic_folder(folder) as tmp:
        save_model(gpt, tmp, metadata={"kind": "classifier", "labels": list(labels)})
        save_weights(model.score.state_dict(), tmp / HEAD_WEIGHTS)
        atomic_write_text(tmp / HEAD_CONFIG, json.dumps(head_info, indent=2, ensure_ascii=False) + "\n")
    return folder


#: Options of earlier versions that a saved classifier may name: (key, what it was).
REMOVED_OPTIONS = (
    ("members", "an ensemble of several classifiers (classifier.ensemble)"),
    ("weights", "an ensemble of several classifiers (classifier.ensemble)"),
    ("char_ngram", "a character n-gram member (classifier.char_ngram_weight)"),
)


def read_classifier_config(folder: str | Path) -> dict[str, Any]:
    """``classifier.json`` of a saved classifier; a CheckpointError if it is absent or malformed,
    or if the folder was saved with a removed option (naming the folder and the option)."""
    folder = Path(folder)
    path = folder / HEAD_CONFIG
    if not path.is_file():
        # a run folder (runs/spam-small instead of runs/spam-small/best): name the classifiers inside it
        inner = sorted(p.name for p in folder.iterdir() if (p / HEAD_CONFIG).is_file()) if folder.is_dir() else []
        if inner:
            raise CheckpointError(f"{folder} is not a classifier folder, but its subfolder(s) {', '.join(inner)} "
                                  f"are: pass one of them, e.g. {folder / inner[0]}")
        raise CheckpointError(f"{folder} is not a classifier folder: no {HEAD_CONFIG} (train one with "
                              "`customgpt finetune classify`)")
    info = read_json_object(path)
    if info.get("format") != FORMAT or not isinstance(info.get("labels"), list):
        raise CheckpointError(f"{path} is not a customgpt classifier config")
    found = [what for key, what in REMOVED_OPTIONS if key in info]
    if info.get("kind") == "char_ngram":
        found.append("a character n-gram classifier (classifier.char_ngram_weight)")
    try:  # the body's config.json: hashed token n-gram embeddings (model.token_ngram_buckets)
        body = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        body = {}
    if isinstance(body, dict) and body.get("token_ngram_buckets"):
        found.append("hashed token n-gram embeddings (model.token_ngram_buckets)")
    if found:
        raise CheckpointError(
            f"{folder} was saved with {found[0]}, an option this version no longer has; it cannot be "
            "loaded. Train the classifier again with `customgpt finetune classify`")
    return info


def load_classifier(
    folder: str | Path, *, device: torch.device | str = "cpu"
) -> tuple[GPTClassifier, dict[str, Any]]:
    """Load a folder written by :func:`save_classifier`: (model in eval mode, its classifier.json).

    Raises CheckpointError for a folder that is not a classifier, was saved with a removed
    option, or whose head does not match its body."""
    folder = Path(folder)
    info = read_classifier_config(folder)
    gpt = load_model(folder, device=device, dtype=torch.float32)
    model = GPTClassifier(gpt, len(info["labels"]), pooling=info.get("pooling", "last"))
    head = load_weights(folder / HEAD_WEIGHTS)
    try:
        model.score.load_state_dict(head, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{folder / HEAD_WEIGHTS} does not match the model: {exc}") from exc
    return model.to(device).eval(), info


@torch.no_grad()
def predict_texts(
    model: nn.Module,
    texts: Sequence[str],
    encode,
    *,
    max_length: int,
    batch_size: int = 32,
) -> Tensor:
    """Class probabilities (N, K) of raw ``texts`` (each truncated to ``max_length`` tokens).

    Rows are right-padded with GPT-2's end-of-text id (0 for a smaller vocabulary), which never
    reaches a pooled state; an empty text is classified as that single pad token.
    """
    model.eval()
    device = next(iter([*model.parameters(), *model.buffers()])).device
    config = model.config
    pad_id = EOT_ID if EOT_ID < config.vocab_size else 0
    limit = min(max_length, config.context_length)
    out = []
    for start in range(0, len(texts), batch_size):
        rows = [((encode(t) or [pad_id])[:limit], 0) for t in texts[start : start + batch_size]]
        batch = collate_classification(rows, pad_id)
        logits = model(batch["input_ids"].to(device), batch["attention_mask"].to(device))
        out.append(torch.softmax(logits.float(), dim=-1).cpu())
    return torch.cat(out) if out else torch.empty(0, model.num_classes)
