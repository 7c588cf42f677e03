"""The LM losses: the fused chunked path against the reference (full logits + F.cross_entropy),
hand-worked values, ignored targets, reductions, dtypes, autocast, no_grad and bad input."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from helpers import tiny_model

from customgpt.constants import IGNORE_INDEX
from customgpt.losses import (
    causal_lm_loss,
    default_chunk_size,
    fused_linear_cross_entropy,
    lm_loss_from_logits,
    model_lm_loss,
)

V, C = 211, 24  # a vocabulary that no chunk size below divides


def _inputs(b: int = 3, t: int = 13, seed: int = 0, ignore: bool = True, scale: float = 1.0):
    g = torch.Generator().manual_seed(seed)
    hidden = (scale * torch.randn(b, t, C, generator=g)).requires_grad_()
    weight = (0.5 * torch.randn(V, C, generator=g)).requires_grad_()
    targets = torch.randint(0, V, (b, t), generator=g)
    if ignore:
        targets[0, :4] = IGNORE_INDEX  # a prompt
        targets[1, -3:] = IGNORE_INDEX  # padding
        targets[2, 5] = IGNORE_INDEX  # a hole
    return hidden, weight, targets


def _loss_and_grads(fn, hidden, weight, targets, **kwargs):
    hidden.grad = weight.grad = None
    loss = fn(hidden, weight, targets, **kwargs)
    loss.backward()
    return loss.detach(), hidden.grad.clone(), weight.grad.clone()


def _reference(hidden, weight, targets, **kwargs):
    return causal_lm_loss(hidden, weight, targets, fused=False, **kwargs)


def _fused(hidden, weight, targets, **kwargs):
    # forced: these test shapes are small enough for causal_lm_loss to pick the reference
    return causal_lm_loss(hidden, weight, targets, fused=True, **kwargs)


def _assert_same(got, want, rtol=1e-5, atol=1e-6):
    """Loss and gradients equal within ``rtol`` elementwise, plus ``atol`` times the largest
    entry of the tensor: summing in another order moves near-zero entries by a few ulp of
    the tensor's scale, not of their own."""
    for name, g, w in zip(("loss", "grad hidden", "grad weight"), got, want):
        torch.testing.assert_close(g, w, rtol=rtol, atol=atol * float(w.abs().max()), msg=name)


# --------------------------------------------------------------------------- exact values


def test_reference_path_is_plain_cross_entropy():
    hidden, weight, targets = _inputs()
    logits = hidden @ weight.t()
    want = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX)
    torch.testing.assert_close(lm_loss_from_logits(logits, targets), want, rtol=1e-6, atol=0)
    torch.testing.assert_close(_reference(hidden, weight, targets), want, rtol=1e-6, atol=0)


@pytest.mark.parametrize("fused", [True, False])
def test_hand_worked_loss_and_gradients(fused):
    """logits [ln 2, 0, 0] for target 0: p = [1/2, 1/4, 1/4], loss ln 2,
    d loss/d logits = p - onehot = [-1/2, 1/4, 1/4]; a second row is ignored."""
    ln2 = math.log(2.0)
    weight = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]], requires_grad=True)
    hidden = torch.tensor([[[ln2, 0.0], [5.0, -3.0]]], requires_grad=True)
    targets = torch.tensor([[0, IGNORE_INDEX]])
    loss = causal_lm_loss(hidden, weight, targets, fused=fused)
    loss.backward()
    assert loss.item() == pytest.approx(ln2, rel=1e-6)
    dlogits = torch.tensor([-0.5, 0.25, 0.25])
    torch.testing.assert_close(hidden.grad, torch.tensor([[[-0.5, 0.25], [0.0, 0.0]]]))
    torch.testing.assert_close(weight.grad, dlogits[:, None] * torch.tensor([[ln2, 0.0]]))


# --------------------------------------------------------------------------- fused == reference


@pytest.mark.parametrize("chunk_size", [1, 5, 16, 32, 1000])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_fused_matches_reference(chunk_size, reduction):
    """39 rows (5 ignored): chunk sizes that divide nothing, one row, and more than all rows."""
    hidden, weight, targets = _inputs()
    want = _loss_and_grads(_reference, hidden, weight, targets, reduction=reduction)
    got = _loss_and_grads(_fused, hidden, weight, targets, reduction=reduction, chunk_size=chunk_size)
    _assert_same(got, want)
    # ignored positions contribute nothing, not even a gradient
    assert torch.count_nonzero(got[1][targets == IGNORE_INDEX]) == 0


