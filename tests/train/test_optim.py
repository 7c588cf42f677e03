"""Weight-decay groups, exact gradient accumulation, and the runtime (device/precision)."""

from __future__ import annotations

import pytest
import torch

from customgpt.config import GPTConfig
from customgpt.constants import IGNORE_INDEX
from customgpt.device import resolve_device
from customgpt.errors import ConfigError, CustomGPTError
from customgpt.losses import causal_lm_loss
from customgpt.model import GPT
from customgpt.train.config import OptimConfig, RuntimeConfig
from customgpt.train.optim import build_optimizer, param_groups
from customgpt.train.runtime import resolve_precision, setup_runtime
from customgpt.train.step import count_targets, micro_loss_weight

pytestmark = pytest.mark.usefixtures("one_torch_thread")


TINY = GPTConfig(vocab_size=97, context_length=16, n_embd=16, n_layer=2, n_head=2)


def _model(seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(TINY)


def test_decay_only_on_matrices_and_embeddings():
    model = _model()
    groups = param_groups(model, 0.1)
    decay = {n for g in groups if g["weight_decay"] == 0.1 for n in g["names"]}
    no_decay = {n for g in groups if g["weight_decay"] == 0.0 for n in g["names"]}
    assert "transformer.wte.weight" in decay and "transformer.wpe.weight" in decay
    assert "transformer.h.0.attn.c_attn.weight" in decay and "transformer.h.1.mlp.c_proj.weight" in decay
    assert "transformer.h.0.attn.c_attn.bias" in no_decay
    assert "transformer.h.0.ln_1.weight" in no_decay and "transformer.ln_f.bias" in no_decay
    assert all(p.dim() >= 2 for g in groups if g["weight_decay"] for p in g["params"])
    assert all(p.dim() == 1 for g in groups if not g["weight_decay"] for p in g["params"])
    # the tied LM head is the embedding: optimised once
    assert "lm_head.weight" not in decay | no_decay
    n_params = sum(p.numel() for g in groups for p in g["params"])
    assert n_params == model.num_parameters()


def test_optimizer_groups_skip_frozen_params_and_carry_settings():
    model = _model()
    for name, p in model.named_parameters():
        if "h.0." in name:
            p.requires_grad_(False)
    opt = build_optimizer(model, OptimConfig(weight_decay=0.05, betas=(0.8, 0.9), eps=1e-6), lr=1e-3)
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    assert all(id(p) not in in_opt for n, p in model.named_parameters() if "h.0." in n)
    assert sorted(g["weight_decay"] for g in opt.param_groups) == [0.0, 0.05]
    assert all(g["betas"] == (0.8, 0.9) and g["eps"] == 1e-6 for g in opt.param_groups)


def test_fused_kernel_on_cpu_by_default_and_same_steps_as_foreach():
    steps = {}
    for fused in (None, False):
        model = _model()
        opt = build_optimizer(model, OptimConfig(weight_decay=0.1, fused=fused), lr=1e-2, device="cpu")
        assert all(bool(g["fused"]) is (fused is None) for g in opt.param_groups)  # None: fused on the CPU
        for step in range(3):
            torch.manual_seed(step)
            x = torch.randint(0, TINY.vocab_size, (2, 8))
            opt.zero_grad()
            causal_lm_loss(model.forward_hidden(x), model.lm_head.weight, x).backward()
            opt.step()
        steps[fused] = {n: p.detach() for n, p in model.named_parameters()}
    for name, value in steps[None].items():
        torch.testing.assert_close(value, steps[False][name], rtol=1e-4, atol=1e-4)  # steps move weights by ~1e-2


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


def test_runtime_on_cpu():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_precision("auto", torch.device("cpu")) == torch.float32
    assert resolve_precision("bf16", torch.device("cpu")) == torch.bfloat16
    with pytest.raises(ConfigError, match="fp16 is not supported on the CPU"):
        resolve_precision("fp16", torch.device("cpu"))
    rt = setup_runtime(RuntimeConfig(device="cpu"), distributed=False)
    assert rt.device.type == "cpu" and rt.precision == "fp32" and not rt.grad_scaler().is_enabled()
    if not torch.cuda.is_available():
        with pytest.raises(CustomGPTError, match="CUDA is not available"):
            resolve_device("cuda")
        assert resolve_device("auto").type in ("cpu", "mps")
