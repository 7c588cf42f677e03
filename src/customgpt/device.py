"""Where the math runs: the one resolver of device names (:func:`resolve_device`) and dtype
names (:func:`resolve_dtype`) for the library, the training loops and the command line.
torch is imported inside them, so importing this module stays free (the CLI's ``--help``
imports it)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from customgpt.errors import CustomGPTError

if TYPE_CHECKING:
    import torch

DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")
#: dtype names accepted by the library and the command line → torch attribute names.
DTYPE_NAMES = {
    "float32": "float32", "fp32": "float32",
    "bfloat16": "bfloat16", "bf16": "bfloat16",
    "float16": "float16", "fp16": "float16", "half": "float16",
}


def resolve_device(name: str | torch.device | None = "auto", local_rank: int | None = None) -> torch.device:
    """Turn ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"mps"`` into a usable device.

    ``auto`` picks CUDA, then Apple's MPS, then the CPU. ``local_rank`` (a torchrun process's
    GPU) is the index given to ``auto`` and to a bare ``cuda``.

    Raises:
        CustomGPTError: an unknown name, or an accelerator that is not there (one line, not
            a crash deep inside torch).
    """
    import torch

    if isinstance(name, torch.device):
        return name
    text = (name or "auto").strip().lower()
    if text == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank)
        return torch.device("mps" if torch.backends.mps.is_available() else "cpu")
    kind, _, index = text.partition(":")
    if kind not in DEVICE_CHOICES[1:] or (index and not index.isdigit()):
        raise CustomGPTError(f"unknown device {name!r}; choose one of {', '.join(DEVICE_CHOICES)} or cuda:N")
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise CustomGPTError("device 'cuda' was asked for but CUDA is not available here; use --device cpu or auto")
        if index and int(index) >= torch.cuda.device_count():
            raise CustomGPTError(f"device {text!r} does not exist: {torch.cuda.device_count()} CUDA device(s) found")
        if not index and local_rank is not None:
            return torch.device("cuda", local_rank)
    if kind == "mps" and not torch.backends.mps.is_available():
        raise CustomGPTError("device 'mps' was asked for but Apple MPS is not available here; use --device cpu or auto")
    return torch.device(text)


def resolve_dtype(name: str | torch.dtype | None) -> torch.dtype | None:
    """``"auto"``/None → None (keep the stored dtype); ``"bf16"`` → ``torch.bfloat16`` ...

    Raises:
        CustomGPTError: an unknown dtype name.
    """
    import torch

    if name is None or isinstance(name, torch.dtype):
        return name
    text = name.strip().lower().removeprefix("torch.")
    if text == "auto":
        return None
    if text not in DTYPE_NAMES:
        raise CustomGPTError(f"unknown dtype {name!r}; choose auto, float32, bfloat16 or float16")
    return getattr(torch, DTYPE_NAMES[text])
