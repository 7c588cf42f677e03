"""The CPU decode fast path (:mod:`customgpt.generate.cpu_decode`) and the decode layout: the
step computes what the model's forward computes (logits within 1e-5, with left padding, with
and without biases, tied or untied head), generation runs it where it applies and steps aside
where it does not, and the weights are re-laid out in place (no copies)."""

from __future__ import annotations

import copy

import pytest
import torch

import customgpt.generate.cpu_decode as cpu_decode
from customgpt.generate import (
    CPUDecodeStep,
    SamplingParams,
    cpu_decode_unsupported,
    generate_batch,
    generate_tokens,
)
from customgpt.lora import LoRAConfig, inject_lora
from generate.common import GREEDY, prompt_of, reference_greedy, tiny_model, tokens


@pytest.fixture
def steps(monkeypatch):
    """Counts the fast path's steps."""
    calls = []

    class Counted(cpu_decode.CPUDecodeStep):
        def __call__(self, *args, **kwargs):
            calls.append(1)
            return super().__call__(*args, **kwargs)

    monkeypatch.setattr(cpu_decode, "CPUDecodeStep", Counted)
    return calls


def test_generation_runs_the_fast_path_with_the_decode_layout(steps):
    model = tiny_model(0)
    assert cpu_decode_unsupported(model) is None
    c_fc = model.transformer.h[0].mlp.c_fc.weight
    prompt = prompt_of(9, seed=1)
    out = tokens(generate_tokens(model, prompt, GREEDY))
    # 9 + 40 tokens cross the 32-position window: the steps inside it use the fast path
    # (one per token after the first, up to position 31), the rest re-prefill.
    assert len(steps) == 32 - 9
    assert out == reference_greedy(model, prompt, GREEDY.max_new_tokens)
    assert model.transformer.h[0].mlp.c_fc.weight is c_fc and c_fc.t().is_contiguous()  # in place
    plain = tiny_model(0)
    assert tokens(generate_tokens(plain, prompt, GREEDY, fast_path=False)) == out
    assert len(steps) == 32 - 9  # off: not one more step
    assert plain.transformer.h[0].mlp.c_fc.weight.is_contiguous()  # and the layout left alone


@pytest.mark.parametrize("bias,tied", [(True, False), (False, True)])
def test_step_logits_match_the_model_forward_with_padding(bias, tied):
    model = tiny_model(3, bias=bias, tie_embeddings=tied)
    model.use_decode_layout()
    lengths = [3, 11, 7]
    B, L = len(lengths), max(lengths)
    seq = torch.zeros(B, L, dtype=torch.long)
    mask = torch.ones(B, L + 12, dtype=torch.long)
    for b, n in enumerate(lengths):
        seq[b, L - n :] = torch.tensor(prompt_of(n, seed=n))
        mask[b, : L - n] = 0
    with torch.inference_mode():
        fast, ref = model.new_kv_cache(B, L + 12), model.new_kv_cache(B, L + 12)
        for cache in (fast, ref):
            model.forward_hidden(seq, attention_mask=mask[:, :L], kv_cache=cache)
        step = CPUDecodeStep(model)
        positions = (mask.cumsum(-1) - 1).clamp_min(0)
        bool_mask = mask.bool()[:, None, None, :]
        gen = torch.Generator().manual_seed(0)
        for n in range(L + 1, L + 12):
            new = torch.randint(0, model.config.vocab_size, (B,), generator=gen)
            got = model.lm_head(step(new, fast, n - 1, positions[:, n - 1], bool_mask[..., :n]))
            want = model(new[:, None], attention_mask=mask[:, :n], kv_cache=ref, input_pos=n - 1)[:, -1]
            torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
        torch.testing.assert_close(fast.k[:, :, :, : L + 11], ref.k[:, :, :, : L + 11], rtol=0, atol=1e-5)


