"""The model against Hugging Face's GPT2LMHeadModel, and against itself (explicit vs fused
attention, KV cache vs full forward, padded batch vs single rows)."""

from __future__ import annotations

import os

import pytest
import torch
from helpers import random_state, randomize_, tiny_config, tiny_hf_model, tiny_model

from customgpt.checkpoints import build_model, embedding_parameters, export_hf, load_model
from customgpt.config import PRESETS, GPTConfig
from customgpt.model import GPT, ContextLengthError

# Three tiny shapes: an odd head count, a narrower MLP with 5 heads, a tiny vocabulary.
TINY_SHAPES = {
    "odd-heads": dict(vocab_size=100, context_length=32, n_embd=48, n_layer=2, n_head=3),
    "five-heads-mlp2": dict(vocab_size=64, context_length=24, n_embd=40, n_layer=3, n_head=5, mlp_ratio=2),
    "small-vocab-mlp3": dict(vocab_size=11, context_length=16, n_embd=16, n_layer=1, n_head=2, mlp_ratio=3),
}


def _tokens(config: GPTConfig, batch: int = 2, length: int | None = None, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, config.vocab_size, (batch, length or config.context_length), generator=gen)


def _hf_logits(hf_model, idx: torch.Tensor, **kwargs) -> torch.Tensor:
    with torch.no_grad():
        return hf_model(idx, **kwargs).logits


# --------------------------------------------------------------------------- HF parity


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("shape", list(TINY_SHAPES))
def test_hf_to_customgpt_logits_match(tmp_path, shape, attn):
    """HF model → save_pretrained (safetensors) → our load_model: same logits."""
    hf = tiny_hf_model(seed=1, attn_implementation=attn, **TINY_SHAPES[shape])
    hf.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    ours = load_model(tmp_path)
    assert ours.config.n_head == TINY_SHAPES[shape]["n_head"]
    assert ours.config.n_inner == hf.config.n_inner or hf.config.n_inner is None
    idx = _tokens(ours.config)
    with torch.no_grad():
        diff = (ours(idx) - _hf_logits(hf, idx)).abs().max().item()
    assert diff <= 1e-5, diff


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("shape", list(TINY_SHAPES))
def test_customgpt_to_hf_logits_match(tmp_path, shape, attn):
    """Our model → export_hf → GPT2LMHeadModel.from_pretrained: same logits, no key warnings."""
    from transformers import GPT2LMHeadModel

    ours = tiny_model(seed=2, **TINY_SHAPES[shape])
    export_hf(ours, tmp_path)
    hf, loading = GPT2LMHeadModel.from_pretrained(tmp_path, attn_implementation=attn, output_loading_info=True)
    assert not loading["missing_keys"] and not loading["unexpected_keys"] and not loading["mismatched_keys"]
    assert hf.lm_head.weight.data_ptr() == hf.transformer.wte.weight.data_ptr()  # still tied
    idx = _tokens(ours.config, seed=3)
    with torch.no_grad():
        diff = (ours(idx) - _hf_logits(hf.eval(), idx)).abs().max().item()
    assert diff <= 1e-5, diff


