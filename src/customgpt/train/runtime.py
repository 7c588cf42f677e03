"""Device, precision, compilation and seeding: where and how the math runs.

* Device ``auto`` picks CUDA, then Apple's MPS, then the CPU. Nothing hard-codes ``cuda``.
* Precision ``auto`` is bf16 autocast on CUDA GPUs that support it and fp32 elsewhere
  (CPU autocast is slower than fp32 on most CPUs). fp16 autocast needs a GradScaler
  (fp16's small range would underflow gradients); it is a CUDA feature, so asking for it
  on the CPU is an error rather than a silent fallback.
* Parameters stay fp32 in every mode: autocast runs matmuls in low precision and keeps
  the optimizer's master weights exact.
"""

from __future__ import annotations

import contextlib
import random
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from customgpt.device import resolve_device
from customgpt.errors import ConfigError
from customgpt.train.config import RuntimeConfig
from customgpt.train.distributed import DistInfo, env_dist_info, init_distributed

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_precision(precision: str, device: torch.device) -> torch.dtype:
    """The autocast dtype for ``precision`` on ``device`` (``torch.float32``: no autocast)."""
    if precision == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    if precision == "fp16" and device.type == "cpu":
        raise ConfigError("runtime.precision: fp16 is not supported on the CPU; use fp32 or bf16")
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError("runtime.precision: this GPU does not support bf16; use fp16 or fp32")
    return _DTYPES[precision]


@dataclass
class Runtime:
    """The resolved device and precision of a run, plus its process's :class:`DistInfo`."""

    device: torch.device
    dtype: torch.dtype = torch.float32
    dist: DistInfo = field(default_factory=DistInfo)
    compile: bool = False

    def autocast(self) -> contextlib.AbstractContextManager:
        """Autocast to the run's dtype for the forward pass and loss (nothing in fp32)."""
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def grad_scaler(self) -> torch.amp.GradScaler:
        """A GradScaler, enabled only for fp16 (bf16 has fp32's range and needs none)."""
        return torch.amp.GradScaler(self.device.type, enabled=self.dtype == torch.float16)

    def prepare_model(self, model: nn.Module) -> nn.Module:
        """Move to the device and optionally ``torch.compile`` (the plain module stays reachable
        as ``._orig_mod``)."""
        model = model.to(self.device)
        if self.compile:
            model = torch.compile(model)
        return model


def setup_runtime(cfg: RuntimeConfig, *, distributed: bool = True) -> Runtime:
    """Resolve ``cfg`` for this process.

    Under torchrun (``distributed=True`` and ``WORLD_SIZE`` > 1) this also joins the process
    group (:func:`~customgpt.train.distributed.init_distributed`), and each process takes
    GPU ``LOCAL_RANK``. Call :func:`customgpt.train.distributed.cleanup` at the end.
    """
    info = env_dist_info() if distributed else DistInfo()
    if cfg.threads is not None:
        # On a busy machine fewer threads than cores avoids threads waiting on each other.
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device, info.local_rank)
    dtype = resolve_precision(cfg.precision, device)  # config errors before joining the group
    init_distributed(info, device.type)
    return Runtime(device=device, dtype=dtype, dist=info, compile=cfg.compile)


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and PyTorch's (all devices') generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device
