"""Model specs (preset name, folder, weights file, hub id): what one names
(:func:`resolve_model_spec`), loading it (:func:`load_model`), describing it
(:func:`describe_model_spec`, for ``customgpt info``)."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from customgpt import hub
from customgpt.checkpoints.files import (
    CONFIG_NAME,
    HF_BIN_INDEX,
    HF_BIN_NAME,
    HF_SAFETENSORS_INDEX,
    WEIGHT_SUFFIXES,
    WEIGHTS_NAME,
    load_weights,
    read_safetensors_header,
)
from customgpt.checkpoints.huggingface import hf_to_customgpt_state
from customgpt.checkpoints.state import build_model, embedding_parameters, random_model, read_metadata
from customgpt.config import HF_HUB_IDS, GPTConfig, is_preset, list_presets
from customgpt.errors import CheckpointError, ConfigError, CustomGPTError
from customgpt.io import read_json_object
from customgpt.model import GPT


@dataclass
class ModelSource:
    """Where a model comes from, resolved from a spec but with no tensor read yet.

    Attributes:
        spec: what the user passed.
        kind: ``"preset"`` (random init), ``"customgpt"`` (our folder), ``"hf"`` (a Hugging
            Face folder), ``"file"`` (a lone weights file) or ``"hub"`` (downloaded by id).
        config: the model config.
        weights: the weights file, or the index json of a sharded one; None for a preset (or
            a hub model whose weights were not fetched).
        layout: ``"customgpt"`` or ``"hf"`` (how the weights are stored), None for a preset.
        hub_id: the hub repository for ``kind == "hub"``.
        metadata: ``metadata.json`` of a customgpt folder.
    """

    spec: str
    kind: str
    config: GPTConfig
    weights: Path | None = None
    layout: str | None = None
    hub_id: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        if self.kind == "preset":
            return f"preset {self.config.name} (random initialisation)"
        if self.kind == "hub":
            return f"Hugging Face hub {self.hub_id} ({self.weights or 'weights not downloaded yet'})"
        label = {"customgpt": "customgpt checkpoint", "hf": "Hugging Face GPT-2 folder", "file": "weights file"}
        return f"{label[self.kind]} {self.weights}"


def _config_from_json(path: Path) -> tuple[GPTConfig, str]:
    """A folder's ``config.json`` → (config, ``"hf"`` | ``"customgpt"``)."""
    data = read_json_object(path)
    if "model_type" in data:  # transformers always writes model_type
        try:
            return GPTConfig.from_hf_dict(data), "hf"
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from exc
    return GPTConfig.from_dict(data, where=str(path)), "customgpt"


def _folder_weights(folder: Path) -> Path:
    for name in (WEIGHTS_NAME, HF_SAFETENSORS_INDEX, HF_BIN_NAME, HF_BIN_INDEX):
        if (folder / name).is_file():
            return folder / name
    found = sorted(p.name for p in folder.iterdir() if p.suffix in WEIGHT_SUFFIXES)
    hint = f" (found {', '.join(found)}: pass the file itself with a config)" if found else ""
    raise CheckpointError(f"{folder} holds no {WEIGHTS_NAME} or {HF_BIN_NAME}{hint}")


def _resolve_folder(folder: Path, spec: str, config: GPTConfig | None, require_weights: bool = True) -> ModelSource:
    cfg_path = folder / CONFIG_NAME
    if not cfg_path.is_file():
        if config is None:
            # a run folder (runs/x instead of runs/x/final): name the models inside it
            inner = sorted(p.name for p in folder.iterdir() if (p / CONFIG_NAME).is_file())
            if inner:
                raise CheckpointError(f"{folder} holds no model (no {CONFIG_NAME}), but its subfolder(s) "
                                      f"{', '.join(inner)} do: pass one of them, e.g. {folder / inner[0]}")
            _folder_weights(folder)  # an empty folder: say that it holds no weights
            raise CheckpointError(f"{folder} has no {CONFIG_NAME}; pass a config (a preset name) for its weights")
        return ModelSource(spec, "file", config, _folder_weights(folder))
    folder_config, layout = _config_from_json(cfg_path)
    try:
        weights: Path | None = _folder_weights(folder)
    except CheckpointError:
        if require_weights:
            raise
        weights = None
    metadata = read_metadata(folder) if layout == "customgpt" else {}
    return ModelSource(spec, layout, config or folder_config, weights, layout, metadata=metadata)


def _only_local(text: str) -> bool:
    """True when ``text`` can only mean a local path: it starts with ``.``, ``/`` or ``~``
    (or a drive/``\\``), or it has a parent folder that exists (``runs/my-model`` when
    ``runs/`` is here). Such a spec is never tried as a hub id."""
    if text.startswith((".", "/", "~", "\\")) or (len(text) > 1 and text[1] == ":"):
        return True
    parent = Path(text).expanduser().parent
    return str(parent) not in ("", ".") and parent.is_dir()


