"""Weights in and out.

* The **customgpt checkpoint**: a folder with ``model.safetensors`` (our ``nn.Linear``
  layout, the tied LM head stored once as ``transformer.wte.weight``), ``config.json``
  (:meth:`GPTConfig.to_dict`) and ``metadata.json`` (free-form JSON: provenance, training
  run). :func:`save_model` writes it atomically; :func:`load_model` reads it.
* **Hugging Face GPT-2** folders and files (``GPT2LMHeadModel`` layout: ``Conv1D`` weights
  stored as (in, out), with or without the ``transformer.`` prefix), read by the same
  :func:`load_model`; :func:`export_hf` writes one that ``GPT2LMHeadModel.from_pretrained``
  loads without a warning.
* The **resolver**: :func:`resolve_model_spec` turns a spec (preset name, folder, weights
  file, hub id) into a :class:`ModelSource`; :func:`describe_model_spec` summarises one
  without reading the tensors (``customgpt info``).

Untrusted files are never unpickled: safetensors, or ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from customgpt.config import HF_HUB_IDS, GPTConfig, is_preset
from customgpt.constants import GPT2_VOCAB_SIZE
from customgpt.errors import CheckpointError, ConfigError, CustomGPTError
from customgpt.io import StagedFiles, atomic_path, read_json_object, staged_files
from customgpt.model import GPT

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
METADATA_NAME = "metadata.json"
HF_BIN_NAME = "pytorch_model.bin"
HF_SAFETENSORS_INDEX = "model.safetensors.index.json"
HF_BIN_INDEX = "pytorch_model.bin.index.json"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")

# Hugging Face's GPT-2 uses Conv1D, which stores its weight as (in, out); nn.Linear stores
# (out, in). These weights are transposed on the way in and out.
_CONV1D_SUFFIXES = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
# Non-parameter buffers that old GPT-2 checkpoints carry (the causal mask and its fill value).
_HF_BUFFER = re.compile(r"(^|\.)h\.\d+\.attn\.(bias|masked_bias)$")


# =========================================================================== atomic files

# The multi-file stage lives in customgpt.io with the other atomic writers; the private name
# stays for code (and tests) that refer to it here.
_StagedFiles = StagedFiles


# =========================================================================== raw tensors


def save_weights(tensors: Mapping[str, Tensor], path: str | Path, metadata: Mapping[str, str] | None = None) -> None:
    """Write ``tensors`` to one safetensors file, atomically (temp file + ``os.replace``).

    Tensors are moved to the CPU and made contiguous; shared storage is not allowed (store
    a tied weight once). ``metadata`` goes into the safetensors header (string values).
    """
    with atomic_path(path) as tmp:
        _write_safetensors(tensors, tmp, metadata)


def _write_safetensors(tensors: Mapping[str, Tensor], path: Path, metadata: Mapping[str, str] | None) -> None:
    from safetensors.torch import save_file

    cpu = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    save_file(cpu, str(path), metadata={"format": "pt", **(metadata or {})})


def load_weights(path: str | Path) -> dict[str, Tensor]:
    """Read every tensor of a ``.safetensors`` file, or of a ``.bin``/``.pt`` file with
    ``torch.load(weights_only=True)``, onto the CPU.

    Raises:
        CheckpointError: missing, corrupt or truncated file (the message names it).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="pt", device="cpu") as f:
                return {key: f.get_tensor(key) for key in f.keys()}
        except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
            raise CheckpointError(f"cannot read {path}: corrupt or truncated safetensors file ({exc})") from exc
    if path.suffix in (".bin", ".pt", ".pth"):
        try:
            # weights_only=True: a plain state dict loads, a pickle that runs code does not.
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # zip, pickle and torch raise many different types here
            raise CheckpointError(f"cannot read {path}: not a valid PyTorch weights file ({exc})") from exc
        if not isinstance(obj, Mapping) or not all(
            isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items()
        ):
            raise CheckpointError(f"{path} does not hold a flat state dict (a mapping of names to tensors)")
        return dict(obj)
    raise CheckpointError(f"unsupported weights file {path}: expected .safetensors, .bin, .pt or .pth")


