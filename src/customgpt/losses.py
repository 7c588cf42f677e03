"""Losses as standalone functions and modules: hidden states or log-probs in, losses out.

The language-model loss has two implementations with the same results:

* the **reference** path, :func:`lm_loss_from_logits` on ``hidden @ weight.T``: the full
  (N, V) logits are built, then ``F.cross_entropy``. Simple, and the one to read first.
* the **fused** path, :func:`fused_linear_cross_entropy` (what :func:`causal_lm_loss` runs by
  default): chunks of at most 512 rows share one logits buffer; each chunk's loss and, when
  wanted, its gradients w.r.t. the hidden states and the weight (``softmax - onehot`` in
  place) are computed in the forward pass, so the full (N, V) logits and their gradient never
  exist and backward only scales the stored gradients. Why and how fast: benchmarks/README.md.

Conventions shared by every LM loss here:

* targets equal to :data:`~customgpt.constants.IGNORE_INDEX` contribute nothing;
* ``reduction="mean"`` divides the summed token losses by the number of targets that are
  not ignored; ``reduction="sum"`` returns the sum and lets the caller divide (gradient
  accumulation divides by the target count of the whole global batch);
* a batch whose targets are **all** ignored has mean loss **0 with zero gradients** (not
  ``NaN`` as ``F.cross_entropy`` gives): a micro-batch made only of padding or prompt
  tokens must not poison the accumulated gradient (``NaN * 0`` is still ``NaN``);
* the loss is computed in fp32 (fp64 for fp64 inputs) whatever the input dtype: bf16/fp16
  logits are upcast before the softmax.
"""

from __future__ import annotations

import contextlib
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from customgpt.constants import IGNORE_INDEX

#: Upper bound on the bytes of one chunk of fp32 logits in the fused loss (512 rows for
#: GPT-2's vocabulary). Each chunk reads the weight three times, so larger chunks read it
#: less often; 256 to 1,024 rows run within a few percent of each other (benchmarks/README.md).
FUSED_CHUNK_BYTES = 100 * 2**20

#: :func:`causal_lm_loss` takes the reference path when the full fp32 logits would be at
#: most this large: there the plain kernels win (forward + backward, one CPU thread: 8 x
#: 50,257 logits 8.5 ms reference vs 12.8 ms fused; 32 x 50,257: 21 ms vs 14 ms).
FUSED_MIN_LOGITS_BYTES = 4 * 2**20


