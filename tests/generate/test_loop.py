"""The token loop (:mod:`customgpt.generate.loop`): the KV cache against the full-window
reference and transformers' ``generate``, requests that own their caches, the LM head copy,
the decode layout, the tokenizer's vocabulary and the token budget."""

from __future__ import annotations

import pytest
import torch

from customgpt.checkpoints import build_model, hf_to_customgpt_state
from customgpt.config import GPTConfig
from customgpt.generate import SamplingParams, generate_batch, generate_tokens, lm_head_for_generation
from generate.common import CTX, GREEDY, prompt_of, randomize, reference_greedy, tiny_model, tokens

# --------------------------------------------------------------------------- KV cache exactness


@pytest.mark.parametrize("length", [1, 7, 20, 31, 32, 45])
def test_cached_greedy_equals_full_window_reference(model, length):
    """Prompt + 40 new tokens crosses the 32-position window for every length here."""
    prompt = prompt_of(length, seed=length)
    want = reference_greedy(model, prompt, GREEDY.max_new_tokens)
    assert len(set(want)) > 3  # the model is not degenerate: the test can tell positions apart
    assert tokens(generate_tokens(model, prompt, GREEDY)) == want
    assert tokens(generate_tokens(model, prompt, GREEDY, use_cache=False)) == want


def test_cached_sampling_and_penalties_equal_no_cache(model):
    params = SamplingParams(
        temperature=0.9, top_k=20, top_p=0.95, repetition_penalty=1.3, frequency_penalty=0.2,
        presence_penalty=0.1, max_new_tokens=45, seed=3, stop_at_eot=False,
    )
    prompt = prompt_of(12, seed=5)
    assert tokens(generate_tokens(model, prompt, params)) == tokens(generate_tokens(model, prompt, params, use_cache=False))


def test_context_cropped_flag_marks_steps_past_the_window(model):
    prompt = prompt_of(20)
    steps = list(generate_tokens(model, prompt, GREEDY))
    # The token of step s is predicted from 20 + s tokens; past 32 the window is cropped.
    assert [s.context_cropped for s in steps] == [20 + i > CTX for i in range(40)]
    assert [s.finish_reason for s in steps] == [None] * 39 + ["length"]


def test_no_state_leaks_between_requests(model):
    a, b = prompt_of(25, seed=1), prompt_of(6, seed=2)
    first_b = None
    for prompt in (a, b, b):
        out = tokens(generate_tokens(model, prompt, GREEDY))
        if prompt is b:
            first_b = first_b or out
            assert out == first_b
    fresh = tiny_model(0)
    assert tokens(generate_tokens(fresh, b, GREEDY)) == first_b
    # A request cut short leaves nothing behind either.
    gen = generate_tokens(model, a, GREEDY)
    next(gen), next(gen)
    gen.close()
    assert tokens(generate_tokens(model, b, GREEDY)) == first_b


def test_two_interleaved_generations_on_one_model_each_get_their_own_answer(model):
    """Each request owns its KV cache: two generations stepped in turns on one model give
    what each gives alone."""
    a, b = prompt_of(5, seed=1), prompt_of(9, seed=2)
    want_a, want_b = reference_greedy(model, a, 40), reference_greedy(model, b, 40)
    first, second = generate_tokens(model, a, GREEDY), generate_tokens(model, b, GREEDY)
    got_a, got_b = [], []
    for s1, s2 in zip(first, second):
        got_a.append(s1.token_id)
        got_b.append(s2.token_id)
    assert (got_a, got_b) == (want_a, want_b)


def test_training_mode_is_restored_and_dropout_is_off_while_generating():
    model = tiny_model(4, dropout=0.3)
    prompt = prompt_of(10)
    want = reference_greedy(model.eval(), prompt, 10)
    model.train()
    assert tokens(generate_tokens(model, prompt, GREEDY.replace(max_new_tokens=10))) == want
    assert model.training


# --------------------------------------------------------------------------- parity with transformers