def test_hf_pytorch_model_bin_loads(tmp_path):
    """A folder with config.json + pytorch_model.bin (torch.save of the state dict, as older
    transformers wrote it, lm_head.weight and attention buffers included)."""
    hf = tiny_hf_model(seed=4)
    hf.config.save_pretrained(tmp_path)
    state = dict(hf.state_dict())
    assert "lm_head.weight" in state
    for i in range(hf.config.n_layer):  # old checkpoints carry the causal-mask buffers
        state[f"transformer.h.{i}.attn.bias"] = torch.tril(torch.ones(1, 1, 32, 32))
        state[f"transformer.h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    torch.save(state, tmp_path / "pytorch_model.bin")
    ours = load_model(tmp_path)
    idx = _tokens(ours.config)
    with torch.no_grad():
        assert (ours(idx) - _hf_logits(hf, idx)).abs().max().item() <= 1e-5


def test_openai_style_keys_without_prefix(tmp_path):
    """OpenAI's GPT-2 safetensors on the hub store ``h.0...``, ``wte.weight`` (no prefix)."""
    from safetensors.torch import save_file

    hf = tiny_hf_model(seed=5, **TINY_SHAPES["five-heads-mlp2"])
    state = {k.removeprefix("transformer."): v.contiguous() for k, v in hf.state_dict().items() if k != "lm_head.weight"}
    state["h.0.attn.bias"] = torch.tril(torch.ones(1, 1, 24, 24))
    save_file(state, tmp_path / "model.safetensors", metadata={"format": "pt"})
    hf.config.save_pretrained(tmp_path)
    ours = load_model(tmp_path)
    idx = _tokens(ours.config)
    with torch.no_grad():
        assert (ours(idx) - _hf_logits(hf, idx)).abs().max().item() <= 1e-5


def test_gpt2_124m_parity_both_directions(tmp_path):
    """The exact 124M shape, both directions, fp32, one short sequence.

    Random weights are drawn directly (a module's own init of 124M parameters takes seconds):
    for HF → ours, in the shapes of transformers' own GPT2LMHeadModel (built on the meta
    device), saved as a Hugging Face folder that both libraries load.
    """
    from safetensors.torch import save_file
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPTConfig.from_preset("gpt2-124M")
    hf_config = GPT2Config(**config.to_hf_dict())
    idx = torch.randint(0, config.vocab_size, (1, 8), generator=torch.Generator().manual_seed(0))

    # HF → ours
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in GPT2LMHeadModel(hf_config).state_dict().items()}
    del shapes["lm_head.weight"]  # tied: transformers does not store it
    (tmp_path / "hf").mkdir()
    save_file(random_state(shapes, seed=0), tmp_path / "hf" / "model.safetensors", metadata={"format": "pt"})
    hf_config.save_pretrained(tmp_path / "hf")
    hf = GPT2LMHeadModel.from_pretrained(tmp_path / "hf").eval()
    ours = load_model(tmp_path / "hf")
    assert ours.num_parameters() == 124_439_808
    with torch.no_grad():
        diff = (ours(idx) - hf(idx).logits).abs().max().item()
    assert diff <= 1e-4, diff
    del hf, ours

    # ours → HF
    with torch.device("meta"):
        our_shapes = {k: tuple(v.shape) for k, v in GPT(config).state_dict().items() if k != "lm_head.weight"}
    mine = build_model(config, random_state(our_shapes, seed=1))
    export_hf(mine, tmp_path / "export", include_tokenizer=False)
    back = GPT2LMHeadModel.from_pretrained(tmp_path / "export").eval()
    with torch.no_grad():
        diff = (mine(idx) - back(idx).logits).abs().max().item()
    assert diff <= 1e-4, diff


@pytest.mark.parametrize("preset", ["gpt2-124M", "gpt2-355M", "gpt2-774M", "gpt2-1558M"])
def test_parameter_counts_match_hf(preset):
    """Shapes built on the meta device: no memory for 1.5B parameters."""
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPTConfig.from_preset(preset)
    with torch.device("meta"):
        ours = GPT(config)
        hf = GPT2LMHeadModel(GPT2Config(**config.to_hf_dict()))
    assert ours.num_parameters() == hf.num_parameters() == config.num_parameters()
    assert ours.num_parameters() - embedding_parameters(config) == hf.num_parameters(exclude_embeddings=True)
    if preset == "gpt2-124M":
        assert ours.num_parameters() == 124_439_808


def test_cpu_presets_have_valid_shapes():
    for name in (p for p in PRESETS if p.startswith("cpu-")):
        config = GPTConfig.from_preset(name)
        with torch.device("meta"):
            assert GPT(config).num_parameters() == config.num_parameters()


# --------------------------------------------------------------------------- explicit vs fused


def _pair(**overrides) -> tuple[GPT, GPT]:
    """The same random weights in the fused ("fast") and the written-out ("explicit") model.

    Weights at GPT-2's init scale (std 0.02): the two paths round differently (LayerNorm's
    variance, the tanh-GELU polynomial), a few float32 ulps of the logits, so the 1e-6
    bound holds with margin for logits of order 1, not for much larger ones.
    """
    fast = tiny_model(seed=7, std=0.02, **overrides)
    explicit = build_model(fast.config.replace(impl="explicit"), fast.state_dict())
    return fast, explicit


def _left_padded(config: GPTConfig, lengths: list[int], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    T = max(lengths)
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, config.vocab_size, (len(lengths), T), generator=gen)
    mask = torch.zeros(len(lengths), T, dtype=torch.long)
    for row, n in enumerate(lengths):
        mask[row, T - n :] = 1
        idx[row, : T - n] = 0  # pad id: never attended to, so its value must not matter
    return idx, mask