def default_chunk_size(vocab_size: int) -> int:
    """Rows per chunk of the fused loss: as many as fit in :data:`FUSED_CHUNK_BYTES` of fp32
    logits, rounded down to whole blocks of 16 rows (512 rows for GPT-2's vocabulary)."""
    rows = FUSED_CHUNK_BYTES // (4 * max(vocab_size, 1))
    return max(16, rows // 16 * 16)


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def _balanced_chunk(n_rows: int, max_rows: int) -> int:
    """Rows per chunk for ``n_rows`` rows in chunks of at most ``max_rows``, so that the
    chunks come out about equal, in multiples of 16 rows where the bound allows: 1100 rows
    with at most 512 go 368 + 368 + 364, not 512 + 512 + 76."""
    if n_rows <= max_rows:
        return max(n_rows, 1)
    n_chunks = -(-n_rows // max_rows)
    return min(max_rows, _round_up(-(-n_rows // n_chunks), 16))


def _check_reduction(reduction: str) -> None:
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be one of mean, sum, got {reduction!r}")


def _loss_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp32 for fp32/bf16/fp16 inputs, fp64 for fp64 inputs."""
    return torch.promote_types(dtype, torch.float32)


def _check_targets(targets: Tensor, valid: Tensor, vocab_size: int) -> None:
    """Raise a ValueError naming the first target that is neither ignored nor a vocabulary id."""
    bad = valid & ((targets < 0) | (targets >= vocab_size))
    if bool(bad.any()):
        pos = int(bad.nonzero()[0, 0])
        raise ValueError(
            f"target {int(targets[pos])} at flat position {pos} is outside the vocabulary "
            f"[0, {vocab_size}); use IGNORE_INDEX ({IGNORE_INDEX}) for positions without a target"
        )


# --------------------------------------------------------------------------- reference path


def lm_loss_from_logits(logits: Tensor, targets: Tensor, *, reduction: str = "mean") -> Tensor:
    """Cross-entropy of logits (..., V) against targets (...), the reference path, with the module
    docstring's conventions (ignored targets, reductions); a ValueError for a bad shape or target id."""
    _check_reduction(reduction)
    if targets.shape != logits.shape[:-1]:
        raise ValueError(f"targets must have shape {tuple(logits.shape[:-1])}, got {tuple(targets.shape)}")
    flat = targets.reshape(-1)
    _check_targets(flat, flat != IGNORE_INDEX, logits.shape[-1])
    total = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).to(_loss_dtype(logits.dtype)),  # no copy in fp32
        flat,
        ignore_index=IGNORE_INDEX,
        reduction="sum",
    )
    if reduction == "sum":
        return total
    return total / (flat != IGNORE_INDEX).sum().clamp_min(1)


# --------------------------------------------------------------------------- fused path


def _loss_and_grads(
    hidden: Tensor,
    weight: Tensor,
    targets: Tensor,
    reduction: str,
    chunk_size: int,
    need_hidden_grad: bool,
    need_weight_grad: bool,
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """Loss of ``hidden (N, C) @ weight (V, C).T`` against ``targets (N,)``, chunk by chunk,
    and the gradients of that loss w.r.t. ``hidden`` and ``weight`` when asked for."""
    n_rows, vocab = hidden.shape[0], weight.shape[0]
    acc_dtype = _loss_dtype(hidden.dtype)
    valid = targets != IGNORE_INDEX
    _check_targets(targets, valid, vocab)
    n_valid = int(valid.sum())
    # Rows without a target need no logits at all: compact the others (padding and prompt
    # tokens are common in fine-tuning batches, and skipping them skips their share of work).
    rows = None
    if n_valid < n_rows:
        rows = valid.nonzero().squeeze(1)
        h_used, t_used = hidden.index_select(0, rows), targets.index_select(0, rows)
    else:
        h_used, t_used = hidden, targets
    scale = 1.0 / max(n_valid, 1) if reduction == "mean" else 1.0
    need_grad = need_hidden_grad or need_weight_grad
    low_precision = weight.dtype != acc_dtype

    loss = torch.zeros((), dtype=acc_dtype, device=hidden.device)
    grad_h_used = torch.empty_like(h_used) if need_hidden_grad else None
    grad_w = None
    if need_weight_grad:
        # fp32: accumulate straight into a tensor of the weight's dtype (the first chunk
        # overwrites it, see below); bf16/fp16: into an fp32 one, starting from zeros.
        grad_w = torch.empty(weight.shape, dtype=acc_dtype, device=weight.device)
        if low_precision or n_valid == 0:
            grad_w.zero_()
    # The chunk's logits are computed transposed, (V, c) = weight @ h_c.T (faster on CPU), and
    # the softmax reduces over dim 0. In fp32 one buffer serves every chunk (``out=``); its rows
    # are padded to a multiple of 16 floats (64 bytes, which MKL writes much faster) by zero
    # rows appended to the hidden states, whose extra columns are never read.
    step = _balanced_chunk(n_valid, chunk_size)
    buffer = None
    if weight.dtype == acc_dtype and n_valid > 0:
        buffer = torch.empty(vocab * _round_up(step, 16), dtype=acc_dtype, device=weight.device)
    for i, start in enumerate(range(0, n_valid, step)):
        end = min(start + step, n_valid)
        h_c, t_c = h_used[start:end], t_used[start:end]
        cols = torch.arange(end - start, device=hidden.device)
        if buffer is not None:
            width = _round_up(end - start, 16)
            h_in = h_c if width == end - start else torch.cat([h_c, h_c.new_zeros(width - (end - start), h_c.shape[1])])
            out = buffer[: vocab * width].view(vocab, width)
            logits = torch.mm(weight, h_in.t(), out=out)[:, : end - start]  # (V, c), rows 64-byte aligned
        else:  # bf16/fp16: the matmul in the inputs' dtype (as the reference path), then fp32
            logits = torch.mm(weight, h_c.t()).to(acc_dtype)
        # log-sum-exp per column, softmax in place: max, exp(x - max), sum.
        target_logit = logits[t_c, cols]
        col_max = logits.amax(dim=0)
        exp = logits.sub_(col_max).exp_()
        col_sum = exp.sum(dim=0)
        loss.add_((col_max + col_sum.log() - target_logit).sum())
        if not need_grad:
            continue
        # d(token loss)/d(logits) = softmax - onehot(target), in place.
        probs = exp.mul_(col_sum.reciprocal())
        probs[t_c, cols] -= 1.0
        g = probs.to(weight.dtype)  # no copy in fp32
        if grad_h_used is not None:
            torch.mm(g.t(), weight, out=grad_h_used[start:end])  # (c, V) @ (V, C)
        if grad_w is not None:
            if low_precision:
                grad_w.add_(torch.mm(g, h_c), alpha=scale)
            else:
                # beta=0 on the first chunk: the empty buffer is ignored (documented for addmm).
                grad_w.addmm_(g, h_c, beta=0.0 if i == 0 else 1.0, alpha=scale)  # (V, c) @ (c, C)

    grad_h = None
    if grad_h_used is not None:
        if scale != 1.0:
            grad_h_used.mul_(scale)
        grad_h = grad_h_used if rows is None else torch.zeros_like(hidden).index_copy_(0, rows, grad_h_used)
    if grad_w is not None and low_precision:
        grad_w = grad_w.to(weight.dtype)
    return loss * scale, grad_h, grad_w


class _FusedLinearCrossEntropy(torch.autograd.Function):
    """Linear layer + cross-entropy whose forward also computes the gradients (see module doc)."""

    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, targets: Tensor, reduction: str, chunk_size: int) -> Tensor:
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        loss, grad_h, grad_w = _loss_and_grads(hidden, weight, targets, reduction, chunk_size, need_h, need_w)
        # The inputs are saved only so that autograd checks, as for any op, that they were not
        # modified in place before backward, and for a second backward through the graph.
        ctx.save_for_backward(hidden, weight, targets)
        ctx.settings = (reduction, chunk_size, need_h, need_w)
        # A plain attribute, not save_for_backward: the first backward hands the tensors to
        # autograd and drops this reference, so autograd adopts them as .grad (and sums the
        # tied embedding's gradient into them in place) instead of copying 154 MB.
        ctx.grads = (grad_h, grad_w)
        return loss

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_loss: Tensor):
        hidden, weight, targets = ctx.saved_tensors
        if ctx.grads is not None:
            grad_h, grad_w = ctx.grads
            ctx.grads = None
        else:  # a second backward through the same graph (retain_graph=True): compute again
            _, grad_h, grad_w = _loss_and_grads(hidden, weight, targets, *ctx.settings)
        # The gradients are those of the loss itself; scale them by d(output)/d(loss), in
        # place (they are ours). A plain loss.backward() passes exactly 1: nothing to do.
        if not (grad_loss.device.type == "cpu" and grad_loss.item() == 1.0):
            for grad in (grad_h, grad_w):
                if grad is not None:
                    grad.mul_(grad_loss.to(grad.dtype))
        return grad_h, grad_w, None, None, None


def fused_linear_cross_entropy(
    hidden: Tensor,
    weight: Tensor,
    targets: Tensor,
    *,
    reduction: str = "mean",
    chunk_size: int | None = None,
) -> Tensor:
    """Cross-entropy of ``hidden @ weight.T`` against ``targets`` without materialising the logits.

    Same value and gradients as ``lm_loss_from_logits(hidden @ weight.T, targets)``, computed
    ``chunk_size`` rows at a time (see the module docstring).

    * With autograd recording and ``hidden`` or ``weight`` requiring grad, the gradients are
      computed in this call (only those needed: a frozen head skips the weight's gradient)
      and ``.backward()`` merely scales them. Only first derivatives are supported.
    * Otherwise (``torch.no_grad()``, evaluation) only the loss is computed, still in chunks.
    * Under ``torch.autocast`` both operands are cast to the autocast dtype first, as
      autocast does for a matmul; the softmax and the loss stay in fp32.

    Args:
        hidden: (..., C) hidden states, e.g. (B, T, C) from ``GPT.forward_hidden``.
        weight: (V, C) output-layer weight (the LM head, tied to ``wte`` in GPT-2).
        targets: (...) integer ids, the shape of ``hidden`` without its last dimension;
            ``IGNORE_INDEX`` marks positions without a target.
        reduction: ``"mean"`` over non-ignored targets, or ``"sum"``.
        chunk_size: rows per chunk; default :func:`default_chunk_size`.
    """
    _check_reduction(reduction)
    if weight.dim() != 2 or weight.shape[1] != hidden.shape[-1]:
        raise ValueError(
            f"weight must have shape (vocab, {hidden.shape[-1]}) to match hidden {tuple(hidden.shape)}, "
            f"got {tuple(weight.shape)}"
        )
    if targets.shape != hidden.shape[:-1]:
        raise ValueError(f"targets must have shape {tuple(hidden.shape[:-1])}, got {tuple(targets.shape)}")
    if targets.dtype.is_floating_point or targets.dtype == torch.bool:
        raise ValueError(f"targets must be integer token ids, got dtype {targets.dtype}")
    chunk = default_chunk_size(weight.shape[0]) if chunk_size is None else int(chunk_size)
    if chunk <= 0:
        raise ValueError(f"chunk_size must be a positive number of rows, got {chunk_size!r}")
    h2 = hidden.reshape(-1, hidden.shape[-1])
    t = targets.reshape(-1).long()
    device_type = h2.device.type
    autocast = torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type)
    if autocast:
        dtype = torch.get_autocast_dtype(device_type)
        h2, weight = h2.to(dtype), weight.to(dtype)
    with torch.autocast(device_type, enabled=False) if autocast else contextlib.nullcontext():
        if torch.is_grad_enabled() and (h2.requires_grad or weight.requires_grad):
            return _FusedLinearCrossEntropy.apply(h2, weight, t, reduction, chunk)
        return _loss_and_grads(h2, weight, t, reduction, chunk, False, False)[0]


# --------------------------------------------------------------------------- the LM loss


def causal_lm_loss(
    hidden: Tensor,
    lm_head_weight: Tensor,
    targets: Tensor,
    *,
    reduction: str = "mean",
    fused: bool | None = None,
    chunk_size: int | None = None,
) -> Tensor:
    """Next-token cross-entropy over targets that are not ``IGNORE_INDEX``.

    Args:
        hidden: final hidden states (B, T, C) (``GPT.forward_hidden``).
        lm_head_weight: the LM head's weight (V, C).
        targets: token ids (B, T); ``IGNORE_INDEX`` marks positions without a target.
        reduction: ``"mean"`` (over non-ignored targets; 0 if there are none) or ``"sum"``.
        fused: True runs :func:`fused_linear_cross_entropy`, False builds the full logits
            and calls :func:`lm_loss_from_logits`; None (default) picks the fused path
            unless the full fp32 logits would be small (:data:`FUSED_MIN_LOGITS_BYTES`),
            where the reference path is as fast. Both give the same results.
        chunk_size: rows per chunk of the fused path.
    """
    if fused is None:
        fused = 4 * targets.numel() * lm_head_weight.shape[0] > FUSED_MIN_LOGITS_BYTES
    if fused:
        return fused_linear_cross_entropy(hidden, lm_head_weight, targets, reduction=reduction, chunk_size=chunk_size)
    return lm_loss_from_logits(hidden @ lm_head_weight.t(), targets, reduction=reduction)


def model_lm_loss(model: nn.Module, idx: Tensor, targets: Tensor, *, reduction: str = "mean") -> Tensor:
    """Run a :class:`~customgpt.model.GPT` on ``idx`` and return its LM loss against ``targets``."""
    return causal_lm_loss(model.forward_hidden(idx), model.lm_head.weight, targets, reduction=reduction)


# --------------------------------------------------------------------------- classification


class ClassificationLoss(nn.Module):
    """Cross-entropy of class logits, with optional class weights and label smoothing.

    ``forward(logits (B, K), targets (B,))`` returns the sum of the per-example losses (B,)
    (:meth:`per_example`) with ``reduction="sum"``, or their weighted mean with ``"mean"``
    (PyTorch's: ``sum_i loss_i / sum_i w[y_i]``). Per example, with ``w`` the class weights
    (all 1 when none), ``eps`` the smoothing and K classes (as ``F.cross_entropy``)::

        loss_i = (1 - eps) * w[y_i] * -log p(y_i) + eps / K * sum_k w[k] * -log p(k)

    Gradient accumulation sums the losses of each micro-batch and divides by
    :meth:`normaliser` of the *whole* batch, which gives the full batch's mean exactly.
    The loss is computed in fp32 (fp64 for fp64 logits) whatever the logits' dtype.
    """

    def __init__(self, class_weights: Tensor | None = None, label_smoothing: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        self.register_buffer("class_weights", None if class_weights is None else class_weights.float())
        self.label_smoothing = label_smoothing

    def normaliser(self, targets: Tensor) -> Tensor:
        """What ``reduction="mean"`` divides by: the sum of the targets' class weights (or their count)."""
        if self.class_weights is None:
            return torch.tensor(float(targets.numel()), device=targets.device)
        return self.class_weights[targets].sum()

    def _weights(self, dtype: torch.dtype) -> Tensor | None:
        return None if self.class_weights is None else self.class_weights.to(dtype)

    def per_example(self, logits: Tensor, targets: Tensor) -> Tensor:
        """The losses (B,) of logits (B, K) against class ids (B,)."""
        logits = logits.to(_loss_dtype(logits.dtype))
        return F.cross_entropy(logits, targets, weight=self._weights(logits.dtype),
                               label_smoothing=self.label_smoothing, reduction="none")

    def forward(self, logits: Tensor, targets: Tensor, reduction: str = "mean") -> Tensor:
        _check_reduction(reduction)
        total = self.per_example(logits, targets).sum()
        if reduction == "sum":
            return total
        return total / self.normaliser(targets)


class FocalLoss(ClassificationLoss):
    """Focal loss (Lin et al., 2017, "Focal Loss for Dense Object Detection", eq. 5):
    ``loss_i = -w[y_i] * (1 - p_i)^gamma * log p_i`` with ``p_i`` the probability of the true
    class. It down-weights the examples the model already gets right; class weights act as
    the per-class ``alpha``. ``gamma = 0`` is the (weighted) cross-entropy. Reductions and
    :meth:`normaliser` as :class:`ClassificationLoss`; no label smoothing."""

    def __init__(self, gamma: float = 2.0, class_weights: Tensor | None = None) -> None:
        super().__init__(class_weights)
        if gamma < 0:
            raise ValueError(f"focal gamma must be >= 0, got {gamma}")
        self.gamma = gamma

    def per_example(self, logits: Tensor, targets: Tensor) -> Tensor:
        logits = logits.to(_loss_dtype(logits.dtype))
        log_p = F.log_softmax(logits, dim=-1).gather(1, targets[:, None]).squeeze(1)  # (B,) log p_t
        losses = -((1.0 - log_p.exp()) ** self.gamma) * log_p
        return losses if self.class_weights is None else losses * self._weights(logits.dtype)[targets]


# =========================================================================== preference losses
#
# Sequence log-probs of a chosen and a rejected response in (docs/preference.md), per-example
# losses and rewards out: the modules know nothing about models or batches.


def _response_logps(logits: Tensor, targets: Tensor, mask: Tensor, reduction: str) -> Tensor:
    """(B,) log-probs of the responses from the (N, V) logits and (N,) targets at the N true
    positions of the (B, T) bool ``mask`` (row-major order): log-softmax over the vocabulary,
    gathered at the targets, summed or averaged over each row's response tokens."""
    logp = torch.log_softmax(logits.to(_loss_dtype(logits.dtype)), dim=-1)
    picked = logp.gather(-1, targets.long().unsqueeze(-1)).squeeze(-1)  # (N,)
    total = picked.new_zeros(mask.shape).masked_scatter(mask, picked).sum(dim=-1)
    return total if reduction == "sum" else total / mask.sum(dim=-1).clamp_min(1)


def sequence_logprobs(logits: Tensor, targets: Tensor, mask: Tensor, *, reduction: str = "sum") -> Tensor:
    """Log-probability of each row's response: log-softmax over the vocabulary, gathered at
    the targets, summed (or averaged) over the positions where ``mask`` is true.

    This is ``log pi(y | x)`` of the DPO paper (Rafailov et al. 2023, eq. 7): the sum over
    the response tokens of ``log p(y_t | x, y_<t)``. ``reduction="sum"`` is TRL's
    ``DPOTrainer``; ``"mean"`` divides by the number of response tokens, as the DPO notebook
    of *LLMs from scratch* (ch. 7) does. The softmax is over the vocabulary (dim -1), never
    over positions. Computed in fp32 (fp64 for fp64 logits).

    Args:
        logits: (B, T, V) next-token logits (position t predicts ``targets[:, t]``).
        targets: (B, T) token ids; any id where ``mask`` is false (padding, prompt).
        mask: (B, T) bool or 0/1: true at response tokens. A row without one scores 0.
        reduction: ``"sum"`` or ``"mean"`` over the response tokens.

    Returns:
        (B,) log-probs (nats, <= 0).

    Raises:
        ValueError: shapes that do not match, an unknown reduction.
    """
    _check_reduction(reduction)
    if targets.shape != logits.shape[:-1] or mask.shape != targets.shape:
        raise ValueError(
            f"logits (B, T, V), targets and mask (B, T) must match, got {tuple(logits.shape)}, "
            f"{tuple(targets.shape)} and {tuple(mask.shape)}"
        )
    mask = mask.bool()
    return _response_logps(logits[mask], targets[mask], mask, reduction)


def model_sequence_logprobs(
    model: nn.Module,
    input_ids: Tensor,
    targets: Tensor,
    mask: Tensor,
    *,
    reduction: str = "sum",
) -> Tensor:
    """:func:`sequence_logprobs` of a :class:`~customgpt.model.GPT` on ``input_ids`` without the
    full (B, T, V) logits: the LM head runs only at the response positions (prompt and padding
    rows cost nothing). Same numbers as ``sequence_logprobs(model(input_ids), targets, mask)``.

    Args:
        model: a GPT (anything with ``forward_hidden`` and ``lm_head``).
        input_ids: (B, T) token ids; ``targets`` (``input_ids`` shifted left by one), ``mask``
            and ``reduction`` as in :func:`sequence_logprobs`, which gives the (B,) result.
            Right padding needs no attention mask: no real token attends to a later pad.
    """
    _check_reduction(reduction)
    if targets.shape != input_ids.shape or mask.shape != input_ids.shape:
        raise ValueError(
            f"input_ids, targets and mask must have the same shape (B, T), got {tuple(input_ids.shape)}, "
            f"{tuple(targets.shape)} and {tuple(mask.shape)}"
        )
    hidden = model.forward_hidden(input_ids)  # (B, T, C)
    mask = mask.bool()
    return _response_logps(model.lm_head(hidden[mask]), targets[mask], mask, reduction)


class PreferenceLossOutput(NamedTuple):
    """What every preference loss returns, all (B,)."""

    losses: Tensor
    """Per-example losses; the batch loss is their mean."""
    chosen_rewards: Tensor
    """Implicit reward of each chosen response (detached); its mean is ``rewards/chosen``."""
    rejected_rewards: Tensor
    """Implicit reward of each rejected response (detached); its mean is ``rewards/rejected``."""


class PreferenceLoss(nn.Module):
    """Base of the preference losses: sequence log-probs in, :class:`PreferenceLossOutput` out.

    ``forward`` takes (B,) sequence log-probs of the policy (and reference) for the chosen and
    rejected responses, reduced as :attr:`reduction` says, and (B,) response token counts (for
    the losses that average summed log-probs); :meth:`pair_losses` gets the log-ratios
    ``log pi - log pi_ref``, or the policy's log-probs when no reference is needed. Missing
    reference log-probs or lengths that the loss needs are a ValueError.

    Attributes:
        needs_reference: whether the loss uses a reference model's log-probs.
        reduction: ``"sum"`` or ``"mean"``, how the incoming log-probs were reduced over the
            response tokens (:func:`sequence_logprobs`).
    """

    needs_reference: bool = True

    def __init__(self, reduction: str = "sum") -> None:
        super().__init__()
        _check_reduction(reduction)
        self.reduction = reduction

    def _average(self, logps: Tensor, lengths: Tensor | None) -> Tensor:
        """Per-token average log-probs from what came in."""
        if self.reduction == "mean":
            return logps
        if lengths is None:
            raise ValueError(f"{type(self).__name__} needs the response lengths to average summed log-probs")
        return logps / lengths.to(logps.dtype).clamp_min(1)

    def forward(
        self,
        policy_chosen_logps: Tensor,
        policy_rejected_logps: Tensor,
        reference_chosen_logps: Tensor | None = None,
        reference_rejected_logps: Tensor | None = None,
        chosen_lengths: Tensor | None = None,
        rejected_lengths: Tensor | None = None,
    ) -> PreferenceLossOutput:
        chosen, rejected = policy_chosen_logps, policy_rejected_logps
        if self.needs_reference:
            if reference_chosen_logps is None or reference_rejected_logps is None:
                raise ValueError(f"{type(self).__name__} needs the reference model's log-probs")
            chosen, rejected = chosen - reference_chosen_logps, rejected - reference_rejected_logps
        losses, chosen_rewards, rejected_rewards = self.pair_losses(
            chosen, rejected, chosen_lengths, rejected_lengths
        )
        return PreferenceLossOutput(losses, chosen_rewards.detach(), rejected_rewards.detach())

    def pair_losses(
        self, chosen: Tensor, rejected: Tensor, chosen_lengths: Tensor | None, rejected_lengths: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """(B,) losses, chosen rewards and rejected rewards (see the class docstring)."""
        raise NotImplementedError


class DPOLoss(PreferenceLoss):
    """DPO, the sigmoid loss (Rafailov et al. 2023, "Direct Preference Optimization", eq. 7).

    With log-ratios ``r_c = log pi(y_c|x) - log pi_ref(y_c|x)`` and ``r_r`` likewise::

        loss = -(1 - eps) * log sigmoid(beta * (r_c - r_r)) - eps * log sigmoid(-beta * (r_c - r_r))
        rewards: beta * r_c, beta * r_r

    ``eps`` (``label_smoothing``) > 0 is conservative DPO (Mitchell 2023, "A note on DPO with
    noisy preferences"). Defaults: ``beta=0.1`` (the DPO paper's main setting, TRL's), ``eps=0``
    (TRL's ``loss_type="sigmoid"``).
    """

    def __init__(self, beta: float = 0.1, label_smoothing: float = 0.0, reduction: str = "sum") -> None:
        super().__init__(reduction)
        if not beta > 0:
            raise ValueError(f"beta must be > 0, got {beta}")
        if not 0.0 <= label_smoothing < 0.5:
            raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
        self.beta, self.label_smoothing = float(beta), float(label_smoothing)

    def pair_losses(self, r_c, r_r, chosen_lengths, rejected_lengths):
        z = self.beta * (r_c - r_r)
        eps = self.label_smoothing
        losses = -F.logsigmoid(z) * (1 - eps) - F.logsigmoid(-z) * eps if eps else -F.logsigmoid(z)
        return losses, self.beta * r_c, self.beta * r_r


class IPOLoss(PreferenceLoss):
    """IPO (Azar et al. 2023, "A General Theoretical Paradigm to Understand Learning from Human
    Preferences", eq. 17), with the log-ratios averaged per response token as TRL does (the
    form the IPO authors confirmed is behind the paper's results)::

        h = r_c / n_c - r_r / n_r            (r: summed log-ratio, n: response tokens)
        loss = (h - 1 / (2 * beta)) ** 2
        rewards: beta * r_c, beta * r_r      (with the incoming reduction, as TRL logs them)

    Default ``beta`` (the paper's tau) 0.1, TRL's default.
    """

    def __init__(self, beta: float = 0.1, reduction: str = "sum") -> None:
        super().__init__(reduction)
        if not beta > 0:
            raise ValueError(f"beta must be > 0, got {beta}")
        self.beta = float(beta)

    def pair_losses(self, r_c, r_r, chosen_lengths, rejected_lengths):
        h = self._average(r_c, chosen_lengths) - self._average(r_r, rejected_lengths)
        return (h - 1 / (2 * self.beta)) ** 2, self.beta * r_c, self.beta * r_r


class SimPOLoss(PreferenceLoss):
    """SimPO (Meng et al. 2024, "SimPO: Simple Preference Optimization with a Reference-Free
    Reward", eq. 6): no reference model; the reward is the length-normalised log-prob::

        a = log pi(y|x) / |y|                 (average log-prob per response token)
        loss = -log sigmoid(beta * (a_c - a_r) - gamma)
        rewards: beta * a_c, beta * a_r

    Defaults from the paper's recommended setting (its repository's ``beta=2.0``,
    ``gamma_beta_ratio=0.5``): ``beta=2.0``, ``gamma=1.0``.
    """

    needs_reference = False

    def __init__(self, beta: float = 2.0, gamma: float = 1.0, reduction: str = "sum") -> None:
        super().__init__(reduction)
        if not beta > 0:
            raise ValueError(f"beta must be > 0, got {beta}")
        self.beta, self.gamma = float(beta), float(gamma)

    def pair_losses(self, logps_c, logps_r, chosen_lengths, rejected_lengths):
        a_c, a_r = self._average(logps_c, chosen_lengths), self._average(logps_r, rejected_lengths)
        return -F.logsigmoid(self.beta * (a_c - a_r) - self.gamma), self.beta * a_c, self.beta * a_r


class ORPOLoss(PreferenceLoss):
    """ORPO (Hong et al. 2024, "ORPO: Monolithic Preference Optimization without Reference
    Model", eqs. 6-7): no reference model; supervised NLL on the chosen response plus an odds
    ratio term, both on average per-token log-probs ``a``::

        log odds(y) = a - log(1 - exp(a))
        loss = -a_c - lam * log sigmoid(log odds(y_c) - log odds(y_r))
        rewards: lam * a_c, lam * a_r          (TRL's ORPOTrainer logs these)

    The NLL is per example (each chosen response's mean token loss), where the paper and TRL
    average over the batch's chosen tokens. Default ``lam=0.1`` (TRL's ``ORPOConfig.beta``).
    """

    needs_reference = False

    def __init__(self, lam: float = 0.1, reduction: str = "sum") -> None:
        super().__init__(reduction)
        if not lam >= 0:
            raise ValueError(f"lam must be >= 0, got {lam}")
        self.lam = float(lam)

    @staticmethod
    def log_odds(avg_logps: Tensor) -> Tensor:
        """``log(p / (1 - p))`` for ``p = exp(avg_logps)``, stable near p = 1."""
        return avg_logps - torch.log1p(-torch.exp(avg_logps.clamp_max(-1e-6)))

    def pair_losses(self, logps_c, logps_r, chosen_lengths, rejected_lengths):
        a_c, a_r = self._average(logps_c, chosen_lengths), self._average(logps_r, rejected_lengths)
        ratio = F.logsigmoid(self.log_odds(a_c) - self.log_odds(a_r))
        return -a_c - self.lam * ratio, self.lam * a_c, self.lam * a_r


#: ``train.loss`` name → loss module class.
PREFERENCE_LOSSES: dict[str, type[PreferenceLoss]] = {
    "dpo": DPOLoss, "ipo": IPOLoss, "simpo": SimPOLoss, "orpo": ORPOLoss,
}


def preference_metrics(out: PreferenceLossOutput, chosen_logps: Tensor, rejected_logps: Tensor) -> dict[str, float]:
    """The batch's metrics under TRL's names: ``loss``, ``rewards/chosen``, ``rewards/rejected``,
    ``rewards/margins`` (mean of chosen - rejected), ``rewards/accuracies`` (share of pairs with
    chosen > rejected, strictly), ``logps/chosen``, ``logps/rejected`` (the policy's)."""
    c, r = out.chosen_rewards.detach().float(), out.rejected_rewards.detach().float()
    return {
        "loss": float(out.losses.detach().float().mean()),
        "rewards/chosen": float(c.mean()),
        "rewards/rejected": float(r.mean()),
        "rewards/margins": float((c - r).mean()),
        "rewards/accuracies": float((c > r).float().mean()),
        "logps/chosen": float(chosen_logps.detach().float().mean()),
        "logps/rejected": float(rejected_logps.detach().float().mean()),
    }