def test_fused_matches_reference_without_ignored_targets_and_default_chunks():
    hidden, weight, targets = _inputs(b=2, t=40, seed=3, ignore=False)
    _assert_same(
        _loss_and_grads(fused_linear_cross_entropy, hidden, weight, targets),
        _loss_and_grads(_reference, hidden, weight, targets),
    )


def test_large_logits_stay_finite_and_exact():
    """Logits in the hundreds: the log-sum-exp must subtract the maximum first."""
    hidden, weight, targets = _inputs(seed=5, scale=60.0)
    got = _loss_and_grads(_fused, hidden, weight, targets, chunk_size=7)
    want = _loss_and_grads(_reference, hidden, weight, targets)
    assert got[0].item() > 50  # really large
    assert all(torch.isfinite(t).all() for t in got)
    _assert_same(got, want)


def test_sum_is_mean_times_count():
    hidden, weight, targets = _inputs()
    n = int((targets != IGNORE_INDEX).sum())
    mean = _fused(hidden, weight, targets)
    total = _fused(hidden, weight, targets, reduction="sum")
    torch.testing.assert_close(total, mean * n, rtol=1e-6, atol=0)


def test_backward_scales_by_the_incoming_gradient():
    """loss * 3.5 (what gradient accumulation does), and a loss used twice in one graph."""
    hidden, weight, targets = _inputs()
    plain = _loss_and_grads(_fused, hidden, weight, targets)
    scaled = _loss_and_grads(lambda *a: _fused(*a) * 3.5, hidden, weight, targets)
    twice = _loss_and_grads(lambda *a: (lambda loss: loss + 2 * loss)(_fused(*a)), hidden, weight, targets)
    for factor, got in ((3.5, scaled), (3.0, twice)):
        torch.testing.assert_close(got[1], plain[1] * factor, rtol=1e-6, atol=1e-9)
        torch.testing.assert_close(got[2], plain[2] * factor, rtol=1e-6, atol=1e-9)


def test_gradcheck_fp64():
    """Finite differences in fp64 agree with the gradients computed in the forward pass."""
    g = torch.Generator().manual_seed(7)
    hidden = torch.randn(7, 5, dtype=torch.float64, generator=g, requires_grad=True)
    weight = torch.randn(11, 5, dtype=torch.float64, generator=g, requires_grad=True)
    targets = torch.tensor([3, IGNORE_INDEX, 0, 10, 10, 2, IGNORE_INDEX])
    for reduction in ("mean", "sum"):
        def fn(h, w, reduction=reduction):
            return fused_linear_cross_entropy(h, w, targets, reduction=reduction, chunk_size=2)

        assert fn(hidden, weight).dtype == torch.float64
        assert torch.autograd.gradcheck(fn, (hidden, weight))


def test_second_backward_and_in_place_changes_behave_like_autograd():
    hidden, weight, targets = _inputs()
    once = _loss_and_grads(_fused, hidden, weight, targets)
    hidden.grad = weight.grad = None
    loss = _fused(hidden, weight, targets, chunk_size=8)
    loss.backward(retain_graph=True)  # the gradients computed in forward are handed over
    (2 * loss).backward()  # computed again from the saved inputs
    _assert_same((loss.detach(), hidden.grad, weight.grad), (once[0], 3 * once[1], 3 * once[2]))
    loss = _fused(hidden, weight, targets)
    with torch.no_grad():
        weight.add_(1.0)  # e.g. an optimizer step between forward and backward
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


def test_only_the_gradients_asked_for():
    hidden, weight, targets = _inputs()
    want = _loss_and_grads(_reference, hidden, weight, targets)
    frozen = weight.detach()  # e.g. LoRA: the head is frozen
    hidden.grad = None
    _fused(hidden, frozen, targets, chunk_size=8).backward()
    torch.testing.assert_close(hidden.grad, want[1], rtol=1e-5, atol=1e-7)
    weight.grad = None
    _fused(hidden.detach(), weight, targets, chunk_size=8).backward()
    torch.testing.assert_close(weight.grad, want[2], rtol=1e-5, atol=1e-7)