def test_explicit_and_fused_attention_agree():
    fast, explicit = _pair()
    idx = _tokens(fast.config, batch=3)
    with torch.no_grad():
        assert (fast(idx) - explicit(idx)).abs().max().item() <= 1e-6
        pidx, mask = _left_padded(fast.config, [20, 13, 5])
        a = fast(pidx, attention_mask=mask)
        b = explicit(pidx, attention_mask=mask)
        real = mask.bool()
        assert (a[real] - b[real]).abs().max().item() <= 1e-6
        cache_f, cache_e = fast.new_kv_cache(batch_size=3), explicit.new_kv_cache(batch_size=3)
        out_f = [fast(idx[:, :10], kv_cache=cache_f)]
        out_e = [explicit(idx[:, :10], kv_cache=cache_e)]
        for t in range(10, 16):
            out_f.append(fast(idx[:, t : t + 1], kv_cache=cache_f, input_pos=t))
            out_e.append(explicit(idx[:, t : t + 1], kv_cache=cache_e, input_pos=t))
        assert (torch.cat(out_f, 1) - torch.cat(out_e, 1)).abs().max().item() <= 1e-6


def test_explicit_training_mode_without_dropout_matches_fused():
    """Dropout 0 in train mode: both paths still agree (SDPA's training branch included)."""
    fast, explicit = _pair()
    fast.train()
    explicit.train()
    idx = _tokens(fast.config)
    assert (fast(idx) - explicit(idx)).abs().max().item() <= 1e-6


# --------------------------------------------------------------------------- KV cache and padding


def test_kv_cache_matches_full_forward():
    model = tiny_model(seed=8)
    idx = _tokens(model.config, batch=2, length=20)
    with torch.no_grad():
        full = model(idx)
        cache = model.new_kv_cache(batch_size=2)
        pieces = [model(idx[:, :7], kv_cache=cache, input_pos=0)]  # prefill
        pieces.append(model(idx[:, 7:10], kv_cache=cache, input_pos=7))  # a chunk after the prefill
        for t in range(10, 20):  # then token by token
            pieces.append(model(idx[:, t : t + 1], kv_cache=cache, input_pos=t))
        assert (torch.cat(pieces, 1) - full).abs().max().item() <= 1e-5
        # Starting again at 0 gives the same answer again (nothing stale is read).
        again = model(idx[:, :12], kv_cache=cache)
        assert (again - full[:, :12]).abs().max().item() <= 1e-5
        # Two caches on one model do not share state.
        other = model.new_kv_cache(batch_size=2)
        model(idx[:, :3].flip(0), kv_cache=other)
        step = model(idx[:, 12:13], kv_cache=cache, input_pos=12)
        assert (step[:, 0] - full[:, 12]).abs().max().item() <= 1e-5


def test_left_padded_batch_matches_rows_alone():
    model = tiny_model(seed=9)
    lengths = [17, 9, 4]
    idx, mask = _left_padded(model.config, lengths, seed=1)
    T = idx.shape[1]
    with torch.no_grad():
        batched = model(idx, attention_mask=mask)
        for row, n in enumerate(lengths):
            alone = model(idx[row : row + 1, T - n :])
            assert (batched[row, T - n :] - alone[0]).abs().max().item() <= 1e-5


def test_left_padded_batch_with_kv_cache():
    """Prefill a padded batch, then decode step by step with the mask extended."""
    model = tiny_model(seed=10)
    lengths = [12, 6]
    idx, mask = _left_padded(model.config, lengths, seed=2)
    gen = torch.Generator().manual_seed(3)
    steps = torch.randint(0, model.config.vocab_size, (2, 5), generator=gen)
    T = idx.shape[1]
    with torch.no_grad():
        cache = model.new_kv_cache(batch_size=2)
        outs = [model(idx, attention_mask=mask, kv_cache=cache, input_pos=0)[:, -1:]]
        for t in range(steps.shape[1]):
            mask = torch.cat([mask, torch.ones(2, 1, dtype=mask.dtype)], dim=1)
            outs.append(model(steps[:, t : t + 1], attention_mask=mask, kv_cache=cache, input_pos=T + t))
        cached = torch.cat(outs, 1)  # logits after the prompt and after each step
        for row, n in enumerate(lengths):
            seq = torch.cat([idx[row, T - n :], steps[row]])[None]
            alone = model(seq)[0, n - 1 :]
            assert (cached[row] - alone).abs().max().item() <= 1e-5


# --------------------------------------------------------------------------- context window


def test_input_longer_than_context_raises():
    model = tiny_model(seed=11)
    ctx = model.config.context_length
    model(torch.zeros(1, ctx, dtype=torch.long))  # exactly the window is fine
    with pytest.raises(ContextLengthError, match=str(ctx)):
        model(torch.zeros(1, ctx + 1, dtype=torch.long))
    cache = model.new_kv_cache(batch_size=1)
    model(torch.zeros(1, ctx - 1, dtype=torch.long), kv_cache=cache)
    model(torch.zeros(1, 1, dtype=torch.long), kv_cache=cache, input_pos=ctx - 1)
    with pytest.raises(ContextLengthError):  # the cache does not wrap around either
        model(torch.zeros(1, 1, dtype=torch.long), kv_cache=cache, input_pos=ctx)
    small = model.new_kv_cache(batch_size=1, max_len=4)
    with pytest.raises(ContextLengthError, match="KV cache holds 4 positions; 5 needed"):
        model(torch.zeros(1, 5, dtype=torch.long), kv_cache=small)
    with pytest.raises(ContextLengthError, match="exceeds the context window"):
        model.new_kv_cache(batch_size=1, max_len=ctx + 1)