def resolve_model_spec(
    spec: str | Path, *, config: GPTConfig | str | None = None, download_weights: bool = True
) -> ModelSource:
    """Decide what ``spec`` names, read its config, and find its weights (not read yet).

    In order: an existing folder (customgpt or Hugging Face, told apart by ``config.json``),
    an existing weights file (config from a ``config.json`` beside it or from ``config``),
    a preset name such as ``gpt2-124M`` or ``cpu-tiny`` (random weights), then a hub id
    (``gpt2``, ``gpt2-medium``, ``gpt2-large``, ``gpt2-xl`` or ``owner/name``), downloaded
    into the hub cache. ``config`` (a :class:`GPTConfig` or preset name; an unknown name is
    a :class:`ConfigError`) overrides the config found. ``download_weights=False`` fetches
    only a hub model's ``config.json`` (its ``weights`` are then None unless already cached).
    """
    text = str(spec)
    cfg = GPTConfig.from_preset(config) if isinstance(config, str) else config
    path = Path(text).expanduser()
    if path.is_dir():
        return _resolve_folder(path, text, cfg)
    if path.is_file():
        if path.name.endswith(".index.json"):
            return _resolve_folder(path.parent, text, cfg)
        if path.suffix not in WEIGHT_SUFFIXES:
            raise CheckpointError(f"{path} is not a weights file (expected {', '.join(WEIGHT_SUFFIXES)})")
        if cfg is None:
            beside = path.parent / CONFIG_NAME
            if not beside.is_file():
                raise CheckpointError(
                    f"{path} has no {CONFIG_NAME} beside it: pass the model's config (a preset name, "
                    "e.g. --config gpt2-124M)"
                )
            cfg = _config_from_json(beside)[0]
        return ModelSource(text, "file", cfg, path)
    if isinstance(spec, str) and spec not in hub.HUB_ALIASES and is_preset(spec):
        return ModelSource(text, "preset", cfg or GPTConfig.from_preset(spec))
    repo_id = hub.hub_repo_id(text) if isinstance(spec, str) and not _only_local(text) else None
    if repo_id is None or path.suffix in WEIGHT_SUFFIXES:
        if any(sep in text for sep in ("/", os.sep)) or path.suffix or _only_local(text):
            raise CustomGPTError(f"no such local file or folder: {text}")
        raise CustomGPTError(
            f"unknown model {text!r}: not a file or folder, not a preset ({', '.join(list_presets())}), "
            f"not a hub id ({', '.join(hub.HUB_ALIASES)} or owner/name)"
        )
    try:
        folder = hub.download_model(repo_id, config_only=not download_weights)
    except CustomGPTError as exc:
        if text in hub.HUB_ALIASES:
            raise
        # Both readings of ``owner/name`` failed: say so, as transformers does.
        raise type(exc)(f"{text!r} is not a local folder (no such path), and as a hub id: {exc}") from exc
    source = _resolve_folder(folder, text, cfg, require_weights=download_weights)
    source.kind, source.hub_id = "hub", repo_id
    return source


def load_state(source: ModelSource) -> dict[str, Tensor]:
    """Read the tensors of a resolved source that has weights (not a preset), validated and in
    our layout.

    Raises:
        CheckpointError: a missing, corrupt or mismatched weights file, naming file and tensor.
    """
    return _our_layout(source, load_weights(source.weights))