# --------------------------------------------------------------------------- all targets ignored


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_all_ignored_is_zero_with_zero_gradients(fused, reduction):
    """Not NaN: a micro-batch of padding must not poison the accumulated gradient."""
    hidden, weight, _ = _inputs()
    targets = torch.full(hidden.shape[:-1], IGNORE_INDEX)
    loss = causal_lm_loss(hidden, weight, targets, fused=fused, reduction=reduction)
    (loss * 0.25).backward()
    assert loss.item() == 0.0
    assert torch.equal(hidden.grad, torch.zeros_like(hidden))
    assert torch.equal(weight.grad, torch.zeros_like(weight))
    assert lm_loss_from_logits(torch.randn(2, 3, V), torch.full((2, 3), IGNORE_INDEX)).item() == 0.0


# --------------------------------------------------------------------------- the model, tied weights


def test_model_loss_with_tied_embedding_matches_reference():
    """GPT-2 ties the head to wte: the head's gradient and the embedding's must add up."""
    model = tiny_model(seed=2).train()
    assert model.lm_head.weight is model.transformer.wte.weight
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(0, model.config.vocab_size, (3, 17), generator=g)
    targets = torch.cat([idx[:, 1:], torch.full((3, 1), IGNORE_INDEX)], dim=1)
    targets[1, :6] = IGNORE_INDEX

    def grads(fused: bool):
        model.zero_grad(set_to_none=True)
        loss = causal_lm_loss(model.forward_hidden(idx), model.lm_head.weight, targets, fused=fused, chunk_size=10)
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    loss_f, got = grads(True)
    loss_r, want = grads(False)
    torch.testing.assert_close(loss_f, loss_r, rtol=1e-5, atol=0)
    assert set(got) == set(want)
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-7, msg=name)
    # model_lm_loss runs the same computation
    torch.testing.assert_close(model_lm_loss(model, idx, targets).detach(), loss_r, rtol=1e-5, atol=0)


# --------------------------------------------------------------------------- eval, dtypes, autocast


def test_no_grad_and_inference_mode_compute_the_loss_only():
    hidden, weight, targets = _inputs()
    want = _reference(hidden, weight, targets).detach()
    with torch.no_grad():
        got = _fused(hidden, weight, targets, chunk_size=6)
    assert got.grad_fn is None and not got.requires_grad
    torch.testing.assert_close(got, want, rtol=1e-6, atol=0)
    with torch.inference_mode():
        torch.testing.assert_close(_fused(hidden, weight, targets), want, rtol=1e-6, atol=0)
    # tensors that need no gradient: the loss-only path too
    torch.testing.assert_close(_fused(hidden.detach(), weight.detach(), targets), want, rtol=1e-6, atol=0)


def test_bf16_inputs_loss_in_fp32():
    hidden, weight, targets = _inputs(seed=4)
    h16 = hidden.detach().bfloat16().requires_grad_()
    w16 = weight.detach().bfloat16().requires_grad_()
    got = _loss_and_grads(_fused, h16, w16, targets, chunk_size=8)
    want = _loss_and_grads(_reference, h16, w16, targets)
    assert got[0].dtype == torch.float32
    assert got[1].dtype == got[2].dtype == torch.bfloat16
    _assert_same(got, want, rtol=2e-2, atol=2e-2)
    # and close to the fp32 loss of the same (rounded) numbers
    fp32 = _reference(h16.detach().float(), w16.detach().float(), targets)
    torch.testing.assert_close(got[0], fp32.detach(), rtol=1e-2, atol=0)


