"""Learning-rate schedules as pure functions of the step.

Linear warmup from ``initial_lr`` to ``peak_lr`` over ``warmup_steps``, then one of

* ``cosine``: ``min_lr + (peak_lr - min_lr) * 0.5 * (1 + cos(pi * progress))``
* ``linear``: ``peak_lr + (min_lr - peak_lr) * progress``
* ``constant``: ``peak_lr``

where ``progress = (step - warmup_steps) / (total_steps - warmup_steps)`` runs 0 → 1.
Step ``s`` is the LR used for the update that moves the step count from s to s + 1, so
step 0 uses ``initial_lr`` (the warmup formula of the book this project follows).

Being a pure function of the step, the schedule needs no state in a checkpoint: resuming
at step ``s`` gives the same LR as the uninterrupted run.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial

from customgpt.train.config import TrainConfig


def lr_at(
    step: int,
    *,
    peak_lr: float,
    total_steps: int,
    warmup_steps: int = 0,
    initial_lr: float = 0.0,
    min_lr: float = 0.0,
    kind: str = "cosine",
) -> float:
    """The learning rate at optimizer step ``step`` (0-based)."""
    if step < warmup_steps:
        return initial_lr + (peak_lr - initial_lr) * step / warmup_steps
    if kind == "constant":
        return peak_lr
    decay_steps = max(total_steps - warmup_steps, 1)
    progress = min(max((step - warmup_steps) / decay_steps, 0.0), 1.0)
    if kind == "cosine":
        return min_lr + (peak_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))
    if kind == "linear":
        return peak_lr + (min_lr - peak_lr) * progress
    raise ValueError(f"unknown schedule {kind!r} (cosine, linear, constant)")


def build_schedule(cfg: TrainConfig, total_steps: int) -> Callable[[int], float]:
    """The schedule described by ``cfg`` for a run of ``total_steps`` optimizer steps: ``step -> lr``."""
    warmup = cfg.warmup_steps if cfg.warmup_steps is not None else int((cfg.warmup_fraction or 0) * total_steps)
    return partial(lr_at, peak_lr=cfg.lr, total_steps=total_steps, warmup_steps=warmup,
                   initial_lr=cfg.initial_lr, min_lr=cfg.min_lr, kind=cfg.schedule)
