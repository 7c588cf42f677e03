"""Our layout: models built from a state dict, and the customgpt checkpoint folder.

A customgpt checkpoint is a folder with ``model.safetensors`` (our ``nn.Linear`` layout, the
tied LM head stored once as ``transformer.wte.weight``), ``config.json``
(:meth:`GPTConfig.to_dict`) and ``metadata.json`` (free-form JSON: provenance, training run).
:func:`save_model` writes it atomically.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from customgpt import __version__
from customgpt.checkpoints.files import CONFIG_NAME, METADATA_NAME, WEIGHTS_NAME, write_safetensors
from customgpt.config import GPTConfig
from customgpt.device import resolve_device, resolve_dtype
from customgpt.errors import CheckpointError, CustomGPTError
from customgpt.io import read_json_object, staged_files
from customgpt.model import GPT


def unwrap(model: GPT) -> GPT:
    """The plain model behind ``torch.compile`` (whose state-dict keys gain ``_orig_mod.``)."""
    return getattr(model, "_orig_mod", model)


def state_for_saving(model: GPT) -> dict[str, Tensor]:
    """The model's tensors with the tied head stored once (safetensors refuses shared tensors).

    Raises:
        CheckpointError: the config says the head is tied but ``lm_head.weight`` holds other
            values (a replaced head would otherwise be dropped without a word).
    """
    model = unwrap(model)
    state = dict(model.state_dict())
    if model.config.tie_embeddings and "lm_head.weight" in state:
        head, wte = state["lm_head.weight"], state["transformer.wte.weight"]
        if head is not wte and not (head.shape == wte.shape and torch.equal(head, wte)):
            raise CheckpointError(
                "model.config.tie_embeddings is true but lm_head.weight is not the token embedding; "
                "save a replaced head with its own config (tie_embeddings=false) or with save_weights()"
            )
        del state["lm_head.weight"]
    return state


# =========================================================================== building models


def build_model(
    config: GPTConfig,
    state: Mapping[str, Tensor],
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | str | None = None,
) -> GPT:
    """A :class:`GPT` holding ``state`` (our layout, already validated), in eval mode.

    The model is built on the meta device and the tensors are assigned, so no time is spent
    on a random initialisation that would be overwritten. ``dtype=None`` keeps the stored dtype.
    Tensors already on ``device`` in ``dtype`` are used as they are, not copied: pass clones
    if ``state`` belongs to a live model that must stay independent.
    """
    device = resolve_device(device or "cpu")
    dtype = resolve_dtype(dtype) or state["transformer.wte.weight"].dtype
    with torch.device("meta"):
        model = GPT(config)
    full = {k: v.to(device=device, dtype=dtype) for k, v in state.items()}
    if config.tie_embeddings:
        full["lm_head.weight"] = full["transformer.wte.weight"]
    model.load_state_dict(full, strict=True, assign=True)
    if config.tie_embeddings:
        # assign=True gives each key its own Parameter; tie the head back to the embedding.
        model.lm_head.weight = model.transformer.wte.weight
    return model.eval()


def random_model(
    config: GPTConfig,
    *,
    seed: int | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | str | None = None,
) -> GPT:
    """A randomly initialised model; with ``seed`` the same weights on every machine (the
    initialisation runs on the CPU, under a forked RNG so the global one is left alone)."""
    device = resolve_device(device or "cpu")
    dtype = resolve_dtype(dtype)
    if seed is None:
        model = GPT(config)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = GPT(config)
    return model.to(device=device, dtype=dtype).eval()


# =========================================================================== the customgpt format


def save_model(model: GPT, folder: str | Path, metadata: Mapping[str, Any] | None = None) -> Path:
    """Save ``model`` as a customgpt checkpoint folder; returns the folder.

    Writes ``model.safetensors``, ``config.json`` and ``metadata.json`` (``metadata`` plus
    the customgpt version). All three are written to temporary files first and renamed only
    when complete: an interruption leaves the previous checkpoint (if any) intact and no
    half-written file under a final name.
    """
    folder = Path(folder)
    meta = {"format": "customgpt", "customgpt_version": __version__, **dict(metadata or {})}
    try:
        json.dumps(meta)
    except TypeError as exc:
        raise CustomGPTError(f"checkpoint metadata must be JSON-serialisable: {exc}") from exc
    with staged_files(folder) as stage:
        write_safetensors(state_for_saving(model), stage.path(WEIGHTS_NAME), {"customgpt_format": "1"})
        stage.write_json(CONFIG_NAME, model.config.to_dict())
        stage.write_json(METADATA_NAME, meta)
    return folder


def read_metadata(folder: str | Path) -> dict[str, Any]:
    """The ``metadata.json`` of a checkpoint folder ({} when there is none)."""
    path = Path(folder) / METADATA_NAME
    return read_json_object(path) if path.is_file() else {}


def embedding_parameters(config: GPTConfig) -> int:
    """Token plus position embedding parameters (what ``num_parameters(exclude_embeddings=True)``
    leaves out in transformers; a tied LM head adds nothing)."""
    return (config.vocab_size + config.context_length) * config.n_embd