@pytest.mark.parametrize("fused", [True, False])
def test_autocast_bf16(fused):
    """Under CPU autocast the matmul runs in bf16, the loss in fp32, and fp32 parameters
    receive fp32 gradients; fused and reference agree within bf16 precision."""
    hidden, weight, targets = _inputs(seed=6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = causal_lm_loss(hidden, weight, targets, fused=fused, chunk_size=9)
    assert loss.dtype == torch.float32
    loss.backward()
    assert hidden.grad.dtype == weight.grad.dtype == torch.float32
    want = _loss_and_grads(_reference, hidden, weight, targets)  # fp32, no autocast
    torch.testing.assert_close(loss.detach(), want[0], rtol=2e-2, atol=0)
    torch.testing.assert_close(hidden.grad, want[1], rtol=5e-2, atol=5e-3)
    torch.testing.assert_close(weight.grad, want[2], rtol=5e-2, atol=5e-3)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        eval_loss = causal_lm_loss(hidden, weight, targets, fused=fused)
    torch.testing.assert_close(eval_loss, loss.detach(), rtol=1e-3, atol=0)


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("fused", [True, False])
def test_bad_input_is_a_clear_error(fused):
    hidden, weight, targets = _inputs()
    bad = targets.clone()
    bad[1, 2] = V  # one past the vocabulary
    with pytest.raises(ValueError, match=rf"target {V} at flat position 15 is outside the vocabulary \[0, {V}\)"):
        causal_lm_loss(hidden, weight, bad, fused=fused)
    bad[1, 2] = -7
    with pytest.raises(ValueError, match="target -7 at flat position 15"):
        causal_lm_loss(hidden, weight, bad, fused=fused)
    with pytest.raises(ValueError, match="reduction must be one of mean, sum"):
        causal_lm_loss(hidden, weight, targets, fused=fused, reduction="none")
    with pytest.raises(ValueError, match=r"targets must have shape \(3, 13\)"):
        causal_lm_loss(hidden, weight, targets[:, :-1], fused=fused)


def test_bad_input_to_the_fused_path():
    hidden, weight, targets = _inputs()
    with pytest.raises(ValueError, match="chunk_size must be a positive"):
        _fused(hidden, weight, targets, chunk_size=0)
    with pytest.raises(ValueError, match=r"weight must have shape \(vocab, 24\)"):
        _fused(hidden, weight[:, :-1], targets)
    with pytest.raises(ValueError, match="integer token ids"):
        _fused(hidden, weight, targets.float())


def test_default_path_depends_on_the_size_of_the_logits():
    """Tiny logits: the reference kernels are as fast; GPT-2-sized ones: the fused path."""
    hidden, weight, targets = _inputs()
    assert "Fused" not in causal_lm_loss(hidden, weight, targets).grad_fn.name()
    assert "Fused" in _fused(hidden, weight, targets).grad_fn.name()
    big_vocab = torch.randn(50257, C, requires_grad=True)
    big = causal_lm_loss(hidden, big_vocab, targets.clamp_min(0) * 100)  # 39 x 50,257 fp32 logits: 7.8 MB
    assert "Fused" in big.grad_fn.name()


def test_default_chunk_size():
    assert default_chunk_size(50257) == 512  # about 100 MB of fp32 logits per chunk
    assert default_chunk_size(10**9) == 16  # never fewer than 16 rows
    assert default_chunk_size(V) % 16 == 0


# --------------------------------------------------------------------------- classification


def test_classification_loss_is_pytorch_cross_entropy_with_each_option():
    from customgpt.losses import ClassificationLoss

    logits = torch.tensor([[2.0, 0.0], [0.5, 1.5], [0.0, 0.0]])
    targets = torch.tensor([0, 1, 1])
    torch.testing.assert_close(ClassificationLoss()(logits, targets), F.cross_entropy(logits, targets))
    w = torch.tensor([1.0, 3.0])
    per = F.cross_entropy(logits, targets, reduction="none")
    weighted = ClassificationLoss(w)
    torch.testing.assert_close(weighted(logits, targets), (per * w[targets]).sum() / w[targets].sum())
    torch.testing.assert_close(weighted(logits, targets, reduction="sum"), (per * w[targets]).sum())
    torch.testing.assert_close(weighted.normaliser(targets), torch.tensor(7.0))
    smooth = ClassificationLoss(w, label_smoothing=0.1)
    torch.testing.assert_close(smooth(logits, targets), F.cross_entropy(logits, targets, weight=w, label_smoothing=0.1))
    torch.testing.assert_close(smooth(logits, targets, reduction="sum") / smooth.normaliser(targets),
                               smooth(logits, targets))
    with pytest.raises(ValueError, match="label_smoothing"):
        ClassificationLoss(label_smoothing=1.0)


def test_focal_loss_by_hand():
    from customgpt.losses import FocalLoss

    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    targets = torch.tensor([0, 0])
    p0 = 1 / (1 + math.exp(-2.0))  # softmax probability of class 0, row 1
    p1 = 1 / (1 + math.exp(1.0))  # row 2
    terms = [-(1 - p0) ** 2 * math.log(p0), -(1 - p1) ** 2 * math.log(p1)]
    assert FocalLoss(2.0)(logits, targets).item() == pytest.approx(sum(terms) / 2, rel=1e-6)
    torch.testing.assert_close(FocalLoss(0.0)(logits, targets), F.cross_entropy(logits, targets))  # gamma 0: CE
    w = torch.tensor([2.0, 1.0])  # alpha per class: both rows are class 0, so the weighted mean is unchanged
    assert FocalLoss(2.0, w)(logits, targets).item() == pytest.approx(sum(terms) / 2, rel=1e-6)
    mixed = torch.tensor([0, 1])
    p1_class1 = 1 - p1
    by_hand = (2.0 * terms[0] + 1.0 * -(1 - p1_class1) ** 2 * math.log(p1_class1)) / 3.0
    assert FocalLoss(2.0, w)(logits, mixed).item() == pytest.approx(by_hand, rel=1e-6)
    with pytest.raises(ValueError, match="gamma"):
        FocalLoss(-1.0)


# =========================================================================== preference losses
# Hand-worked values for fixed log-probs, sequence log-probs against a direct per-token
# computation, and parity with TRL's DPOTrainer (sigmoid and IPO) on a tiny GPT-2.

from customgpt.losses import (  # noqa: E402
    PREFERENCE_LOSSES,
    DPOLoss,
    IPOLoss,
    ORPOLoss,
    SimPOLoss,
    model_sequence_logprobs,
    preference_metrics,
    sequence_logprobs,
)


def _t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def test_dpo_loss_by_hand():
    # policy chosen -1, rejected -3; reference -2 for both; beta 0.1
    # log-ratios r_c = -1 - (-2) = 1, r_r = -3 - (-2) = -1; z = 0.1 * (1 - (-1)) = 0.2
    # loss = -log sigmoid(0.2) = log(1 + e^-0.2) = log(1.8187307531) = 0.5981388693
    out = DPOLoss(beta=0.1)(_t(-1.0), _t(-3.0), _t(-2.0), _t(-2.0))
    assert out.losses.item() == pytest.approx(0.5981388693, abs=1e-9)
    assert out.chosen_rewards.item() == pytest.approx(0.1)  # beta * r_c
    assert out.rejected_rewards.item() == pytest.approx(-0.1)  # beta * r_r


def test_dpo_label_smoothing_by_hand():
    # eps 0.1: 0.9 * -log sigmoid(0.2) + 0.1 * -log sigmoid(-0.2)
    # -log sigmoid(-0.2) = log(1 + e^0.2) = 0.2 + log(1 + e^-0.2) = 0.7981388693
    # = 0.9 * 0.5981388693 + 0.1 * 0.7981388693 = 0.5383249824 + 0.0798138869 = 0.6181388693
    out = DPOLoss(beta=0.1, label_smoothing=0.1)(_t(-1.0), _t(-3.0), _t(-2.0), _t(-2.0))
    assert out.losses.item() == pytest.approx(0.6181388693, abs=1e-9)


def test_ipo_loss_by_hand():
    # summed log-ratios r_c = 1 over 2 tokens, r_r = -1 over 4 tokens; beta (tau) 0.1
    # h = 1/2 - (-1/4) = 0.75; 1 / (2 * 0.1) = 5; loss = (0.75 - 5)^2 = 18.0625
    out = IPOLoss(beta=0.1)(_t(-1.0), _t(-3.0), _t(-2.0), _t(-2.0), _t(2), _t(4))
    assert out.losses.item() == pytest.approx(18.0625)
    assert (out.chosen_rewards.item(), out.rejected_rewards.item()) == pytest.approx((0.1, -0.1))
    # the same pairs as per-token averages (reduction "mean"): r_c = 0.5, r_r = -0.25 -> same loss
    out = IPOLoss(beta=0.1, reduction="mean")(_t(-0.5), _t(-0.75), _t(-1.0), _t(-0.5))
    assert out.losses.item() == pytest.approx(18.0625)


def test_simpo_loss_by_hand():
    # chosen: sum -2 over 4 tokens -> average -0.5; rejected: sum -6 over 3 tokens -> -2
    # beta 2, gamma 1: 2 * (-0.5 - (-2)) - 1 = 2; loss = log(1 + e^-2) = 0.1269280110
    out = SimPOLoss(beta=2.0, gamma=1.0)(_t(-2.0), _t(-6.0), chosen_lengths=_t(4), rejected_lengths=_t(3))
    assert out.losses.item() == pytest.approx(0.1269280110, abs=1e-9)
    assert (out.chosen_rewards.item(), out.rejected_rewards.item()) == pytest.approx((-1.0, -4.0))  # beta * average


def test_orpo_loss_by_hand():
    # average log-probs: chosen log 0.5, rejected log 0.25 (reduction "mean")
    # odds(chosen) = 0.5 / 0.5 = 1 -> log 0; odds(rejected) = 0.25 / 0.75 = 1/3 -> -log 3
    # log sigmoid(log 3) = log(3/4) = -0.2876820725
    # loss = NLL + lam * 0.2876820725 = 0.6931471806 + 0.0287682072 = 0.7219153878
    out = ORPOLoss(lam=0.1, reduction="mean")(_t(math.log(0.5)), _t(math.log(0.25)))
    assert out.losses.item() == pytest.approx(0.7219153878, abs=1e-9)
    assert out.chosen_rewards.item() == pytest.approx(0.1 * math.log(0.5))
    assert out.rejected_rewards.item() == pytest.approx(0.1 * math.log(0.25))


def test_preference_losses_need_what_they_need():
    with pytest.raises(ValueError, match="reference"):
        DPOLoss()(_t(-1.0), _t(-2.0))
    with pytest.raises(ValueError, match="lengths"):
        SimPOLoss()(_t(-1.0), _t(-2.0))
    with pytest.raises(ValueError, match="reduction"):
        DPOLoss(reduction="avg")
    assert {name for name, cls in PREFERENCE_LOSSES.items() if not cls.needs_reference} == {"simpo", "orpo"}


def test_preference_metrics_names_and_values():
    out = DPOLoss(beta=0.5)(_t(-1.0, -4.0), _t(-3.0, -1.0), _t(-2.0, -2.0), _t(-2.0, -2.0))
    m = preference_metrics(out, _t(-1.0, -4.0), _t(-3.0, -1.0))
    # rewards chosen 0.5*(1, -2) = (0.5, -1); rejected 0.5*(-1, 1) = (-0.5, 0.5)
    assert m["rewards/chosen"] == pytest.approx(-0.25) and m["rewards/rejected"] == pytest.approx(0.0)
    assert m["rewards/margins"] == pytest.approx(((0.5 + 0.5) + (-1 - 0.5)) / 2)
    assert m["rewards/accuracies"] == 0.5
    assert m["logps/chosen"] == -2.5 and m["logps/rejected"] == -2.0
    assert set(m) == {"loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies",
                      "logps/chosen", "logps/rejected"}


def _right_padded_batch():
    """Three rows of 4 + 3, 2 + 5 and 3 + 1 prompt + response tokens, right-padded to 9
    with id 7. Returns input ids, next-token targets and the response mask over targets."""
    rows = [([5, 9, 11, 3], [40, 41, 42]), ([8, 2], [60, 61, 62, 63, 64]), ([1, 2, 3], [99])]
    T = max(len(p) + len(r) for p, r in rows)
    ids = torch.full((3, T + 1), 7)
    mask = torch.zeros(3, T + 1, dtype=torch.bool)
    for b, (p, r) in enumerate(rows):
        ids[b, :len(p) + len(r)] = torch.tensor(p + r)
        mask[b, len(p):len(p) + len(r)] = True
    return ids[:, :-1], ids[:, 1:], mask[:, 1:], rows


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_sequence_logprobs_equal_direct_per_token_computation(reduction):
    model = tiny_model(seed=3)
    inputs, targets, mask, rows = _right_padded_batch()
    with torch.no_grad():
        logits = model(inputs)
        got = sequence_logprobs(logits, targets, mask, reduction=reduction)
        fast = model_sequence_logprobs(model, inputs, targets, mask, reduction=reduction)
        for b, (p, r) in enumerate(rows):
            alone = model(torch.tensor([p + r]))[0]  # the row without padding
            # the response token r[k] sits at position len(p) + k and is predicted at len(p) + k - 1
            terms = [torch.log_softmax(alone[len(p) + k - 1].double(), dim=-1)[tok] for k, tok in enumerate(r)]
            direct = sum(terms) / (len(r) if reduction == "mean" else 1)
            assert got[b].item() == pytest.approx(direct.item(), abs=1e-5)
    torch.testing.assert_close(fast, got, atol=1e-5, rtol=0)


def test_model_sequence_logprobs_gradient_matches_reference():
    model = tiny_model(seed=4)
    inputs, targets, mask, _ = _right_padded_batch()
    sequence_logprobs(model(inputs), targets, mask).sum().backward()
    ref = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model_sequence_logprobs(model, inputs, targets, mask).sum().backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, ref[n], atol=1e-5, rtol=1e-4, msg=n)


