"""The device and dtype resolver (customgpt.device)."""

from __future__ import annotations

import pytest
import torch

from customgpt.device import resolve_device, resolve_dtype
from customgpt.errors import CustomGPTError


def test_resolve_device_and_dtype(monkeypatch):
    assert resolve_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(CustomGPTError, match="CUDA is not available"):
        resolve_device("cuda")
    with pytest.raises(CustomGPTError, match="MPS is not available"):
        resolve_device("mps")
    with pytest.raises(CustomGPTError, match="unknown device"):
        resolve_device("tpu")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("mps")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_dtype("auto") is None and resolve_dtype("bf16") is torch.bfloat16
    assert resolve_dtype("fp32") is torch.float32
    with pytest.raises(CustomGPTError, match="unknown dtype"):
        resolve_dtype("int3")