def _read_safetensors_header(path: Path) -> tuple[dict[str, tuple[tuple[int, ...], str]], dict[str, str]]:
    """Names → (shape, dtype) and the metadata of a safetensors file, without reading tensors."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            info = {}
            for key in f.keys():
                sl = f.get_slice(key)
                info[key] = (tuple(sl.get_shape()), str(sl.get_dtype()))
            return info, dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"cannot read {path}: corrupt or truncated safetensors file ({exc})") from exc


def _load_shards(index: Path) -> dict[str, Tensor]:
    """Read a sharded Hugging Face checkpoint through its ``*.index.json``."""
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise CheckpointError(f"cannot read shard index {index}: {exc}") from exc
    tensors: dict[str, Tensor] = {}
    for shard in sorted(set(weight_map.values())):
        tensors.update(load_weights(index.parent / shard))
    return tensors


# =========================================================================== layouts


def _expected_shapes(config: GPTConfig) -> dict[str, tuple[int, ...]]:
    """Our parameter names → shapes, for the tensors a checkpoint must hold (tied head once)."""
    with torch.device("meta"):
        model = GPT(config)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if config.tie_embeddings:
        del shapes["lm_head.weight"]
    return shapes


def _problems_message(source: str, missing: list[str], unexpected: list[str], wrong: list[str]) -> str:
    def listing(items: list[str], limit: int = 6) -> str:
        more = f" (and {len(items) - limit} more)" if len(items) > limit else ""
        return ", ".join(items[:limit]) + more

    parts = []
    if missing:
        parts.append(f"missing tensor(s): {listing(missing)}")
    if unexpected:
        parts.append(f"unexpected tensor(s): {listing(unexpected)}")
    if wrong:
        parts.append(f"wrong shape(s): {listing(wrong, 4)}")
    return f"{source} does not match the model config: " + "; ".join(parts)


def detect_layout(tensors: Mapping[str, Any], config: GPTConfig) -> str:
    """``"hf"`` (Conv1D, (in, out)) or ``"customgpt"`` (nn.Linear, (out, in)).

    Told apart by the fused q/k/v weight, which is (C, 3C) in one layout and (3C, C) in the
    other, so the answer never depends on file names. ``tensors`` may map names to tensors
    or to shapes. Defaults to ``"hf"`` when no such weight is present.
    """
    C = config.n_embd
    for key, value in tensors.items():
        if key.endswith("attn.c_attn.weight"):
            shape = tuple(value.shape) if isinstance(value, Tensor) else tuple(value)
            if shape == (3 * C, C):
                return "customgpt"
            return "hf"
    return "hf"


def hf_to_customgpt_state(tensors: Mapping[str, Tensor], config: GPTConfig, *, source: str = "checkpoint") -> dict[str, Tensor]:
    """Hugging Face / OpenAI GPT-2 tensors → our state dict, strictly validated.

    Accepts keys with or without the ``transformer.`` prefix, transposes the Conv1D weights,
    drops the attention-mask buffers, and checks the optional ``lm_head.weight`` equals the
    token embedding it is tied to. Any missing, unexpected or wrongly shaped tensor raises
    :class:`CheckpointError` naming it (with the file's and the expected shape).
    """
    expected = _expected_shapes(config)
    out: dict[str, Tensor] = {}
    origin: dict[str, str] = {}  # our name -> the file's name, for messages
    unexpected: list[str] = []
    wrong: list[str] = []
    head: Tensor | None = None
    for key, tensor in tensors.items():
        name = key.removeprefix("transformer.")
        if _HF_BUFFER.search(name):
            continue
        if name == "lm_head.weight":
            ours = "lm_head.weight"
            if config.tie_embeddings:
                head = tensor
                continue
        else:
            ours = "transformer." + name
        if ours not in expected:
            unexpected.append(key)
            continue
        if ours in origin:
            raise CheckpointError(f"{source} holds {ours!r} twice (as {origin[ours]!r} and {key!r})")
        origin[ours] = key
        conv1d = ours.endswith(_CONV1D_SUFFIXES)
        want = expected[ours][::-1] if conv1d else expected[ours]
        if tuple(tensor.shape) != want:
            wrong.append(f"{key} is {tuple(tensor.shape)}, expected {want}")
            continue
        out[ours] = tensor.t().contiguous() if conv1d else tensor
    # Name missing tensors the way this file names the others (with or without the prefix).
    prefix = "transformer." if any(k.startswith("transformer.") for k in tensors) else ""
    missing = [
        k if k == "lm_head.weight" else prefix + k.removeprefix("transformer.") for k in expected if k not in origin
    ]
    if missing or unexpected or wrong:
        raise CheckpointError(_problems_message(source, missing, unexpected, wrong))
    if head is not None:
        wte = out["transformer.wte.weight"]
        if head.shape != wte.shape or not torch.equal(head.to(wte.dtype), wte):
            raise CheckpointError(
                f"{source}: lm_head.weight differs from transformer.wte.weight, but GPT-2 ties them "
                "(this checkpoint is not a GPT-2 with a tied LM head)"
            )
    return out


def customgpt_to_hf_state(state: Mapping[str, Tensor], config: GPTConfig) -> dict[str, Tensor]:
    """Our state dict → Hugging Face ``GPT2LMHeadModel`` tensors (Conv1D weights transposed,
    tied ``lm_head.weight`` left out exactly as ``save_pretrained`` leaves it out)."""
    config.to_hf_dict()  # what Hugging Face's GPT-2 cannot hold is an error (untied head, n-gram embeddings)
    out = {}
    for key, tensor in state.items():
        if key == "lm_head.weight":
            continue
        out[key] = tensor.t().contiguous() if key.endswith(_CONV1D_SUFFIXES) else tensor.contiguous()
    return out


def check_customgpt_state(tensors: Mapping[str, Tensor], config: GPTConfig, *, source: str = "checkpoint") -> dict[str, Tensor]:
    """Validate a state dict in our layout against ``config`` (strict: names and shapes)."""
    expected = _expected_shapes(config)
    tensors = dict(tensors)
    if config.tie_embeddings and "lm_head.weight" in tensors:
        head = tensors.pop("lm_head.weight")
        wte = tensors.get("transformer.wte.weight")
        if wte is None or head.shape != wte.shape or not torch.equal(head, wte):
            raise CheckpointError(f"{source}: lm_head.weight differs from transformer.wte.weight, but the config ties them")
    unexpected = [k for k in tensors if k not in expected]
    wrong = [
        f"{k} is {tuple(t.shape)}, expected {expected[k]}"
        for k, t in tensors.items()
        if k in expected and tuple(t.shape) != expected[k]
    ]
    missing = [k for k in expected if k not in tensors]
    if missing or unexpected or wrong:
        raise CheckpointError(_problems_message(source, missing, unexpected, wrong))
    return tensors


def _unwrap(model: GPT) -> GPT:
    """The plain model behind ``torch.compile`` (whose state-dict keys gain ``_orig_mod.``)."""
    return getattr(model, "_orig_mod", model)


def state_for_saving(model: GPT) -> dict[str, Tensor]:
    """The model's tensors with the tied head stored once (safetensors refuses shared tensors).

    Raises:
        CheckpointError: the config says the head is tied but ``lm_head.weight`` holds other
            values (a replaced head would otherwise be dropped without a word).
    """
    model = _unwrap(model)
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


def _as_dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    from customgpt.cli._common import resolve_dtype

    return resolve_dtype(dtype)


def _as_device(device: torch.device | str | None) -> torch.device:
    if isinstance(device, torch.device):
        return device
    from customgpt.cli._common import resolve_device

    return resolve_device(device or "cpu")


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
    device = _as_device(device)
    dtype = _as_dtype(dtype) or state["transformer.wte.weight"].dtype
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
    device = _as_device(device)
    dtype = _as_dtype(dtype)
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
    from customgpt import __version__

    folder = Path(folder)
    meta = {"format": "customgpt", "customgpt_version": __version__, **dict(metadata or {})}
    try:
        json.dumps(meta)
    except TypeError as exc:
        raise CustomGPTError(f"checkpoint metadata must be JSON-serialisable: {exc}") from exc
    model = _unwrap(model)
    with staged_files(folder) as stage:
        _write_safetensors(state_for_saving(model), stage.path(WEIGHTS_NAME), {"customgpt_format": "1"})
        stage.write_json(CONFIG_NAME, model.config.to_dict())
        stage.write_json(METADATA_NAME, meta)
    return folder


def read_metadata(folder: str | Path) -> dict[str, Any]:
    """The ``metadata.json`` of a checkpoint folder ({} when there is none)."""
    path = Path(folder) / METADATA_NAME
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"cannot read {path}: {exc}") from exc
    return data if isinstance(data, dict) else {}


# =========================================================================== the resolver


@dataclass
class ModelSource:
    """Where a model comes from, resolved from a spec but with no tensor read yet.

    Attributes:
        spec: what the user passed.
        kind: ``"preset"`` (random init), ``"customgpt"`` (our folder), ``"hf"`` (a Hugging
            Face folder), ``"file"`` (a lone weights file) or ``"hub"`` (downloaded by id).
        config: the model config.
        weights: the weights file(s), or an index json for sharded ones; empty for a preset.
        layout: ``"customgpt"`` or ``"hf"`` (how the weights are stored), None for a preset.
        hub_id: the hub repository for ``kind == "hub"``.
        metadata: ``metadata.json`` of a customgpt folder.
    """

    spec: str
    kind: str
    config: GPTConfig
    weights: list[Path] = field(default_factory=list)
    layout: str | None = None
    hub_id: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        if self.kind == "preset":
            return f"preset {self.config.name} (random initialisation)"
        where = ", ".join(str(p) for p in self.weights)
        if self.kind == "hub":
            return f"Hugging Face hub {self.hub_id} ({where or 'weights not downloaded yet'})"
        label = {"customgpt": "customgpt checkpoint", "hf": "Hugging Face GPT-2 folder", "file": "weights file"}
        return f"{label[self.kind]} {where}"


def _config_from_json(path: Path) -> tuple[GPTConfig, str]:
    """A folder's ``config.json`` → (config, ``"hf"`` | ``"customgpt"``)."""
    data = read_json_object(path)
    if "model_type" in data:  # transformers always writes model_type
        try:
            return GPTConfig.from_hf_dict(data), "hf"
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from exc
    return GPTConfig.from_dict(data, where=str(path)), "customgpt"


def _config_from_arg(config: GPTConfig | str | None) -> GPTConfig | None:
    if config is None or isinstance(config, GPTConfig):
        return config
    if is_preset(config):
        return GPTConfig.from_preset(config)
    path = Path(config)
    if path.is_dir():
        path = path / CONFIG_NAME
    if path.is_file():
        return _config_from_json(path)[0]
    raise ConfigError(f"config {config!r} is neither a preset nor a config.json file")


def _folder_weights(folder: Path) -> list[Path]:
    for name in (WEIGHTS_NAME, HF_SAFETENSORS_INDEX, HF_BIN_NAME, HF_BIN_INDEX):
        if (folder / name).is_file():
            return [folder / name]
    found = sorted(p.name for p in folder.iterdir() if p.suffix in WEIGHT_SUFFIXES)
    hint = f" (found {', '.join(found)}: pass the file itself with a config)" if found else ""
    raise CheckpointError(f"{folder} holds no {WEIGHTS_NAME} or {HF_BIN_NAME}{hint}")


def _resolve_folder(folder: Path, spec: str, config: GPTConfig | None, require_weights: bool = True) -> ModelSource:
    cfg_path = folder / CONFIG_NAME
    if not cfg_path.is_file():
        if config is None:
            raise CheckpointError(f"{folder} has no {CONFIG_NAME}; pass a config (a preset name) for its weights")
        return ModelSource(spec, "file", config, _folder_weights(folder), None)
    folder_config, layout = _config_from_json(cfg_path)
    try:
        weights = _folder_weights(folder)
    except CheckpointError:
        if require_weights:
            raise
        weights = []
    metadata = read_metadata(folder) if layout == "customgpt" else {}
    return ModelSource(spec, layout, config or folder_config, weights, layout, metadata=metadata)


def resolve_model_spec(
    spec: str | Path, *, config: GPTConfig | str | None = None, download_weights: bool = True
) -> ModelSource:
    """Decide what ``spec`` names, read its config, and find its weights (not read yet).

    In order: an existing folder (customgpt or Hugging Face, told apart by ``config.json``),
    an existing weights file (config from a ``config.json`` beside it or from ``config``),
    a preset name such as ``gpt2-124M`` or ``cpu-tiny`` (random weights), then a hub id
    (``gpt2``, ``gpt2-medium``, ``gpt2-large``, ``gpt2-xl`` or ``owner/name``), downloaded
    into the hub cache. ``config`` (a :class:`GPTConfig` or preset name) overrides the
    config found. ``download_weights=False`` fetches only a hub model's ``config.json``
    (its ``weights`` are then empty unless already cached).
    """
    from customgpt import hub

    text = str(spec)
    cfg = _config_from_arg(config)
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
        return ModelSource(text, "file", cfg, [path], None)
    if isinstance(spec, str) and spec not in hub.HUB_ALIASES and is_preset(spec):
        return ModelSource(text, "preset", cfg or GPTConfig.from_preset(spec))
    repo_id = hub.hub_repo_id(text) if isinstance(spec, str) else None
    if repo_id is None or path.suffix in WEIGHT_SUFFIXES:
        if any(sep in text for sep in ("/", os.sep)) or path.suffix:
            raise CustomGPTError(f"no such file or folder: {text}")
        from customgpt.config import list_presets

        raise CustomGPTError(
            f"unknown model {text!r}: not a file or folder, not a preset ({', '.join(list_presets())}), "
            f"not a hub id ({', '.join(hub.HUB_ALIASES)} or owner/name)"
        )
    folder = hub.download_model(repo_id, config_only=not download_weights)
    source = _resolve_folder(folder, text, cfg, require_weights=download_weights)
    source.kind, source.hub_id = "hub", repo_id
    return source


def load_state(source: ModelSource) -> dict[str, Tensor]:
    """Read and validate the tensors of a resolved source, in our layout."""
    if source.kind == "preset":
        raise CheckpointError(f"{source.spec} is a preset: it has no weights to read")
    (path,) = source.weights
    tensors = _load_shards(path) if path.name.endswith(".index.json") else load_weights(path)
    layout = source.layout or detect_layout(tensors, source.config)
    if layout == "hf":
        return hf_to_customgpt_state(tensors, source.config, source=str(path))
    return check_customgpt_state(tensors, source.config, source=str(path))


def load_model(
    spec: str | Path,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | str | None = None,
    config: GPTConfig | str | None = None,
    seed: int | None = None,
    overrides: Mapping[str, Any] | None = None,
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

    Returns:
        The model in eval mode (call ``.train()`` to fine-tune).

    Raises:
        CheckpointError: a missing, corrupt or mismatched checkpoint, naming file and tensor.
        CustomGPTError: an unknown spec, or a hub id that cannot be downloaded.
    """
    source = resolve_model_spec(spec, config=config)
    if overrides:
        source.config = source.config.replace(**dict(overrides))
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
        return {
            "spec": self.spec,
            "kind": self.kind,
            "source": self.source,
            "hub_id": self.hub_id,
            "weights": self.weights,
            "dtype": self.dtype,
            "config": self.config.to_dict(),
            "parameters": {
                "total": self.parameters,
                "embedding": self.embedding_parameters,
                "non_embedding": self.non_embedding_parameters,
            },
            "metadata": self.metadata,
        }


def embedding_parameters(config: GPTConfig) -> int:
    """Token plus position embedding parameters (what ``num_parameters(exclude_embeddings=True)``
    leaves out in transformers; a tied LM head adds nothing), character n-gram buckets included."""
    return (config.vocab_size + config.token_ngram_buckets + config.context_length) * config.n_embd


def describe_model_spec(spec: str | Path, *, config: GPTConfig | str | None = None) -> ModelInfo:
    """Summarise a model without loading its tensors (only the safetensors header is read).

    For a hub id only ``config.json`` is fetched. A well-known hub id (``gpt2`` ...) that is
    not in the cache and cannot be fetched (offline) is described from its preset, with the
    source saying so.
    """
    from customgpt import hub

    try:
        source = resolve_model_spec(spec, config=config, download_weights=False)
    except hub.HubUnavailableError:
        repo = hub.hub_repo_id(str(spec))
        preset = {v: k for k, v in HF_HUB_IDS.items()}.get(repo or "")
        if preset is None:
            raise
        cfg = GPTConfig.from_preset(preset)
        return ModelInfo(
            str(spec), "hub", f"Hugging Face hub {repo} (not downloaded; shape of preset {preset})",
            cfg, cfg.num_parameters(), embedding_parameters(cfg), [], None, repo,
        )
    dtype = None
    if source.kind == "preset":
        dtype = "float32"
    elif source.weights and source.weights[0].suffix == ".safetensors":
        header, _ = _read_safetensors_header(source.weights[0])
        dtypes = sorted({d for _, d in header.values()})
        dtype = ",".join(dtypes) if dtypes else None
        dtype = {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "F64": "float64"}.get(dtype or "", dtype)
    cfg = source.config
    return ModelInfo(
        spec=str(spec),
        kind=source.kind,
        source=source.describe(),
        config=cfg,
        parameters=cfg.num_parameters(),
        embedding_parameters=embedding_parameters(cfg),
        weights=[str(p) for p in source.weights],
        dtype=dtype,
        hub_id=source.hub_id,
        metadata=source.metadata,
    )


# =========================================================================== Hugging Face export


def _model_card(config: GPTConfig, name: str, dtype: str, provenance: Mapping[str, Any], tokenizer: bool) -> str:
    from customgpt import __version__

    license_ = str(provenance.get("license", "mit"))
    total = config.num_parameters()
    emb = embedding_parameters(config)
    rows = [
        ("vocab_size", config.vocab_size),
        ("context_length (n_positions)", config.context_length),
        ("n_embd", config.n_embd),
        ("n_layer", config.n_layer),
        ("n_head", config.n_head),
        ("n_inner", config.n_inner),
        ("layer_norm_epsilon", config.layer_norm_eps),
        ("dtype", dtype),
    ]
    table = "\n".join(f"| {k} | {v} |" for k, v in rows)
    prov_lines = [f"- **{k}**: {v}" for k, v in provenance.items() if k != "license"]
    prov = "\n".join(prov_lines) if prov_lines else "- not recorded"
    tok_note = (
        "The GPT-2 tokenizer files are included."
        if tokenizer
        else f"No tokenizer files: the vocabulary ({config.vocab_size}) is smaller than GPT-2's ({GPT2_VOCAB_SIZE})."
    )
    if tokenizer:
        hf_usage = f"""from transformers import AutoModelForCausalLM, AutoTokenizer

tokenizer = AutoTokenizer.from_pretrained("path/to/{name}")
model = AutoModelForCausalLM.from_pretrained("path/to/{name}")
inputs = tokenizer("Every effort moves you", return_tensors="pt")
print(tokenizer.decode(model.generate(**inputs, max_new_tokens=20)[0]))"""
    else:
        hf_usage = f"""import torch
from transformers import AutoModelForCausalLM

model = AutoModelForCausalLM.from_pretrained("path/to/{name}")
logits = model(torch.tensor([[1, 2, 3]])).logits  # token ids below {config.vocab_size}"""
    return f"""---
library_name: transformers
pipeline_tag: text-generation
license: {license_}
tags:
- gpt2
- text-generation
- customgpt
---

# {name}

A GPT-2 language model (`GPT2LMHeadModel`) exported by customgpt {__version__}. {tok_note}

## Configuration

| field | value |
|---|---|
{table}

Parameters: {total:,} ({emb:,} in the token and position embeddings, {total - emb:,} others;
the LM head is tied to the token embedding).

## Provenance

{prov}

## Usage

With customgpt:

```python
from customgpt.checkpoints import load_model

model = load_model("path/to/{name}")  # a local folder or the hub id of this repository
```

With transformers:

```python
{hf_usage}
```
"""


def export_hf(
    model: GPT,
    folder: str | Path,
    *,
    provenance: Mapping[str, Any] | None = None,
    include_tokenizer: bool | None = None,
) -> Path:
    """Write ``model`` as a Hugging Face GPT-2 folder that ``GPT2LMHeadModel.from_pretrained``
    loads with no missing or unexpected keys.

    Files: ``config.json`` (:meth:`GPTConfig.to_hf_dict` plus the dtype), ``model.safetensors``
    (Conv1D layout, full ``transformer.`` keys, the tied head left out as transformers does),
    ``generation_config.json``, the GPT-2 tokenizer files, and a model card ``README.md``
    recording ``provenance`` (source weights, training run; a ``license`` key sets the card's
    licence, default MIT as GPT-2's).

    Args:
        include_tokenizer: write the GPT-2 tokenizer files; None (default) writes them when
            the vocabulary covers GPT-2's 50,257 ids.
    """
    model = _unwrap(model)
    config = model.config
    hf = config.to_hf_dict()  # raises ConfigError for an untied head, which GPT-2 cannot express
    folder = Path(folder)
    dtype = str(model.transformer.wte.weight.dtype).removeprefix("torch.")
    hf["torch_dtype"] = dtype  # transformers 4.x reads torch_dtype ...
    hf["dtype"] = dtype  # ... and 5.x reads dtype
    if include_tokenizer is None:
        include_tokenizer = config.vocab_size >= GPT2_VOCAB_SIZE
    token_id = hf["eos_token_id"]
    generation = {"_from_model_config": True, "bos_token_id": token_id, "eos_token_id": token_id}
    tensors = customgpt_to_hf_state(state_for_saving(model), config)
    with staged_files(folder) as stage:
        _write_safetensors(tensors, stage.path(WEIGHTS_NAME), None)
        stage.write_json(CONFIG_NAME, hf)
        stage.write_json("generation_config.json", generation)
        stage.write_text("README.md", _model_card(config, folder.resolve().name, dtype, provenance or {}, include_tokenizer))
    if include_tokenizer:
        from customgpt.tokenizer import save_hf_tokenizer_files

        save_hf_tokenizer_files(folder, model_max_length=config.context_length)
    return folder


def provenance_of(source: ModelSource) -> dict[str, Any]:
    """A provenance record for a model card, from where the model was loaded."""
    prov: dict[str, Any] = {}
    if source.kind == "hub":
        prov["source weights"] = f"https://huggingface.co/{source.hub_id}"
    elif source.kind == "preset":
        prov["source weights"] = f"random initialisation of preset {source.config.name}"
    else:
        prov["source weights"] = ", ".join(str(p) for p in source.weights)
    for key, value in source.metadata.items():
        if key not in ("format", "customgpt_version"):
            prov[key] = value if isinstance(value, (str, int, float)) else json.dumps(value)
    return prov
