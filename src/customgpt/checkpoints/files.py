"""Weight files: read and write tensors without running code (never an unrestricted unpickle).
Every other module that stores tensors (LoRA adapters, exports) writes through here."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from customgpt.errors import CheckpointError
from customgpt.io import atomic_path

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
METADATA_NAME = "metadata.json"
HF_BIN_NAME = "pytorch_model.bin"
HF_SAFETENSORS_INDEX = "model.safetensors.index.json"
HF_BIN_INDEX = "pytorch_model.bin.index.json"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


def save_weights(tensors: Mapping[str, Tensor], path: str | Path, metadata: Mapping[str, str] | None = None) -> None:
    """Write ``tensors`` to one safetensors file, atomically (temp file + ``os.replace``).

    Tensors are moved to the CPU and made contiguous; shared storage is not allowed (store
    a tied weight once). ``metadata`` goes into the safetensors header (string values).
    """
    with atomic_path(path) as tmp:
        write_safetensors(tensors, tmp, metadata)


def write_safetensors(tensors: Mapping[str, Tensor], path: Path, metadata: Mapping[str, str] | None = None) -> None:
    """Write ``tensors`` to ``path`` in place (not atomic: pass a temporary path from
    :func:`customgpt.io.atomic_path` or a staged file). A tensor that is a view into a larger
    storage (a slice, a row of a fused weight) is copied first, which safetensors requires."""
    from safetensors.torch import save_file

    def own(t: Tensor) -> Tensor:
        t = t.detach().to("cpu").contiguous()
        if t.storage_offset() or t.untyped_storage().nbytes() != t.numel() * t.element_size():
            t = t.clone()
        return t

    cpu = {k: own(v) for k, v in tensors.items()}
    save_file(cpu, str(path), metadata={"format": "pt", **(metadata or {})})


def load_weights(path: str | Path) -> dict[str, Tensor]:
    """Read every tensor of a ``.safetensors`` file, of a ``.bin``/``.pt``/``.pth`` file (with
    ``torch.load(weights_only=True)``) or of the shards a ``*.index.json`` lists, onto the CPU.

    Raises:
        CheckpointError: missing, corrupt or truncated file (the message names it).
    """
    path = Path(path)
    if path.name.endswith(".index.json"):
        return {k: v for shard in shard_files(path) for k, v in load_weights(shard).items()}
    if not path.is_file():
        raise CheckpointError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        with _safe_open(path) as f:
            return {key: f.get_tensor(key) for key in f.keys()}
    if path.suffix in WEIGHT_SUFFIXES:
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


@contextlib.contextmanager
def _safe_open(path: Path) -> Iterator[Any]:
    """``safetensors.safe_open`` on the CPU; a bad file is a :class:`CheckpointError` naming it."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            yield f
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"cannot read {path}: corrupt or truncated safetensors file ({exc})") from exc


def read_safetensors_header(path: Path) -> dict[str, tuple[tuple[int, ...], str]]:
    """Names → (shape, dtype name such as ``float32``) of a safetensors file, or of the shards
    a ``*.safetensors.index.json`` lists, without reading a tensor.

    Raises:
        CheckpointError: a missing, corrupt or truncated file, or an unreadable index.
    """
    if path.name.endswith(".index.json"):
        return {k: v for shard in shard_files(path) for k, v in read_safetensors_header(shard).items()}
    names = {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "F64": "float64"}
    with _safe_open(path) as f:
        slices = {key: f.get_slice(key) for key in f.keys()}
        return {key: (tuple(s.get_shape()), names.get(s.get_dtype(), s.get_dtype())) for key, s in slices.items()}


def shard_files(index: Path) -> list[Path]:
    """The shard files that a sharded Hugging Face checkpoint's ``*.index.json`` lists
    (:class:`CheckpointError` when it cannot be read or has no ``weight_map``)."""
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise CheckpointError(f"cannot read shard index {index}: {exc}") from exc
    return [index.parent / shard for shard in sorted(set(weight_map.values()))]