PAIRS = [
    {"prompt": "Q: what is 2+2?\nA:", "chosen": " 4, of course.", "rejected": " five"},
    {"prompt": "Say hi.", "chosen": " Hello there! Nice to meet you.", "rejected": " no"},
    {"prompt": "Name a color:", "chosen": " blue", "rejected": " the colour is, well, red I guess"},
]


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo"])
def test_dpo_and_ipo_match_trl(tmp_path, loss_type):
    """TRL's DPOTrainer (in fp32: its configs default to bf16 autocast) evaluates a tiny GPT-2 policy against a different reference on three
    pairs (one batch); our loss modules on our model's sequence log-probs of the same token
    ids give the same loss and rewards/* and logps/* metrics."""
    pytest.importorskip("trl")
    from datasets import Dataset
    from helpers import copy_customgpt_to_hf
    from transformers import GPT2TokenizerFast
    from trl import DPOConfig, DPOTrainer

    from customgpt.tokenizer import save_hf_tokenizer_files

    save_hf_tokenizer_files(tmp_path / "tok")
    tokenizer = GPT2TokenizerFast.from_pretrained(tmp_path / "tok")
    policy = tiny_model(seed=1, vocab_size=50257, n_embd=32, n_head=2)
    reference = tiny_model(seed=2, vocab_size=50257, n_embd=32, n_head=2)
    data = Dataset.from_list(PAIRS)
    args = DPOConfig(output_dir=str(tmp_path / "out"), beta=0.1, loss_type=[loss_type], report_to=[],
                     per_device_eval_batch_size=len(PAIRS), use_cpu=True, bf16=False, disable_dropout=True,
                     logging_strategy="no", save_strategy="no", disable_tqdm=True)
    trainer = DPOTrainer(model=copy_customgpt_to_hf(policy), ref_model=copy_customgpt_to_hf(reference), args=args,
                         train_dataset=data, eval_dataset=data, processing_class=tokenizer)
    theirs = trainer.evaluate()

    # The same token ids TRL trained on (prompt + response + end-of-text), right-padded.
    rows = trainer.eval_dataset
    seqs = {}
    for side in ("chosen", "rejected"):
        full = [r["prompt_ids"] + r[f"{side}_ids"] for r in rows]
        T = max(map(len, full))
        ids = torch.full((len(full), T), tokenizer.eos_token_id)
        mask = torch.zeros(len(full), T, dtype=torch.bool)
        for b, r in enumerate(rows):
            ids[b, :len(full[b])] = torch.tensor(full[b])
            mask[b, len(r["prompt_ids"]):len(full[b])] = True
        seqs[side] = (ids[:, :-1], ids[:, 1:], mask[:, 1:])
    with torch.no_grad():
        logps = {(who, side): model_sequence_logprobs(model, *seqs[side])
                 for who, model in (("policy", policy), ("reference", reference)) for side in seqs}
    lengths = {side: seqs[side][2].sum(-1) for side in seqs}
    loss = DPOLoss(beta=0.1) if loss_type == "sigmoid" else IPOLoss(beta=0.1)
    out = loss(logps["policy", "chosen"], logps["policy", "rejected"], logps["reference", "chosen"],
               logps["reference", "rejected"], lengths["chosen"], lengths["rejected"])
    ours = preference_metrics(out, logps["policy", "chosen"], logps["policy", "rejected"])
    assert 0 < ours["rewards/accuracies"] < 1 and abs(ours["rewards/margins"]) > 1e-3  # not a trivial case
    for key, value in ours.items():
        tol = 1e-5 * max(1.0, abs(value)) if key.startswith("logps/") else 1e-5
        assert theirs[f"eval_{key}"] == pytest.approx(value, abs=tol), key
