"""Weight-decay groups and the optimizer's settings."""

from __future__ import annotations

import pytest
import torch

from customgpt.config import GPTConfig
from customgpt.losses import causal_lm_loss
from customgpt.model import GPT
from customgpt.train.config import OptimConfig
from customgpt.train.optim import build_optimizer, param_groups, set_lr

pytestmark = pytest.mark.usefixtures("one_torch_thread")


TINY = GPTConfig(vocab_size=97, context_length=16, n_embd=16, n_layer=2, n_head=2)


def _model(seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(TINY)


def test_decay_only_on_matrices_and_embeddings():
    model = _model()
    groups = param_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    decay = {names[id(p)] for g in groups if g["weight_decay"] == 0.1 for p in g["params"]}
    no_decay = {names[id(p)] for g in groups if g["weight_decay"] == 0.0 for p in g["params"]}
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


def test_set_lr_sets_every_group_and_returns_the_rate():
    opt = build_optimizer(_model(), OptimConfig(weight_decay=0.1), lr=1e-3)
    assert set_lr(opt, 2.5e-4) == 2.5e-4
    assert [g["lr"] for g in opt.param_groups] == [2.5e-4, 2.5e-4]