def test_hf_random_init_also_matches_after_randomize():
    """Guard for the helpers: randomize_ touches every parameter (LayerNorm included)."""
    model = randomize_(GPT(tiny_config()), seed=0)
    assert not torch.equal(model.transformer.ln_f.weight, torch.ones_like(model.transformer.ln_f.weight))
    assert model.transformer.h[0].attn.c_attn.bias.abs().sum() > 0


def test_left_padded_batch_with_explicit_position_ids_and_cache():
    """The server's way: each row's positions given explicitly, the padding mask over the cache."""
    model = tiny_model(12)
    lengths = [5, 11]
    idx, mask = _left_padded(model.config, lengths, seed=4)
    T = idx.shape[1]
    positions = (mask.cumsum(-1) - 1).clamp_min(0)
    nxt = torch.tensor([[3], [7]])
    with torch.no_grad():
        cache = model.new_kv_cache(batch_size=2, max_len=T + 1)
        model(idx, attention_mask=mask, position_ids=positions, kv_cache=cache)
        mask = torch.cat([mask, torch.ones(2, 1, dtype=mask.dtype)], dim=1)
        got = model(nxt, attention_mask=mask, position_ids=positions[:, -1:] + 1, kv_cache=cache, input_pos=T)
        for row, n in enumerate(lengths):
            alone = model(torch.cat([idx[row, T - n :], nxt[row]])[None])[0, -1]
            assert (got[row, 0] - alone).abs().max().item() <= 1e-5


def test_decode_layout_keeps_values_shapes_and_parameters(tmp_path):
    from customgpt.checkpoints import load_model, save_model

    model = tiny_model(13)
    idx = _tokens(model.config, batch=2, length=9)
    params = dict(model.named_parameters())
    with torch.no_grad():
        before = model(idx)
        model.use_decode_layout()
        model.use_decode_layout()  # idempotent
        after = model(idx)
    assert (before - after).abs().max().item() <= 1e-6
    assert dict(model.named_parameters()).keys() == params.keys()
    assert all(p is params[name] for name, p in model.named_parameters())
    c_attn = model.transformer.h[0].attn.c_attn.weight
    assert c_attn.shape == (3 * model.config.n_embd, model.config.n_embd) and c_attn.t().is_contiguous()
    assert model.transformer.h[0].mlp.c_proj.weight.is_contiguous()  # narrowing: left as it is
    head = model.lm_head.weight  # the LM head too (tied: the token embedding is the same tensor)
    assert head.shape == (model.config.vocab_size, model.config.n_embd) and head.t().is_contiguous()
    save_model(model, tmp_path / "m")
    with torch.no_grad():
        assert torch.equal(load_model(tmp_path / "m")(idx), after)


def _vm_flags(address: int) -> list[str]:
    """The VmFlags of this process's memory mapping that holds ``address`` (Linux)."""
    lines = open("/proc/self/smaps").read().splitlines()
    for i, line in enumerate(lines):
        first = line.split()[0]
        if "-" in first and all(c in "0123456789abcdef-" for c in first):
            lo, hi = (int(x, 16) for x in first.split("-"))
            if lo <= address < hi:
                flags = next(x for x in lines[i + 1 :] if x.startswith("VmFlags:"))
                return flags.split()[1:]
    raise AssertionError(f"no mapping holds {address:#x}")


@pytest.mark.skipif(not os.path.exists("/proc/self/smaps"), reason="reads Linux's /proc/self/smaps")
def test_decode_layout_memory_is_marked_for_huge_pages():
    """The re-laid-out weights' memory asks the kernel for huge pages (madvise MADV_HUGEPAGE,
    shown as the ``hg`` flag of the mapping) before it is first written."""
    from customgpt.model import _empty_on_huge_pages

    tensor = _empty_on_huge_pages((1024, 2048), torch.float32)  # 8 MiB: whole 2 MiB pages inside
    assert tensor.shape == (1024, 2048) and tensor.dtype == torch.float32
    middle = tensor.data_ptr() + tensor.nbytes // 2
    assert "hg" in _vm_flags(middle)
    model = tiny_model(14)
    model.use_decode_layout()  # tiny weights: no whole 2 MiB page, only the layout changes
    assert model.transformer.h[0].attn.c_attn.weight.t().is_contiguous()
