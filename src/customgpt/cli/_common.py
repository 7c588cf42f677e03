"""Small helpers shared by the CLI commands: device and dtype options.

Imported by every command's ``build_parser``, so torch is imported only inside the
functions that need it (``customgpt --help`` must stay instant).
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from customgpt.errors import CustomGPTError

if TYPE_CHECKING:
    import torch

DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")
#: dtype names accepted on the command line → torch attribute names.
DTYPE_NAMES = {
    "float32": "float32", "fp32": "float32",
    "bfloat16": "bfloat16", "bf16": "bfloat16",
    "float16": "float16", "fp16": "float16", "half": "float16",
}


def add_device_argument(parser: argparse.ArgumentParser, default: str = "auto") -> None:
    """``--device auto|cpu|cuda|mps`` (``cuda:N`` also accepted)."""
    parser.add_argument(
        "--device",
        default=default,
        help="where to run: auto (CUDA, else Apple MPS, else CPU), cpu, cuda, cuda:N or mps "
        f"(default: {default})",
    )


def add_dtype_argument(parser: argparse.ArgumentParser, default: str = "auto") -> None:
    """``--dtype auto|float32|bfloat16|float16``."""
    parser.add_argument(
        "--dtype",
        default=default,
        help="weight dtype: auto (as stored), float32, bfloat16 or float16 (default: %(default)s)",
    )


def resolve_device(name: str | torch.device | None = "auto") -> torch.device:
    """Turn ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"mps"`` into a usable device.

    ``auto`` picks CUDA, then Apple's MPS, then the CPU. Asking for an accelerator that is
    not there is a user error (one line), not a crash deep inside torch.
    """
    import torch

    if isinstance(name, torch.device):
        return name
    text = (name or "auto").strip().lower()
    if text == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    kind, _, index = text.partition(":")
    if kind not in DEVICE_CHOICES[1:] or (index and not index.isdigit()):
        raise CustomGPTError(f"unknown device {name!r}; choose one of {', '.join(DEVICE_CHOICES)} or cuda:N")
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise CustomGPTError("device 'cuda' was asked for but CUDA is not available here; use --device cpu or auto")
        if index and int(index) >= torch.cuda.device_count():
            raise CustomGPTError(f"device {text!r} does not exist: {torch.cuda.device_count()} CUDA device(s) found")
    if kind == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise CustomGPTError("device 'mps' was asked for but Apple MPS is not available here; use --device cpu or auto")
    return torch.device(text)


def resolve_dtype(name: str | torch.dtype | None) -> torch.dtype | None:
    """``"auto"``/None → None (keep the stored dtype); ``"bf16"`` → ``torch.bfloat16`` ..."""
    import torch

    if name is None or isinstance(name, torch.dtype):
        return name
    text = name.strip().lower().removeprefix("torch.")
    if text == "auto":
        return None
    if text not in DTYPE_NAMES:
        raise CustomGPTError(f"unknown dtype {name!r}; choose auto, float32, bfloat16 or float16")
    return getattr(torch, DTYPE_NAMES[text])
