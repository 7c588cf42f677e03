"""One optimizer step: exact token-weighted accumulation, clipping, stepping, skipping a
non-finite step, and stopping a run whose loss is no longer finite."""

from __future__ import annotations

import math

import pytest
import torch

from customgpt.config import GPTConfig
from customgpt.constants import IGNORE_INDEX
from customgpt.errors import CustomGPTError
from customgpt.losses import causal_lm_loss
from customgpt.model import GPT
from customgpt.train.step import (
    NonFiniteLossError,
    check_finite_loss,
    count_targets,
    global_count,
    global_mean,
    micro_loss_weight,
    optimizer_step,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


TINY = GPTConfig(vocab_size=97, context_length=16, n_embd=16, n_layer=2, n_head=2)


def _model(seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(TINY)


# --------------------------------------------------------------------------- accumulation


def _grads(model: GPT) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters()}


def test_token_weighted_accumulation_equals_the_big_batch():
    """Micro-batches with different numbers of real targets still give the big batch's gradient."""
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 97, (6, 12), generator=g)
    y = torch.randint(0, 97, (6, 12), generator=g)
    y[0, :10] = IGNORE_INDEX  # micro-batch 0 has far fewer targets than the others
    y[3, 5:] = IGNORE_INDEX

    big = _model()
    causal_lm_loss(big.forward_hidden(x), big.lm_head.weight, y).backward()

    acc = _model()
    micro = [(x[i:i + 2], y[i:i + 2]) for i in range(0, 6, 2)]
    n_global = sum(count_targets(t) for _, t in micro)
    for xb, yb in micro:
        loss = causal_lm_loss(acc.forward_hidden(xb), acc.lm_head.weight, yb)
        (loss * micro_loss_weight(count_targets(yb), n_global)).backward()
    for name, grad in _grads(big).items():
        torch.testing.assert_close(_grads(acc)[name], grad, rtol=1e-5, atol=1e-7, msg=name)

    # the naive average of micro-batch means is NOT the big batch's gradient here
    naive = _model()
    for xb, yb in micro:
        (causal_lm_loss(naive.forward_hidden(xb), naive.lm_head.weight, yb) / 3).backward()
    wte = "transformer.wte.weight"
    assert not torch.allclose(_grads(naive)[wte], _grads(big)[wte], rtol=1e-3, atol=1e-6)


def test_micro_loss_weight_with_processes():
    # DDP averages gradients over processes, so each process scales by world_size
    assert micro_loss_weight(10, 40, world_size=2) == pytest.approx(0.5)
    assert micro_loss_weight(10, 40) == pytest.approx(0.25)


def test_counts_and_means_in_one_process():
    targets = torch.tensor([[1, IGNORE_INDEX, 3], [IGNORE_INDEX, IGNORE_INDEX, 0]])
    assert count_targets(targets) == 3
    assert count_targets(targets, ignore_index=0) == 5
    assert global_count(7) == 7 and isinstance(global_count(7.0), int)
    assert global_mean(6.0, 4) == pytest.approx(1.5)
    assert math.isnan(global_mean(0.0, 0))
    assert micro_loss_weight(5, 0) == 0.0  # a global batch without targets adds nothing


# --------------------------------------------------------------------------- clipping and stepping


def _params_with_grads(seed: int = 0, scale: float = 10.0) -> list[torch.nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    params = [torch.nn.Parameter(torch.randn(s, generator=g)) for s in [(5, 7), (7,), (3, 2, 2)]]
    for p in params:
        p.grad = torch.randn(p.shape, generator=g) * scale
    return params


def _total_norm(params) -> float:
    return math.sqrt(sum(float(p.grad.double().pow(2).sum()) for p in params))


@pytest.mark.parametrize("max_norm", [None, 0.0])
def test_no_clipping_steps_with_the_whole_gradient(max_norm):
    params = _params_with_grads()
    grads = [p.grad.clone() for p in params]
    start = [p.detach().clone() for p in params]
    before = _total_norm(params)
    norm, applied = optimizer_step(torch.optim.SGD(params, lr=1.0), None, params, max_norm)
    assert applied and norm == pytest.approx(before, rel=1e-5)
    for p, s, g in zip(params, start, grads):
        torch.testing.assert_close(s - p.detach(), g)  # SGD lr 1: the step is the gradient itself


def test_optimizer_step_clips_steps_and_skips_non_finite():
    params = _params_with_grads()
    opt = torch.optim.SGD(params, lr=1.0)
    start = [p.detach().clone() for p in params]
    before = _total_norm(params)
    norm, applied = optimizer_step(opt, None, params, max_norm=0.5)
    assert applied and norm == pytest.approx(before, rel=1e-5)  # the norm before clipping
    moved = math.sqrt(sum(float((p.detach() - s).pow(2).sum()) for p, s in zip(params, start)))
    assert moved == pytest.approx(0.5, rel=1e-5)  # SGD lr 1: the step is the clipped gradient
    assert all(p.grad is None for p in params)  # zeroed for the next step

    params[0].grad = torch.full_like(params[0], float("nan"))
    before = [p.detach().clone() for p in params]
    norm, applied = optimizer_step(opt, None, params, max_norm=1.0)
    assert not applied and math.isnan(norm)
    assert all(torch.equal(p.detach(), b) for p, b in zip(params, before))


# --------------------------------------------------------------------------- a diverging run


def test_finite_loss_passes_and_a_non_finite_one_stops_the_run_naming_the_checkpoint():
    check_finite_loss(2.5, 10, lr=1e-3, checkpoint=None)
    with pytest.raises(NonFiniteLossError) as info:
        check_finite_loss(math.nan, 12, lr=3e-4, checkpoint="runs/x/checkpoints/last")
    assert isinstance(info.value, CustomGPTError)
    message = str(info.value)
    assert "became nan at step 12 (learning rate 0.0003)" in message
    assert "runs/x/checkpoints/last" in message and "--resume" in message and "train.grad_clip" in message
    with pytest.raises(NonFiniteLossError, match=r"became inf at step 1 .*no checkpoint was written yet"):
        check_finite_loss(math.inf, 1, lr=1e-3, checkpoint=None)