def test_greedy_equals_transformers_generate():
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPTConfig(vocab_size=100, context_length=CTX, n_embd=48, n_layer=2, n_head=3, dropout=0.0)
    hf_cfg = GPT2Config(**{**cfg.to_hf_dict(), "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0})
    torch.manual_seed(0)
    hf = randomize(GPT2LMHeadModel(hf_cfg), seed=11).eval()
    ours = build_model(cfg, hf_to_customgpt_state(hf.state_dict(), cfg, source="hf"))
    hf.generation_config.eos_token_id = None  # neither side stops early: compare every token
    for length, new in [(1, 31), (5, 27), (16, 16), (31, 1)]:
        prompt = prompt_of(length, seed=length, vocab=100)
        with torch.no_grad():
            hf_out = hf.generate(
                torch.tensor([prompt]), attention_mask=torch.ones(1, length, dtype=torch.long),
                do_sample=False, max_new_tokens=new, pad_token_id=0,
            )[0, length:].tolist()
        ours_out = tokens(generate_tokens(ours, prompt, SamplingParams(temperature=0, max_new_tokens=new, stop_at_eot=False)))
        assert len(hf_out) == new
        assert ours_out == hf_out


# --------------------------------------------------------------------------- the LM head


def test_head_copy_follows_weight_changes():
    model = tiny_model(6)
    prompt = prompt_of(9, seed=6)
    assert tokens(generate_tokens(model, prompt, GREEDY)) == reference_greedy(model, prompt, 40)
    with torch.no_grad():
        model.lm_head.weight.mul_(-1.5)  # in place, as an optimizer step would
    assert tokens(generate_tokens(model, prompt, GREEDY)) == reference_greedy(model, prompt, 40)
    model.lm_head.weight = torch.nn.Parameter(torch.randn_like(model.lm_head.weight))  # replaced
    assert tokens(generate_tokens(model, prompt, GREEDY)) == reference_greedy(model, prompt, 40)


def test_a_wrapped_head_is_called_as_it_is():
    class Shifted(torch.nn.Module):  # stands for a LoRA-wrapped head
        def __init__(self, base):
            super().__init__()
            self.base = base

        def forward(self, x):
            out = self.base(x)
            return out + torch.arange(out.shape[-1], dtype=out.dtype)

    model = tiny_model(7)
    prompt = prompt_of(9, seed=7)
    before = tokens(generate_tokens(model, prompt, GREEDY))
    model.lm_head = Shifted(model.lm_head)
    after = tokens(generate_tokens(model, prompt, GREEDY))
    assert after == reference_greedy(model, prompt, 40) != before


def test_weights_changed_in_place_without_a_version_bump_are_seen():
    """A fused AdamW step changes weights without bumping their version counters (as
    ``.data`` writes do): nothing generation keeps may survive from one call to the next."""
    model = tiny_model(8)
    prompt = prompt_of(4)
    first = tokens(generate_tokens(model, prompt, GREEDY))
    with torch.no_grad():
        model.lm_head.weight.data.mul_(-1.0)  # .data: the version counter stays as it was
        for block in model.transformer.h:
            block.mlp.c_fc.weight.data.mul_(1.5)
    after = tokens(generate_tokens(model, prompt, GREEDY))
    assert after == reference_greedy(model, prompt, 40) != first


# --------------------------------------------------------------------------- vocabulary and budget


def test_ids_past_the_tokenizer_vocabulary_are_never_sampled():
    """A model vocabulary padded past the tokenizer's (50,304 for 50,257 in nanoGPT; 97 for
    90 here): the padded ids have the highest logits, yet are never sampled."""
    model = tiny_model(2)
    with torch.no_grad():
        model.lm_head.weight[90:] = model.lm_head.weight[:7] * 50  # the padded rows win the argmax
    prompt = prompt_of(6, seed=2)
    assert any(t >= 90 for t in reference_greedy(model, prompt, 10))
    out = tokens(generate_tokens(model, prompt, GREEDY.replace(max_new_tokens=10), vocab_size=90))
    assert len(out) == 10 and max(out) < 90
    logits = model(torch.tensor([prompt]))[0, -1].detach()
    assert out[0] == int(logits[:90].argmax())


@pytest.mark.parametrize("params", [
    SamplingParams(temperature=1.5, max_new_tokens=60, seed=0, stop_at_eot=False),
    SamplingParams(temperature=1.0, top_p=0.99, repetition_penalty=1.3, max_new_tokens=60, seed=1, stop_at_eot=False),
])
def test_sampled_ids_stay_inside_the_tokenizer_vocabulary(params):
    model = tiny_model(4)
    with torch.no_grad():
        model.lm_head.weight[50:] *= 20
    out = tokens(generate_tokens(model, prompt_of(3), params, vocab_size=50))
    assert len(out) == 60 and max(out) < 50


def test_a_huge_token_budget_allocates_only_a_window(monkeypatch):
    """--max-new-tokens 1000000000000 once tried to allocate 8 TB up front: nothing is sized
    by the budget, and the tokens equal the reference past the window."""
    model = tiny_model(5)
    sizes = []
    real_zeros = torch.zeros

    def zeros(*shape, **kwargs):
        t = real_zeros(*shape, **kwargs)
        sizes.append(t.numel())
        return t

    monkeypatch.setattr(torch, "zeros", zeros)
    prompt = prompt_of(6, seed=5)
    params = GREEDY.replace(max_new_tokens=10**12)
    out = []
    for step in generate_tokens(model, prompt, params):
        out.append(step.token_id)
        if len(out) == 70:
            break
    assert max(sizes) < 10**6
    assert out == reference_greedy(model, prompt, 70)


def test_a_huge_budget_in_a_batch_also_stays_inside_the_window(model):
    params = GREEDY.replace(max_new_tokens=10**12, stop_at_eot=True)
    prompts = [prompt_of(3, seed=1), prompt_of(40, seed=2)]
    free = tokens(generate_tokens(model, prompts[0], GREEDY.replace(max_new_tokens=50)))
    eot = free[45]
    stop_at = free.index(eot)
    results = generate_batch(model, [prompts[0]], params, eot_id=eot)
    assert results[0].token_ids == free[:stop_at] and results[0].finish_reason == "eot"


@pytest.mark.parametrize("tied", [True, False])
def test_lm_head_reads_the_decode_layout_in_place_and_copies_otherwise(tied):
    model = tiny_model(5, tie_embeddings=tied)
    hidden = torch.randn(3, model.config.n_embd, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        ref = model.lm_head(hidden)
        plain = lm_head_for_generation(model)  # (V, C) layout: a transposed copy, its own memory
        assert torch.allclose(plain(hidden), ref, atol=1e-6)
        model.use_decode_layout()
        head = lm_head_for_generation(model)
        assert torch.allclose(head(hidden), ref, atol=1e-6)
        model.lm_head.weight.mul_(2)  # in place, as an optimizer step: the head reads it, no copy
        assert torch.allclose(head(hidden), 2 * ref, atol=1e-5)
        assert torch.allclose(plain(hidden), ref, atol=1e-6)
