"""The runtime: device and precision resolution, autocast, the fp16 scaler, seeding."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from customgpt.device import resolve_device
from customgpt.errors import ConfigError, CustomGPTError
from customgpt.train.config import RuntimeConfig
from customgpt.train.runtime import Runtime, resolve_precision, seed_everything, setup_runtime


def test_runtime_on_cpu():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_precision("auto", torch.device("cpu")) == torch.float32
    assert resolve_precision("bf16", torch.device("cpu")) == torch.bfloat16
    with pytest.raises(ConfigError, match="fp16 is not supported on the CPU"):
        resolve_precision("fp16", torch.device("cpu"))
    rt = setup_runtime(RuntimeConfig(device="cpu"), distributed=False)
    assert rt.device.type == "cpu" and rt.dtype == torch.float32 and not rt.grad_scaler().is_enabled()
    if not torch.cuda.is_available():
        with pytest.raises(CustomGPTError, match="CUDA is not available"):
            resolve_device("cuda")
        assert resolve_device("auto").type in ("cpu", "mps")


def test_bf16_runtime_autocasts_matmuls_and_needs_no_scaler():
    rt = Runtime(device=torch.device("cpu"), dtype=torch.bfloat16)
    assert not rt.grad_scaler().is_enabled()
    a = torch.randn(4, 4)
    with rt.autocast():
        assert (a @ a).dtype == torch.bfloat16
    with Runtime(device=torch.device("cpu")).autocast():
        assert (a @ a).dtype == torch.float32
    model = rt.prepare_model(torch.nn.Linear(4, 2))
    assert isinstance(model, torch.nn.Linear) and model.weight.dtype == torch.float32  # weights stay fp32


def test_threads_setting_is_applied():
    before = torch.get_num_threads()
    try:
        setup_runtime(RuntimeConfig(device="cpu", threads=1), distributed=False)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_seed_everything_repeats_python_numpy_and_torch():
    def draw():
        return random.random(), float(np.random.rand()), float(torch.rand(()))

    seed_everything(123)
    first = draw()
    seed_everything(123)
    assert draw() == first
    seed_everything(124)
    assert draw() != first
    seed_everything(2**63 - 1)  # NumPy takes only 32 bits: still accepted