def test_batched_with_padding_equals_unbatched_and_the_model_forward(steps):
    model = tiny_model(0)
    params = GREEDY.replace(max_new_tokens=12)
    prompts = [prompt_of(n, seed=n) for n in (3, 9, 17)]
    alone = [reference_greedy(model, p, 12) for p in prompts]
    assert [r.token_ids for r in generate_batch(model, prompts, params)] == alone
    assert len(steps) == 11
    assert [r.token_ids for r in generate_batch(model, prompts, params, fast_path=False)] == alone


def test_sampling_with_the_fast_path_equals_the_model_forward(steps):
    model = tiny_model(2)
    params = SamplingParams(temperature=0.8, top_k=30, max_new_tokens=25, seed=4, stop_at_eot=False)
    prompt = prompt_of(5, seed=3)
    fast = tokens(generate_tokens(model, prompt, params))
    assert steps
    assert fast == tokens(generate_tokens(copy.deepcopy(model), prompt, params, fast_path=False))


def test_weight_changes_are_seen_without_any_bookkeeping():
    model = tiny_model(6)
    prompt = prompt_of(8, seed=6)
    assert tokens(generate_tokens(model, prompt, GREEDY)) == reference_greedy(model, prompt, 40)
    with torch.no_grad():
        model.transformer.h[0].attn.c_attn.weight.mul_(-1.2)  # in place, as an optimizer step
    assert tokens(generate_tokens(model, prompt, GREEDY)) == reference_greedy(model, prompt, 40)
    model.transformer.h[1].mlp.c_fc.weight = torch.nn.Parameter(torch.randn_like(model.transformer.h[1].mlp.c_fc.weight))
    assert tokens(generate_tokens(model, prompt, GREEDY)) == reference_greedy(model, prompt, 40)
    model.load_state_dict(tiny_model(7).state_dict())
    assert tokens(generate_tokens(model, prompt, GREEDY)) == reference_greedy(tiny_model(7), prompt, 40)


def test_turned_off_by_the_module_switch(monkeypatch, steps):
    monkeypatch.setattr(cpu_decode, "CPU_DECODE_FAST_PATH", False)
    model = tiny_model(0)
    prompt = prompt_of(5)
    assert tokens(generate_tokens(model, prompt, GREEDY)) == reference_greedy(model, prompt, 40)
    assert not steps and model.transformer.h[0].attn.c_attn.weight.is_contiguous()


def test_lora_wrapped_linears_fall_back_and_training_goes_on(steps):
    model = tiny_model(9)
    inject_lora(model, LoRAConfig(r=2, targets=("c_attn",)))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5, generator=torch.Generator().manual_seed(1))  # a non-zero update
    model.eval()
    assert "LoRALinear" in cpu_decode_unsupported(model)
    prompt = prompt_of(7, seed=3)
    assert tokens(generate_tokens(model, prompt, GREEDY)) == reference_greedy(model, prompt, 40)
    assert not steps
    # A training step on the re-laid-out weights: gradients flow and the optimizer steps.
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model(torch.tensor([prompt])).logsumexp(-1).mean().backward()
    opt.step()
    model.eval()
    assert tokens(generate_tokens(model, prompt, GREEDY)) == reference_greedy(model, prompt, 40)


def test_other_unsupported_models_fall_back(steps):
    assert cpu_decode_unsupported(tiny_model(0, impl="explicit")) is not None
    assert "training" in cpu_decode_unsupported(tiny_model(0).train())
    assert "float32" in cpu_decode_unsupported(tiny_model(0).to(torch.float64))
    hooked = tiny_model(0)
    seen = []
    hooked.transformer.h[1].mlp.register_forward_hook(lambda module, args, out: seen.append(1))
    assert "hooks" in cpu_decode_unsupported(hooked)
    prompt = prompt_of(5)
    assert tokens(generate_tokens(hooked, prompt, GREEDY.replace(max_new_tokens=5))) == reference_greedy(hooked, prompt, 5)
    assert len(seen) == 5 + 5 and not steps  # the hook ran on every forward
    explicit = tiny_model(0, impl="explicit")
    assert tokens(generate_tokens(explicit, prompt, GREEDY)) == reference_greedy(explicit, prompt, 40)
    assert not steps
