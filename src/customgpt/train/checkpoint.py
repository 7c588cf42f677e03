"""Training checkpoints: everything needed to continue a run exactly where it stopped.

A checkpoint folder (layout: docs/training.md, "Checkpoints and resume") holds a model folder
(:func:`customgpt.checkpoints.load_model` loads it), ``trainer_state.pt``, ``train_config.yaml``
and ``manifest.json`` (size and sha256 of every other file, written last). It is written whole
and swapped into place (:func:`customgpt.io.atomic_folder`, which leaves a complete
``<name>.prev/`` after a crash mid-swap).
"""

from __future__ import annotations

import json
import random
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from customgpt.checkpoints import build_model, load_model, read_metadata, save_model
from customgpt.errors import CheckpointError
from customgpt.io import atomic_folder, atomic_open, atomic_write_text, sha256_file
from customgpt.lora import lora_layers, merged_state_dict

STATE_NAME = "trainer_state.pt"
MANIFEST_NAME = "manifest.json"
CONFIG_NAME = "train_config.yaml"
LAST = "last"
BEST = "best"
CHECKPOINTS_DIR = "checkpoints"


# --------------------------------------------------------------------------- RNG state


def capture_rng_state() -> dict[str, Any]:
    """Python, NumPy, PyTorch (CPU and every CUDA device) generator states, as tensors and
    plain values only (loadable with ``weights_only=True``)."""
    np_kind, np_keys, np_pos, np_has_gauss, np_cached = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "python": random.getstate(),  # (version, tuple of ints, gauss): plain values
        "numpy": {
            "kind": str(np_kind),
            "keys": torch.from_numpy(np.asarray(np_keys, dtype=np.int64).copy()),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "cached_gaussian": float(np_cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Undo :func:`capture_rng_state`: the generators continue exactly where they were."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    npst = state["numpy"]
    np.random.set_state(
        (npst["kind"], npst["keys"].numpy().astype(np.uint32), npst["pos"], npst["has_gauss"], npst["cached_gaussian"])
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and len(state["cuda"]) == torch.cuda.device_count():  # the same GPUs as the writer
        torch.cuda.set_rng_state_all(state["cuda"])


# --------------------------------------------------------------------------- manifest


def _write_manifest(folder: Path) -> None:
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.name != MANIFEST_NAME and not p.name.startswith("."))
    manifest = {"files": {p.name: {"size": p.stat().st_size, "sha256": sha256_file(p)} for p in files}}
    atomic_write_text(folder / MANIFEST_NAME, json.dumps(manifest, indent=2) + "\n")


def verify_checkpoint(folder: str | Path) -> None:
    """Check that every file listed in the manifest is present with its size and sha256.

    Raises:
        CheckpointError: missing folder or manifest, or a missing, truncated or altered file.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"checkpoint {folder} does not exist")
    try:
        files = json.loads((folder / MANIFEST_NAME).read_text(encoding="utf-8"))["files"]
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {folder} is incomplete: no {MANIFEST_NAME}") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"checkpoint {folder}: unreadable {MANIFEST_NAME}: {exc}") from exc
    for name in (STATE_NAME, "model.safetensors"):
        if name not in files:
            raise CheckpointError(f"checkpoint {folder}: {MANIFEST_NAME} does not list {name}")
    for name, info in files.items():
        path = folder / name
        if not path.is_file():
            raise CheckpointError(f"checkpoint {folder}: {name} is missing")
        size = path.stat().st_size
        if size != info["size"]:
            raise CheckpointError(
                f"checkpoint {folder}: {name} is truncated or altered ({size} bytes, expected {info['size']})"
            )
        if sha256_file(path) != info["sha256"]:
            raise CheckpointError(f"checkpoint {folder}: {name} is corrupted (sha256 mismatch)")


# --------------------------------------------------------------------------- save


def save_merged_model(model: nn.Module, folder: str | Path, metadata: Mapping[str, Any]) -> Path:
    """Save ``model`` as a plain customgpt model folder (``customgpt.checkpoints.save_model``);
    LoRA adapters, if any, are merged into a copy of the weights (``model`` keeps training
    unmerged). Returns the folder."""
    model = getattr(model, "_orig_mod", model)  # the module inside a torch.compile wrapper
    if lora_layers(model):
        state = {k: v.detach().clone() for k, v in merged_state_dict(model).items()}
        model = build_model(model.config, state)
    return save_model(model, folder, metadata=dict(metadata))


def save_checkpoint(
    root: str | Path,
    name: str,
    model: nn.Module,
    state: Mapping[str, Any],
    *,
    config_yaml: str | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> Path:
    """Write checkpoint ``root/name`` atomically and return its path.

    Args:
        root: the checkpoints folder of the run.
        name: ``last``, ``best`` or any folder name.
        model: the model (or its ``torch.compile`` wrapper); its weights go to
            ``model.safetensors`` via :func:`customgpt.checkpoints.save_model`.
        state: the trainer state (tensors and plain Python values only).
        config_yaml: the run's resolved config, stored as ``train_config.yaml``.
        metadata: JSON-able extras for ``metadata.json``.
    """
    root = Path(root)
    with atomic_folder(root / name) as tmp:
        save_model(model, tmp, metadata={"kind": "training-checkpoint", **dict(metadata or {})})
        with atomic_open(tmp / STATE_NAME, "wb") as fh:
            torch.save(dict(state), fh)
        if config_yaml is not None:
            atomic_write_text(tmp / CONFIG_NAME, config_yaml)
        _write_manifest(tmp)
    return root / name


def copy_checkpoint(root: str | Path, src: str, dst: str) -> Path:
    """Copy checkpoint ``root/src`` to ``root/dst`` with the same atomic swap (e.g. last → best)."""
    root = Path(root)
    with atomic_folder(root / dst) as tmp:
        shutil.copytree(root / src, tmp, dirs_exist_ok=True)
    return root / dst


# --------------------------------------------------------------------------- find and load


def find_checkpoint(path: str | Path) -> Path:
    """The checkpoint to resume from: ``path`` itself if it is a checkpoint folder, else
    ``path/checkpoints/last`` of a run folder (or its ``.prev`` copy after a crash mid-swap)."""
    path = Path(path)
    if (path / MANIFEST_NAME).is_file() or (path / STATE_NAME).is_file():
        return path
    for root in (path / CHECKPOINTS_DIR, path):
        for candidate in (root / LAST, root / f"{LAST}.prev"):
            if (candidate / MANIFEST_NAME).is_file():
                return candidate
    if (path / CHECKPOINTS_DIR).is_dir() and not has_checkpoint(path / CHECKPOINTS_DIR):
        raise CheckpointError(f"nothing to resume in {path}: the run stopped before its first checkpoint "
                              f"({CHECKPOINTS_DIR}/ is empty); start it again without --resume")
    raise CheckpointError(f"no checkpoint to resume from in {path} (looked for {CHECKPOINTS_DIR}/{LAST}/)")


def has_checkpoint(root: str | Path) -> bool:
    """Whether the checkpoints folder ``root`` holds any complete checkpoint (or a ``.prev`` copy)."""
    root = Path(root)
    return root.is_dir() and any((d / MANIFEST_NAME).is_file() for d in root.iterdir() if d.is_dir())


def reconcile_best(root: str | Path, claimed: float, *, repair: bool = True) -> float:
    """Make ``root/best`` and the best validation loss a resumed run believes agree.

    ``best`` is written before ``last``, so a kill between the two leaves ``best`` ahead of
    the ``claimed`` value in ``last``: ``best``'s value is used. A ``best`` behind ``claimed``
    (written by the older order, ``last`` first) is repaired from ``last`` when ``last`` set
    the claim; otherwise ``best``'s own value is returned. Every process calls it (they must
    agree on the value); only the main one passes ``repair=True``.

    Returns:
        The best validation loss to continue with (``inf`` when there is no ``best``).
    """
    root = Path(root)
    # the validation loss in metadata.json: None when absent or when that save did not evaluate
    best = read_metadata(root / BEST).get("val_loss") if (root / BEST / MANIFEST_NAME).is_file() else None
    if best is not None and best <= claimed:
        return best
    if claimed != float("inf") and read_metadata(root / LAST).get("val_loss") == claimed:
        if repair:
            copy_checkpoint(root, LAST, BEST)
        return claimed
    return best if best is not None else float("inf")


def load_trainer_state(folder: str | Path, *, verify: bool = True) -> dict[str, Any]:
    """Read ``trainer_state.pt`` (``weights_only=True``) after checking the manifest."""
    folder = Path(folder)
    if verify:
        verify_checkpoint(folder)
    path = folder / STATE_NAME
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, bad pickle opcodes, disallowed globals, ...
        raise CheckpointError(f"cannot read {path}: {type(exc).__name__}: {exc}") from exc
    if not isinstance(state, dict) or "step" not in state:
        raise CheckpointError(f"{path} is not a customgpt trainer state")
    return state


def load_checkpoint(folder: str | Path, model: nn.Module) -> dict[str, Any]:
    """Verify ``folder``, copy its weights into ``model`` (any device, shapes checked) and
    return its trainer state."""
    state = load_trainer_state(folder)
    loaded = load_model(Path(folder), device="cpu", dtype=torch.float32)
    try:
        model.load_state_dict(loaded.state_dict(), strict=True)
    except RuntimeError as exc:  # torch's message is one line per tensor: name the first only
        lines = [line.strip().rstrip(".") for line in str(exc).splitlines()[1:] if line.strip()]
        config = Path(folder) / CONFIG_NAME
        hint = f"; resume with the run's own config (--config {config})" if config.is_file() else ""
        raise CheckpointError(f"checkpoint {folder} does not match the model of this config "
                              f"({lines[0] if lines else exc}){hint}") from exc
    return state
