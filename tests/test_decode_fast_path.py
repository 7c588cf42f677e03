"""The CPU decode fast path (:class:`customgpt.generate.CPUDecoder`): it runs when it applies,
computes what the model's forward computes (logits within 1e-5, the same greedy tokens, with
left padding too), follows weight changes, and steps aside where it does not apply."""

from __future__ import annotations

import copy

import pytest
import torch
from test_generate import GREEDY, prompt_of, reference_greedy, tiny_model, tokens

import customgpt.generate as generation
from customgpt.generate import (
    SamplingParams,
    cpu_decoder_for_generation,
    cpu_decoder_unsupported,
    free_generation_memory,
    generate_batch,
    generate_tokens,
)
from customgpt.lora import LoRAConfig, inject_lora
from customgpt.model import GPT

DECODER = generation._DECODE_ATTR


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def decoder_steps(model: GPT) -> int:
    decoder = model.__dict__.get(DECODER)
    return 0 if decoder is None else decoder.steps


# --------------------------------------------------------------------------- it runs, and agrees


def test_generation_runs_the_fast_path_on_cpu():
    model = tiny_model(0)
    assert cpu_decoder_unsupported(model) is None
    prompt = prompt_of(9, seed=1)
    out = tokens(generate_tokens(model, prompt, GREEDY))
    # 9 + 40 tokens cross the 32-position window: the steps inside it use the decoder
    # (one per token after the first, up to position 31), the rest re-prefill.
    assert decoder_steps(model) == 32 - 9
    assert out == reference_greedy(model, prompt, GREEDY.max_new_tokens)
    assert tokens(generate_tokens(model, prompt, GREEDY, fast_path=False)) == out
    assert decoder_steps(model) == 32 - 9  # off: not one more step


@pytest.mark.parametrize("bias,tied", [(True, False), (False, True)])
def test_step_logits_match_the_model_forward_with_padding(bias, tied):
    """Left-padded rows, several decode positions: the decoder's logits equal forward_hidden's
    (each on its own copy of the model and cache) within 1e-5."""
    model = tiny_model(3, bias=bias, tie_embeddings=tied)
    reference = copy.deepcopy(model)
    lengths = [3, 11, 7]
    B, L = len(lengths), max(lengths)
    seq = torch.zeros(B, L, dtype=torch.long)
    mask = torch.ones(B, L + 12, dtype=torch.long)
    for b, n in enumerate(lengths):
        seq[b, L - n :] = torch.tensor(prompt_of(n, seed=n))
        mask[b, : L - n] = 0
    with torch.inference_mode():
        for m in (model, reference):
            m.setup_kv_cache(B, L + 12)
            m.forward_hidden(seq, attention_mask=mask[:, :L], use_cache=True)
        decoder = cpu_decoder_for_generation(model)
        assert decoder is not None
        positions = (mask.cumsum(-1) - 1).clamp_min(0)
        bool_mask = mask.bool()[:, None, None, :]
        gen = torch.Generator().manual_seed(0)
        for n in range(L + 1, L + 12):
            new = torch.randint(0, model.config.vocab_size, (B,), generator=gen)
            got = model.lm_head(decoder.step(model, new, positions[:, n - 1], bool_mask[..., :n]))
            want = reference(new[:, None], attention_mask=mask[:, :n], use_cache=True)[:, -1]
            torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
            assert model.cache_len == reference.cache_len == n
        torch.testing.assert_close(
            model.transformer.h[1].attn.kv_cache.k[:, :, : L + 11],
            reference.transformer.h[1].attn.kv_cache.k[:, :, : L + 11],
            rtol=0, atol=1e-5,
        )


def test_step_logits_match_without_a_mask():
    model = tiny_model(5)
    reference = copy.deepcopy(model)
    prompt = torch.tensor([prompt_of(6, seed=2)])
    with torch.inference_mode():
        for m in (model, reference):
            m.setup_kv_cache(1, 20)
            m.forward_hidden(prompt, use_cache=True)
        decoder = cpu_decoder_for_generation(model)
        for token in prompt_of(10, seed=9):
            new = torch.tensor([token])
            got = model.lm_head(decoder.step(model, new))
            want = reference(new[:, None], use_cache=True)[:, -1]
            torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


def test_batched_with_padding_equals_unbatched_and_the_model_forward():
    model = tiny_model(0)
    params = GREEDY.replace(max_new_tokens=12)
    prompts = [prompt_of(n, seed=n) for n in (3, 9, 17)]
    alone = [reference_greedy(model, p, 12) for p in prompts]
    before = decoder_steps(model)
    assert [r.token_ids for r in generate_batch(model, prompts, params)] == alone
    assert decoder_steps(model) == before + 11
    assert [r.token_ids for r in generate_batch(model, prompts, params, fast_path=False)] == alone


