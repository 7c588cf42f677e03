"""LoRA: low-rank adapters on the GPT-2 linears, saved alone or exported for PEFT.

A target linear ``y = W x + b`` becomes ``y = W x + b + (B A dropout(x)) * scaling`` with
``A`` (r, in) and ``B`` (out, r), ``B`` zero at first (Hu et al. 2021, arXiv:2106.09685).
:class:`LoRALinear` keeps the original linear as ``base_layer`` (``attn.c_attn.base_layer.weight``,
``attn.c_attn.lora_A``, ``attn.c_attn.lora_B``). The tensors are oriented as PEFT orients them
for GPT-2, so :func:`export_peft` and :func:`import_peft` only rename the keys. Usage, file
formats and the measured savings: docs/lora.md.
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import json
import math
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from customgpt.checkpoints.files import load_weights, save_weights
from customgpt.errors import CheckpointError, ConfigError
from customgpt.io import atomic_write_text, read_json_object
from customgpt.sections import FieldError, Section, to_dict

#: Target names :class:`LoRAConfig` accepts (``c_proj``: both projections; ``score``: a
#: classification head). A target selects every ``nn.Linear`` whose name is it or ends with ``"." + it``.
KNOWN_TARGETS: tuple[str, ...] = ("c_attn", "attn.c_proj", "c_fc", "mlp.c_proj", "c_proj", "score")

#: Files written by :func:`save_adapter`; a PEFT adapter folder names its config alike.
ADAPTER_WEIGHTS = "adapter.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_FORMAT = "customgpt-lora"
ADAPTER_FORMAT_VERSION = 1
PEFT_WEIGHTS = "adapter_model.safetensors"
_PEFT_PREFIX = "base_model.model."


# --------------------------------------------------------------------------- config


@dataclass
class LoRAConfig(Section):
    """Low-rank adapters: what to adapt and how strongly (a fine-tuning config's ``lora`` section,
    used when the task's ``trainable`` is lora); validated on construction."""

    r: int = 8
    """Rank of each update (A is r x in, B is out x r)."""
    alpha: float = 16.0
    """Scale numerator: the update is (alpha / r) B A (alpha / sqrt(r) with rslora)."""
    dropout: float = 0.0
    """Dropout on the input of the adapter path while training."""
    targets: tuple[str, ...] = ("c_attn",)
    """Module names to adapt (c_attn, attn.c_proj, c_fc, mlp.c_proj, c_proj)."""
    rslora: bool = False
    """Rank-stabilised scaling alpha / sqrt(r), which keeps the update's size steady as r grows."""

    def validate(self) -> None:
        # type() rather than isinstance(): a bool is an int, but never a rank or a scale
        if type(self.r) is not int or self.r < 1:
            raise FieldError("r", f"must be a positive integer, got {self.r!r}")
        if type(self.alpha) not in (int, float) or self.alpha <= 0:
            raise FieldError("alpha", f"must be a number > 0, got {self.alpha!r}")
        if type(self.dropout) not in (int, float) or not 0.0 <= self.dropout < 1.0:
            raise FieldError("dropout", f"must be a number in [0, 1), got {self.dropout!r}")
        if not isinstance(self.rslora, bool):
            raise FieldError("rslora", f"must be true or false, got {self.rslora!r}")
        # A bare string would otherwise be read as a sequence of one-letter targets.
        if isinstance(self.targets, str) or not isinstance(self.targets, Iterable):
            raise FieldError("targets", f"must be a list of module names, got {self.targets!r}")
        self.targets = tuple(self.targets)
        known = ", ".join(KNOWN_TARGETS)
        if not self.targets:
            raise FieldError("targets", f"must name at least one module (known: {known})")
        for t in self.targets:
            if t not in KNOWN_TARGETS:
                raise FieldError("targets", f"unknown target {t!r} (known: {known})")
        if len(set(self.targets)) != len(self.targets):
            raise FieldError("targets", f"lists a module twice: {list(self.targets)}")

    @property
    def scaling(self) -> float:
        return self.alpha / math.sqrt(self.r) if self.rslora else self.alpha / self.r

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, where: str = "lora") -> LoRAConfig:
        """Build from a mapping (an adapter's saved ``lora`` config); unknown keys are an error,
        and every error names ``where`` and the key."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"{where} must be a mapping, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown key(s) in {where}: {', '.join(unknown)} (known: {', '.join(sorted(known))})")
        try:
            return cls(**data)
        except FieldError as exc:
            raise ConfigError(f"{where}.{exc}") from None

    def apply(self, model: nn.Module) -> list[str]:
        """Wrap ``model``'s target linears in adapters and freeze everything but them, in place.

        Returns the names of the adapted modules. A caller that trains more than the
        adapters (a classification head) unfreezes it afterwards.

        Raises:
            ConfigError: a target the model lacks, a tied weight, or adapters already there.
        """
        names = inject_lora(model, self)
        mark_only_lora_trainable(model)
        return names


# --------------------------------------------------------------------------- the layer


class LoRALinear(nn.Module):
    """An ``nn.Linear`` plus a trainable low-rank update: ``base(x) + B A dropout(x) * scaling``.

    ``merge()`` folds the update into ``base_layer.weight`` and ``unmerge()`` subtracts it again
    (no copy is kept: the weight comes back within float rounding, not bit for bit).
    ``disabled`` skips the update (the base model's output, exactly).
    """

    def __init__(self, base_layer: nn.Linear, r: int, alpha: float, dropout: float = 0.0, rslora: bool = False):
        super().__init__()
        if not isinstance(base_layer, nn.Linear):
            raise TypeError(f"LoRALinear wraps an nn.Linear, got {type(base_layer).__name__}")
        self.base_layer = base_layer
        self.r = r
        self.alpha = alpha
        self.scaling = alpha / math.sqrt(r) if rslora else alpha / r
        factory = dict(device=base_layer.weight.device, dtype=base_layer.weight.dtype)
        self.lora_A = nn.Parameter(torch.empty(r, base_layer.in_features, **factory))  # (r, in)
        self.lora_B = nn.Parameter(torch.zeros(base_layer.out_features, r, **factory))  # (out, r)
        # PEFT's default: A like nn.Linear's own init, B zero so training starts at the base model.
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.lora_dropout: nn.Module = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False
        self.disabled = False

    def delta_weight(self) -> Tensor:
        """The update ``scaling * B @ A`` as an (out, in) matrix, computed in float32."""
        return (self.lora_B.float() @ self.lora_A.float()) * self.scaling

    def forward(self, x: Tensor) -> Tensor:
        out = self.base_layer(x)
        if self.disabled and self.merged:
            raise RuntimeError("LoRA adapter is disabled but merged into the weight; unmerge it first")
        if self.disabled or self.merged:  # merged: the update is already inside base_layer.weight
            return out
        # (…, in) → (…, r) → (…, out); never forms the (out, in) delta.
        return out + F.linear(F.linear(self.lora_dropout(x), self.lora_A), self.lora_B) * self.scaling

    @torch.no_grad()
    def merge(self) -> None:
        """``W += scaling * B @ A``; a second call does nothing."""
        if not self.merged:
            w = self.base_layer.weight
            w.add_(self.delta_weight().to(w.dtype))
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """``W -= scaling * B @ A``, undoing :meth:`merge`; does nothing when not merged."""
        if self.merged:
            w = self.base_layer.weight
            w.sub_(self.delta_weight().to(w.dtype))
            self.merged = False

    def extra_repr(self) -> str:  # the shapes are in base_layer's repr
        return (f"r={self.r}, alpha={self.alpha}, scaling={self.scaling:g}, "
                f"merged={self.merged}, disabled={self.disabled}")


# --------------------------------------------------------------------------- inject / trainability


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    """The model's LoRA layers by module name, in module order."""
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


def _select(
    model: nn.Module, patterns: Sequence[str], what: str, kind: type[nn.Module] = nn.Module
) -> dict[str, nn.Module]:
    """The ``kind`` modules that ``patterns`` select (see :func:`mark_only_lora_trainable`), by
    name in module order, the outermost of nested ones only; a pattern selecting none is an error."""
    if isinstance(patterns, str):
        patterns = (patterns,)
    modules = {name: m for name, m in model.named_modules() if name and isinstance(m, kind)}
    selected: set[str] = set()
    for pattern in patterns:
        hits = {n for n in modules if n.endswith("." + pattern) or fnmatch.fnmatchcase(n, pattern)}
        if not hits:
            noun = "linear layer" if kind is nn.Linear else "module"
            raise ConfigError(f"{what}: {pattern!r} matches no {noun} of this model")
        selected |= hits
    outermost = [n for n in modules if n in selected and not any(n.startswith(o + ".") for o in selected)]
    return {n: modules[n] for n in outermost}


def _tied_outside(model: nn.Module, modules: Sequence[str]) -> str | None:
    """The name of a parameter outside ``modules`` that is the same tensor as one inside, if any."""
    inside = {id(p) for m in modules for p in model.get_submodule(m).parameters()}
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in inside and not any(name.startswith(m + ".") for m in modules):
            return name
    return None


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def inject_lora(model: nn.Module, cfg: LoRAConfig) -> list[str]:
    """Wrap every target linear of ``model`` in a :class:`LoRALinear`, in place.

    Returns the names of the replaced modules. The adapters start with ``B = 0``, so the
    model's outputs are unchanged until training moves ``B``. The config is kept as
    ``model.lora_config`` for :func:`save_adapter` and :func:`export_peft`. Raises
    ConfigError for a target that selects no linear or whose weight is tied to another
    module's (merging would change both).
    """
    if lora_layers(model):
        raise ConfigError("the model already has LoRA adapters; inject into a plain model")
    targets = _select(model, cfg.targets, "lora.targets", nn.Linear)
    for name in targets:
        shared = _tied_outside(model, [name])
        if shared:
            raise ConfigError(f"lora.targets: {name}.weight is shared with {shared}; a tied weight cannot be adapted")
    for name, linear in targets.items():
        _set_submodule(model, name, LoRALinear(linear, cfg.r, cfg.alpha, cfg.dropout, cfg.rslora))
    model.lora_config = cfg
    return list(targets)


def mark_only_lora_trainable(model: nn.Module, extra_trainable: Sequence[str] = ()) -> list[str]:
    """Freeze everything except the LoRA matrices and the modules named by ``extra_trainable``.

    ``extra_trainable`` holds module-name patterns (``"score"``, ``"transformer.ln_f"``,
    ``"transformer.h.11.*"``): a pattern selects a module whose name equals it, ends with
    ``"." + pattern``, or matches it as a glob; all parameters under a selected module train.
    Returns the names of the selected extra modules. A pattern that selects nothing is an error.
    """
    layers = lora_layers(model)
    if not layers:
        raise ConfigError("the model has no LoRA adapters; call inject_lora first")
    extras = list(_select(model, extra_trainable, "extra_trainable"))
    model.requires_grad_(False)
    for layer in layers.values():
        layer.lora_A.requires_grad_(True)
        layer.lora_B.requires_grad_(True)
    for name in extras:
        model.get_submodule(name).requires_grad_(True)
    return extras


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; a tied weight counts once."""
    params = list(model.parameters())  # parameters() yields each shared tensor once
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def parameter_summary(model: nn.Module) -> str:
    """One line: ``trainable 1,234 / 124,439,808 (0.99%)``."""
    trainable, total = count_parameters(model)
    share = 100.0 * trainable / total if total else 0.0
    return f"trainable {trainable:,} / {total:,} ({share:.2f}%)"


# --------------------------------------------------------------------------- merge / disable


def merge_lora(model: nn.Module) -> int:
    """Fold every adapter into its base weight (idempotent). Returns the number of layers."""
    layers = lora_layers(model)
    for layer in layers.values():
        layer.merge()
    return len(layers)


def unmerge_lora(model: nn.Module) -> int:
    """Take every merged adapter out of its base weight again. Returns the number of layers."""
    layers = lora_layers(model)
    for layer in layers.values():
        layer.unmerge()
    return len(layers)


def remove_lora(model: nn.Module) -> nn.Module:
    """Merge the adapters and put the plain ``nn.Linear`` layers back: a plain model again.

    The model is changed in place and returned; its state dict then has the base model's
    keys and the merged weights (what :func:`customgpt.checkpoints.save_model` expects).
    """
    for name, layer in lora_layers(model).items():
        layer.merge()
        _set_submodule(model, name, layer.base_layer)
    if hasattr(model, "lora_config"):
        del model.lora_config
    return model


def _plain_name(key: str) -> str:
    return key.replace(".base_layer.", ".")


def _plain_state(model: nn.Module, layers: Mapping[str, LoRALinear]) -> dict[str, Tensor]:
    """The model's tensors under their plain names, without the adapters."""
    return {
        _plain_name(key): tensor.detach()
        for key, tensor in model.state_dict().items()
        if not (key.rpartition(".")[0] in layers and key.endswith((".lora_A", ".lora_B")))
    }


def merged_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """The plain model's state dict with the adapters folded in, leaving ``model`` unchanged.

    Keys are the base model's (``...attn.c_attn.weight``); tensors of merged layers are used
    as they are, the others get ``scaling * B @ A`` added to a copy.
    """
    layers = lora_layers(model)
    out = _plain_state(model, layers)
    for name, layer in layers.items():
        if not layer.merged:
            w = out[f"{name}.weight"]
            out[f"{name}.weight"] = (w.float() + layer.delta_weight()).to(w.dtype)
    return out


@contextlib.contextmanager
def disable_adapters(model: nn.Module) -> Iterator[nn.Module]:
    """Run the base model inside the block: the same network with every adapter switched off.

    This is the reference model of preference tuning (DPO) without a second copy of the
    weights. Merged adapters are unmerged for the block and merged again afterwards.
    """
    layers = list(lora_layers(model).values())
    if not layers:
        raise ConfigError("the model has no LoRA adapters to disable")
    was_merged = [layer for layer in layers if layer.merged]
    was_disabled = [layer.disabled for layer in layers]
    for layer in was_merged:
        layer.unmerge()
    for layer in layers:
        layer.disabled = True
    try:
        yield model
    finally:
        for layer, flag in zip(layers, was_disabled):
            layer.disabled = flag
        for layer in was_merged:
            layer.merge()


# --------------------------------------------------------------------------- state dicts and checksum


def lora_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """The adapter tensors alone: ``{"transformer.h.0.attn.c_attn.lora_A": (r, in), ...}``."""
    return {f"{n}.{leaf}": getattr(m, leaf).detach() for n, m in lora_layers(model).items() for leaf in ("lora_A", "lora_B")}


def base_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """The base model's tensors under their plain names (no ``base_layer``, no adapters).

    Refuses while adapters are merged: the base weights are then not available exactly.
    """
    layers = lora_layers(model)
    merged = [name for name, layer in layers.items() if layer.merged]
    if merged:
        raise CheckpointError(f"LoRA adapters are merged into {merged[0]} (and others); call unmerge_lora first")
    return _plain_state(model, layers)


def load_base_state_dict(model: nn.Module, state_dict: Mapping[str, Tensor]) -> None:
    """Load a plain (base model) state dict into a model that already has adapters.

    Names such as ``...attn.c_attn.weight`` go to ``...attn.c_attn.base_layer.weight``; every
    base tensor must be present and no unknown key may appear. The adapters are left as they
    are and count as unmerged afterwards (the new base weights contain no update).
    """
    layers = lora_layers(model)
    renamed: dict[str, Tensor] = {}
    for key, tensor in state_dict.items():
        module_name, _, leaf = key.rpartition(".")
        renamed[f"{module_name}.base_layer.{leaf}" if module_name in layers else key] = tensor
    result = model.load_state_dict(renamed, strict=False)
    missing = [k for k in result.missing_keys if k.rpartition(".")[2] not in ("lora_A", "lora_B")]
    if missing or result.unexpected_keys:
        raise CheckpointError(
            f"base state dict does not fit the model: missing {[_plain_name(k) for k in missing][:5]}, "
            f"unexpected {result.unexpected_keys[:5]}"
        )
    for layer in layers.values():
        layer.merged = False


def base_checksum(model: nn.Module, exclude_modules: Sequence[str] = ()) -> str:
    """sha256 over the base model's tensors in sorted key order: each one's name, shape and
    bytes, floating tensors as float32 (a bf16 checkpoint and its float32 upcast hash alike).
    Tensors under the modules in ``exclude_modules`` (heads saved with the adapter) are left out.
    """
    digest = hashlib.sha256()
    for key, tensor in sorted(base_state_dict(model).items()):
        if any(key.startswith(m + ".") for m in exclude_modules):
            continue
        t = tensor.detach().cpu()
        if t.is_floating_point():
            t = t.float()
        digest.update(f"{key}\0{tuple(t.shape)}\0{t.dtype}\0".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


# --------------------------------------------------------------------------- files


def _config_of(model: nn.Module) -> LoRAConfig:
    cfg = getattr(model, "lora_config", None)
    if not isinstance(cfg, LoRAConfig) or not lora_layers(model):
        raise ConfigError("the model has no LoRA adapters; call inject_lora first")
    return cfg


def save_adapter(
    model: nn.Module,
    folder: str | os.PathLike[str],
    base_model_info: str | Mapping[str, Any] | None = None,
    *,
    extra_trainable: Sequence[str] = (),
) -> Path:
    """Write the adapters alone: ``adapter.safetensors`` and ``adapter_config.json``.

    ``base_model_info`` names the base (a spec string such as ``"gpt2-124M"`` or a path, or a
    mapping such as ``{"spec": ..., "name": ...}``). The config also records the base model's
    :class:`~customgpt.config.GPTConfig` and :func:`base_checksum`, so :func:`load_adapter`
    can refuse a different base. Modules selected by ``extra_trainable`` (a classification
    head) are saved whole beside the adapters and left out of the checksum.
    """
    cfg = _config_of(model)
    folder = Path(folder)
    extras = list(_select(model, extra_trainable, "extra_trainable"))
    # A weight tied to a module outside (the LM head and the token embedding) would be saved
    # yet also counted in the base checksum.
    shared = _tied_outside(model, extras)
    if shared:
        raise ConfigError(
            f"extra_trainable: a saved module shares its weight with {shared}; tied weights cannot be saved"
        )
    info = {"spec": base_model_info} if isinstance(base_model_info, str) else dict(base_model_info or {})
    if hasattr(getattr(model, "config", None), "to_dict"):
        info["config"] = model.config.to_dict()
    info["sha256"] = base_checksum(model, extras)

    tensors = lora_state_dict(model)
    # Saved modules go under their plain names, so they load into the plain base model.
    for key, tensor in base_state_dict(model).items():
        if any(key.startswith(m + ".") for m in extras):
            tensors[key] = tensor
    meta = {
        "format": ADAPTER_FORMAT,
        "format_version": ADAPTER_FORMAT_VERSION,
        "lora": to_dict(cfg),
        "base_model": info,
        "modules_to_save": extras,
        "layers": list(lora_layers(model)),
    }
    save_weights(tensors, folder / ADAPTER_WEIGHTS)
    atomic_write_text(folder / ADAPTER_CONFIG, json.dumps(meta, indent=2) + "\n")  # last: marks a complete folder
    return folder


def read_adapter_config(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``adapter_config.json`` of a folder written by :func:`save_adapter`, checked."""
    path = Path(folder) / ADAPTER_CONFIG
    meta = read_json_object(path)
    if meta.get("format") != ADAPTER_FORMAT:
        hint = " (a PEFT adapter? use import_peft)" if "peft_type" in meta else ""
        raise CheckpointError(f"{path}: not a customgpt LoRA adapter{hint}")
    if meta.get("format_version") != ADAPTER_FORMAT_VERSION:
        raise CheckpointError(f"{path}: unsupported format_version {meta.get('format_version')!r}")
    return meta


def _check_fit(model: nn.Module, cfg: LoRAConfig, tensors: Mapping[str, Tensor], extras: Mapping[str, Tensor], source: Path) -> None:
    """Check every adapter and saved-module tensor against the plain ``model``; name the first misfit."""
    if lora_layers(model):
        raise CheckpointError(f"{source}: the model already has LoRA adapters; load onto a plain base model")
    try:
        targets = _select(model, cfg.targets, "lora.targets", nn.Linear)
    except ConfigError as exc:
        raise CheckpointError(f"{source}: {exc}") from exc
    wanted = {f"{n}.lora_A": (cfg.r, m.in_features) for n, m in targets.items()}
    wanted |= {f"{n}.lora_B": (m.out_features, cfg.r) for n, m in targets.items()}
    state = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    for what, given, shapes in (("adapter tensor", tensors, wanted), ("saved module tensor", extras, state)):
        for key, tensor in given.items():
            if key not in shapes:
                raise CheckpointError(f"{source}: {what} {key!r} has no counterpart in this model")
            if tuple(tensor.shape) != shapes[key]:
                raise CheckpointError(
                    f"{source}: shape mismatch for {what} {key!r}: the adapter has {tuple(tensor.shape)}, "
                    f"this model needs {shapes[key]}"
                )
    missing = [key for key in wanted if key not in tensors]
    if missing:
        raise CheckpointError(f"{source}: the adapter has no tensor {missing[0]} for this model")


@torch.no_grad()
def _inject_and_copy(model: nn.Module, cfg: LoRAConfig, tensors: Mapping[str, Tensor], extras: Mapping[str, Tensor]) -> None:
    """Copy the saved modules into the plain model, inject ``cfg``'s adapters, copy them in."""
    state = model.state_dict(keep_vars=True)  # plain names: nothing is injected yet
    for key, tensor in extras.items():
        state[key].data.copy_(tensor)
    inject_lora(model, cfg)
    layers = lora_layers(model)
    for key, tensor in tensors.items():
        module_name, _, leaf = key.rpartition(".")
        getattr(layers[module_name], leaf).copy_(tensor)


def load_adapter(model: nn.Module, folder: str | os.PathLike[str], *, verify_base: bool = True) -> LoRAConfig:
    """Inject adapters into a plain base model and load them from ``folder``.

    Refuses, with a :class:`~customgpt.errors.CheckpointError` and before changing the model,
    a base whose shapes do not fit (naming the tensor) or, with ``verify_base``, whose weights
    differ from the base the adapter was saved on (naming both checksums). Returns the
    adapter's :class:`LoRAConfig`.
    """
    folder = Path(folder)
    meta = read_adapter_config(folder)
    try:
        cfg = LoRAConfig.from_dict(meta.get("lora"), where=f"{folder / ADAPTER_CONFIG}: lora")
    except ConfigError as exc:
        raise CheckpointError(str(exc)) from exc
    extras = list(meta.get("modules_to_save") or [])
    everything = load_weights(folder / ADAPTER_WEIGHTS)
    tensors = {k: v for k, v in everything.items() if k.rpartition(".")[2] in ("lora_A", "lora_B")}
    extra_tensors = {k: v for k, v in everything.items() if k not in tensors}

    _check_fit(model, cfg, tensors, extra_tensors, folder)  # shapes first: the more telling error
    base_meta = meta.get("base_model") or {}
    expected = base_meta.get("sha256")
    if verify_base and expected:
        actual = base_checksum(model, extras)
        if actual != expected:
            trained_on = base_meta.get("spec") or base_meta.get("name") or "an unnamed base"
            raise CheckpointError(
                f"{folder}: base model checksum mismatch: the adapter was saved on {trained_on} whose base "
                f"weights hash to sha256 {expected}, but this model's base weights hash to {actual}; "
                "load the matching base model"
            )
    _inject_and_copy(model, cfg, tensors, extra_tensors)
    return cfg


# --------------------------------------------------------------------------- Hugging Face PEFT


def export_peft(
    model: nn.Module,
    folder: str | os.PathLike[str],
    base_model_name_or_path: str | None = None,
) -> Path:
    """Write the adapters as a Hugging Face PEFT LoRA folder for ``GPT2LMHeadModel``.

    Files: ``adapter_config.json`` (``peft_type`` LORA, ``fan_in_fan_out`` true for GPT-2's
    ``Conv1D``) and ``adapter_model.safetensors`` with keys ``base_model.model.<module>.lora_A.weight``
    (r, in) and ``...lora_B.weight`` (out, r), the tensors unchanged. Load with
    ``PeftModel.from_pretrained(GPT2LMHeadModel.from_pretrained(hf_folder), folder)``.
    """
    cfg = _config_of(model)
    folder = Path(folder)
    tensors = {
        f"{_PEFT_PREFIX}{name}.weight": tensor for name, tensor in lora_state_dict(model).items()
    }
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model_name_or_path,
        "inference_mode": True,
        "r": cfg.r,
        "lora_alpha": cfg.alpha,
        "lora_dropout": cfg.dropout,
        "use_rslora": cfg.rslora,
        "target_modules": list(cfg.targets),
        "fan_in_fan_out": True,
        "bias": "none",
    }
    save_weights(tensors, folder / PEFT_WEIGHTS)
    atomic_write_text(folder / ADAPTER_CONFIG, json.dumps(config, indent=2) + "\n")
    return folder


def import_peft(model: nn.Module, folder: str | os.PathLike[str]) -> LoRAConfig:
    """Inject and load a Hugging Face PEFT LoRA adapter for GPT-2 (the inverse of :func:`export_peft`).

    Supports plain LoRA (no DoRA, no per-layer rank or alpha patterns, no bias training, no
    saved modules) on customgpt's target names. Returns the resulting :class:`LoRAConfig`.
    """
    folder = Path(folder)
    path = folder / ADAPTER_CONFIG
    meta = read_json_object(path)
    if meta.get("peft_type") != "LORA":
        raise CheckpointError(f"{path}: peft_type is {meta.get('peft_type')!r}, only 'LORA' is supported")
    extensions = ("use_dora", "lora_bias", "rank_pattern", "alpha_pattern", "modules_to_save",
                  "layer_replication")
    unsupported = [key for key in extensions if meta.get(key)]
    if meta.get("bias", "none") != "none":
        unsupported.append("bias")
    if meta.get("layers_to_transform") is not None:
        unsupported.append("layers_to_transform")
    if unsupported:
        key = unsupported[0]
        raise CheckpointError(f"{path}: {key}={meta[key]!r} is not supported by customgpt's LoRA")
    targets = meta.get("target_modules")
    if not isinstance(targets, list):
        raise CheckpointError(f"{path}: target_modules must be a list of names, got {targets!r}")
    try:
        cfg = LoRAConfig(
            r=meta.get("r", 8),
            alpha=meta.get("lora_alpha", 8),
            dropout=meta.get("lora_dropout", 0.0),
            # PEFT stores target_modules from a set, so its order varies between runs:
            # put the names in customgpt's canonical order (unknown names go last for the error).
            targets=tuple(sorted(targets, key=lambda t: (KNOWN_TARGETS.index(t) if t in KNOWN_TARGETS else 99, t))),
            rslora=bool(meta.get("use_rslora", False)),
        )
    except ConfigError as exc:
        raise CheckpointError(f"{path}: {exc}") from exc
    tensors: dict[str, Tensor] = {}
    for key, tensor in load_weights(folder / PEFT_WEIGHTS).items():
        if not (key.startswith(_PEFT_PREFIX) and key.endswith(".weight")):
            raise CheckpointError(f"{folder / PEFT_WEIGHTS}: unexpected tensor {key!r}")
        tensors[key.removeprefix(_PEFT_PREFIX).removesuffix(".weight")] = tensor
    _check_fit(model, cfg, tensors, {}, folder)
    _inject_and_copy(model, cfg, tensors, {})
    return cfg
