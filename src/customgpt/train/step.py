"""One optimizer step from several micro-batches: exact accumulation, clipping, stepping.

Accumulation is exact (docs/training.md, "Batch sizes, accumulation and exactness"): every
micro-batch contributes ``sum of its token losses / N``, ``N`` being the number of
(non-ignored) targets in the whole global batch, over all micro-batches and processes.
:func:`micro_loss_weight` gives the factor for a micro-batch's mean loss; it includes
``world_size`` because DDP *averages* gradients over processes. :mod:`customgpt.train.pretrain`
shows the use.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import Tensor

from customgpt.constants import IGNORE_INDEX
from customgpt.errors import CustomGPTError
from customgpt.train.distributed import all_reduce_sum


def count_targets(targets: Tensor, ignore_index: int = IGNORE_INDEX) -> int:
    """Number of targets that count towards the loss."""
    return int((targets != ignore_index).sum().item())


def global_count(local: int | float, device: torch.device | str = "cpu") -> int:
    """Sum a per-process count over all processes (the count itself with one process)."""
    return int(all_reduce_sum(torch.tensor([float(local)], dtype=torch.float64, device=device)).item())


def micro_loss_weight(n_micro: int, n_global: int, world_size: int = 1) -> float:
    """Factor for a micro-batch's *mean* loss so the accumulated gradient is that of
    ``sum of all token losses / n_global`` (the global batch's mean)."""
    return n_micro * world_size / n_global if n_global > 0 else 0.0


def global_mean(local_sum: float, n_global: int, device: torch.device | str = "cpu") -> float:
    """The global batch's mean loss from each process's sum of token losses."""
    total = all_reduce_sum(torch.tensor([float(local_sum)], dtype=torch.float64, device=device)).item()
    return total / n_global if n_global > 0 else math.nan


def optimizer_step(
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None,
    parameters: Iterable[Tensor],
    max_norm: float | None = 1.0,
) -> tuple[float, bool]:
    """Unscale (fp16), clip the global L2 norm of the gradients to ``max_norm`` (None or 0:
    no clipping), step, update the scaler and zero the gradients.

    Returns (gradient norm before clipping, whether the step was applied); under DDP the
    gradients are already averaged, so the norm is the global one. A step is skipped when
    the gradient norm is not finite: the fp16 scaler then lowers its scale (normal at the
    start of fp16 training); in fp32/bf16 a skipped step means the run is diverging.
    """
    params = [p for p in parameters if p.grad is not None]
    if scaler is not None and scaler.is_enabled():
        scaler.unscale_(optimizer)
    norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm or math.inf)) if params else 0.0
    applied = math.isfinite(norm)
    if scaler is not None and scaler.is_enabled():
        scaler.step(optimizer)  # skips by itself on inf/nan gradients
        scaler.update()
    elif applied:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return norm, applied


class NonFiniteLossError(CustomGPTError):
    """The training loss became nan or infinite: the run stops without saving the bad weights."""


def check_finite_loss(loss: float, step: int, *, lr: float, checkpoint: str | None) -> None:
    """Stop a run whose training loss is no longer a finite number.

    Call it with the step's loss (the same value on every process) before anything of the
    step is saved, so the last checkpoint on disk stays the last good one.

    Args:
        loss: the step's mean training loss.
        step: the optimizer step that produced it (1-based).
        lr: the learning rate of that step, named in the message.
        checkpoint: the last good checkpoint of the run, or None when there is none yet.

    Raises:
        NonFiniteLossError: ``loss`` is nan or infinite; the message says where the last good
            checkpoint is and what to change.
    """
    if math.isfinite(loss):
        return
    kept = (f"the last good checkpoint is {checkpoint} (continue from it with --resume once changed)"
            if checkpoint else "no checkpoint was written yet")
    raise NonFiniteLossError(
        f"the training loss became {loss} at step {step} (learning rate {lr:.3g}); the run stopped "
        f"and saved nothing of this step: {kept}; lower train.lr or set train.grad_clip"
    )