def test_sampling_with_the_fast_path_equals_the_model_forward():
    model = tiny_model(2)
    params = SamplingParams(temperature=0.8, top_k=30, max_new_tokens=25, seed=4, stop_at_eot=False)
    prompt = prompt_of(5, seed=3)
    fast = tokens(generate_tokens(model, prompt, params))
    assert decoder_steps(model) > 0
    assert fast == tokens(generate_tokens(model, prompt, params, fast_path=False))


# --------------------------------------------------------------------------- the copies follow the weights


def test_copies_are_rebuilt_after_a_weight_change():
    model = tiny_model(6)
    prompt = prompt_of(8, seed=6)
    assert tokens(generate_tokens(model, prompt, GREEDY)) == reference_greedy(model, prompt, 40)
    first = model.__dict__[DECODER]
    assert cpu_decoder_for_generation(model) is first  # unchanged weights: reused
    with torch.no_grad():
        model.transformer.h[0].attn.c_attn.weight.mul_(-1.2)  # in place, as an optimizer step
    assert tokens(generate_tokens(model, prompt, GREEDY)) == reference_greedy(model, prompt, 40)
    second = model.__dict__[DECODER]
    assert second is not first and second.steps > 0
    with torch.no_grad():
        model.transformer.h[1].mlp.c_proj.bias.add_(0.5)  # a bias, and the layer kept uncopied
    assert cpu_decoder_for_generation(model) is not second
    model.transformer.h[1].mlp.c_fc.weight = torch.nn.Parameter(torch.randn_like(model.transformer.h[1].mlp.c_fc.weight))
    assert tokens(generate_tokens(model, prompt, GREEDY)) == reference_greedy(model, prompt, 40)
    state = tiny_model(7).state_dict()
    model.load_state_dict(state)
    assert tokens(generate_tokens(model, prompt, GREEDY)) == reference_greedy(tiny_model(7), prompt, 40)


def test_free_generation_memory_drops_the_copies():
    model = tiny_model(8)
    prompt = prompt_of(4)
    first = tokens(generate_tokens(model, prompt, GREEDY))
    decoder = model.__dict__[DECODER]
    # c_attn, attn.c_proj and mlp.c_fc are copied (out >= in); mlp.c_proj is read as it is.
    C, n_layer = model.config.n_embd, model.config.n_layer
    assert decoder.copied_numel == n_layer * (3 * C * C + C * C + 4 * C * C)
    free_generation_memory(model)
    assert DECODER not in model.__dict__
    assert tokens(generate_tokens(model, prompt, GREEDY)) == first


# --------------------------------------------------------------------------- where it does not apply


def test_turned_off_by_the_module_switch(monkeypatch):
    model = tiny_model(0)
    monkeypatch.setattr(generation, "CPU_DECODE_FAST_PATH", False)
    prompt = prompt_of(5)
    assert tokens(generate_tokens(model, prompt, GREEDY)) == reference_greedy(model, prompt, 40)
    assert DECODER not in model.__dict__
    assert cpu_decoder_for_generation(model, enabled=True) is not None  # the keyword wins


def test_lora_wrapped_linears_fall_back_to_the_model_forward():
    model = tiny_model(9)
    inject_lora(model, LoRAConfig(r=2, targets=("c_attn",)))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5, generator=torch.Generator().manual_seed(1))  # a non-zero update
    model.eval()
    assert "LoRALinear" in cpu_decoder_unsupported(model)
    prompt = prompt_of(7, seed=3)
    assert tokens(generate_tokens(model, prompt, GREEDY)) == reference_greedy(model, prompt, 40)
    assert DECODER not in model.__dict__


def test_other_unsupported_models_fall_back():
    assert cpu_decoder_unsupported(tiny_model(0, impl="explicit")) is not None
    assert "training" in cpu_decoder_unsupported(tiny_model(0).train())
    assert "float32" in cpu_decoder_unsupported(tiny_model(0).to(torch.float64))
    hooked = tiny_model(0)
    seen = []
    hooked.transformer.h[1].mlp.register_forward_hook(lambda module, args, out: seen.append(1))
    assert "hooks" in cpu_decoder_unsupported(hooked)
    prompt = prompt_of(5)
    assert tokens(generate_tokens(hooked, prompt, GREEDY.replace(max_new_tokens=5))) == reference_greedy(hooked, prompt, 5)
    assert len(seen) == 5 + 5 and DECODER not in hooked.__dict__  # the hook ran on every forward

    explicit = tiny_model(0, impl="explicit")
    assert tokens(generate_tokens(explicit, prompt, GREEDY)) == reference_greedy(explicit, prompt, 40)
    assert DECODER not in explicit.__dict__