def _our_layout(source: ModelSource, tensors: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """``tensors`` of ``source`` checked against its config and mapped to our layout. A lone
    file's layout is told by its fused q/k/v weight, (3C, C) in ours and (C, 3C) in Conv1D's,
    so it never depends on file names."""
    layout = source.layout
    if layout is None:
        qkv = next((t.shape for k, t in tensors.items() if k.endswith("attn.c_attn.weight")), None)
        layout = "customgpt" if qkv == (3 * source.config.n_embd, source.config.n_embd) else "hf"
    return hf_to_customgpt_state(tensors, source.config, source=str(source.weights), hf=layout == "hf")


def load_model(
    spec: str | Path,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | str | None = None,
    config: GPTConfig | str | None = None,
    seed: int | None = None,
    overrides: Mapping[str, Any] | None = None,
    tokenizer_vocab_size: int | None = None,
) -> GPT:
    """Load a :class:`GPT` from a preset, a checkpoint folder, a weights file or a hub id.

    Args:
        spec: see :func:`resolve_model_spec`; e.g. ``"cpu-tiny"``, ``"runs/x/final"``,
            ``"hf_gpt2/"``, ``"weights.safetensors"``, ``"gpt2"``, ``"openai-community/gpt2"``.
        device: ``"cpu"``, ``"cuda"``, ``"mps"``, ``"auto"`` or a :class:`torch.device`.
        dtype: a torch dtype or its name (``"bfloat16"``); None keeps the stored dtype
            (float32 for a preset).
        config: the config for a lone weights file (a preset name or :class:`GPTConfig`).
        seed: seeds the random initialisation of a preset.
        overrides: config fields to change that do not alter shapes (``dropout``, ``impl``).
        tokenizer_vocab_size: the vocabulary size of the tokenizer the model will be used
            with; a smaller model vocabulary is refused before any tensor is read (the tokenizer
            would produce ids past the end of the token embedding). A larger one (padded, as
            nanoGPT's 50,304) is fine: generation masks the ids the tokenizer cannot decode.

    Returns:
        The model in eval mode (call ``.train()`` to fine-tune).

    Raises:
        CheckpointError: a missing, corrupt or mismatched checkpoint, naming file and tensor;
            a vocabulary smaller than ``tokenizer_vocab_size``, naming both sizes.
        CustomGPTError: an unknown spec, or a hub id that cannot be downloaded.
    """
    source = resolve_model_spec(spec, config=config)
    if overrides:
        source.config = source.config.replace(**dict(overrides))
    vocab_size = source.config.vocab_size
    if tokenizer_vocab_size is not None and vocab_size < tokenizer_vocab_size:
        raise CheckpointError(
            f"{source.describe()} has a vocabulary of {vocab_size:,} ids, smaller than its tokenizer's "
            f"{tokenizer_vocab_size:,}: the tokenizer would produce ids the model has no embedding for; "
            "use the tokenizer the model was trained with"
        )
    if source.kind == "preset":
        return random_model(source.config, seed=seed, device=device, dtype=dtype)
    return build_model(source.config, load_state(source), device=device, dtype=dtype)


# =========================================================================== description


@dataclass
class ModelInfo:
    """What ``customgpt info`` prints: config, parameter counts and where the model is."""

    spec: str
    kind: str
    source: str
    config: GPTConfig
    parameters: int
    embedding_parameters: int
    weights: list[str]
    dtype: str | None
    hub_id: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def non_embedding_parameters(self) -> int:
        return self.parameters - self.embedding_parameters

    def to_dict(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in ("spec", "kind", "source", "hub_id", "weights", "dtype")}
        out["config"] = self.config.to_dict()
        out["parameters"] = {
            "total": self.parameters,
            "embedding": self.embedding_parameters,
            "non_embedding": self.non_embedding_parameters,
        }
        return out | {"metadata": self.metadata}


def describe_model_spec(spec: str | Path, *, config: GPTConfig | str | None = None) -> ModelInfo:
    """Summarise a model without loading its tensors (only the safetensors header is read).

    The header's names and shapes are checked against the config as loading checks them, so
    a ``config.json`` that does not describe its weights is a :class:`CheckpointError` here
    too.

    For a hub id only ``config.json`` is fetched. A well-known hub id (``gpt2`` ...) that is
    not in the cache and cannot be fetched (offline) is described from its preset, with the
    source saying so.
    """
    where = None
    try:
        source = resolve_model_spec(spec, config=config, download_weights=False)
    except hub.HubUnavailableError:
        repo = hub.hub_repo_id(str(spec))
        preset = {v: k for k, v in HF_HUB_IDS.items()}.get(repo or "")
        if preset is None:
            raise
        source = ModelSource(str(spec), "hub", GPTConfig.from_preset(preset), hub_id=repo)
        where = f"Hugging Face hub {repo} (not downloaded; shape of preset {preset})"
    dtype = "float32" if source.kind == "preset" else None
    if source.weights is not None and source.weights.name.endswith((".safetensors", ".safetensors.index.json")):
        header = read_safetensors_header(source.weights)
        _our_layout(source, {k: torch.empty(shape, device="meta") for k, (shape, _) in header.items()})
        dtype = ",".join(sorted({d for _, d in header.values()})) or None
    cfg = source.config
    return ModelInfo(
        spec=str(spec),
        kind=source.kind,
        source=where or source.describe(),
        config=cfg,
        parameters=cfg.num_parameters(),
        embedding_parameters=embedding_parameters(cfg),
        weights=[str(source.weights)] if source.weights else [],
        dtype=dtype,
        hub_id=source.hub_id,
        metadata=source.metadata,
    )


def provenance_of(source: ModelSource) -> dict[str, Any]:
    """A provenance record for a model card, from where the model was loaded."""
    prov: dict[str, Any] = {}
    if source.kind == "hub":
        prov["source weights"] = f"https://huggingface.co/{source.hub_id}"
    elif source.kind == "preset":
        prov["source weights"] = f"random initialisation of preset {source.config.name}"
    else:
        prov["source weights"] = str(source.weights)
    for key, value in source.metadata.items():
        if key not in ("format", "customgpt_version"):
            prov[key] = value if isinstance(value, (str, int, float)) else json.dumps(value)
    return prov
