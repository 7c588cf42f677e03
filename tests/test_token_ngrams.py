"""Character n-gram token embeddings: the n-grams, the table, the embedding by hand, and a
GPT that carries them through saving, loading, generation and the Hugging Face boundary."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import tiny_hf_model

from customgpt.checkpoints import export_hf, load_model, save_model
from customgpt.classifier import GPTClassifier
from customgpt.config import GPTConfig
from customgpt.errors import ConfigError
from customgpt.generate import SamplingParams, generate_tokens
from customgpt.model import GPT
from customgpt.token_ngrams import (
    TokenNgramEmbedding,
    gpt2_ngram_table,
    ngram_bucket,
    ngram_table,
    token_ngrams,
)
from customgpt.tokenizer import get_tokenizer
from customgpt.train.config import ModelSection

BUCKETS = 97


def _config(**changes) -> GPTConfig:
    return GPTConfig(**{"context_length": 32, "n_embd": 16, "n_layer": 2, "n_head": 2,
                        "token_ngram_buckets": BUCKETS, **changes})


def test_token_ngrams_by_hand():
    assert token_ngrams("Hi") == ["<h", "<hi", "<hi>", "hi", "hi>", "i>"]
    assert token_ngrams(" FREE") == token_ngrams(" free") == token_ngrams(" Free")
    assert "<  free>" not in token_ngrams(" free") and "< free>" in token_ngrams(" free")  # the whole token
    assert token_ngrams(" free") != token_ngrams("free")  # the leading space is part of the spelling


def test_table_rows_are_means_over_each_tokens_ngrams():
    tokens = ["Hi", " FREE", " free", "x"]
    ids, weights = ngram_table(tokens, BUCKETS)
    for v, token in enumerate(tokens):
        grams = token_ngrams(token)
        n = len(grams)
        assert ids[v, :n].tolist() == [ngram_bucket(g, BUCKETS) for g in grams]
        assert torch.allclose(weights[v, :n], torch.full((n,), 1.0 / n)) and not weights[v, n:].any()
        assert not ids[v, n:].any()
    assert torch.equal(ids[1], ids[2]) and torch.equal(weights[1], weights[2])  # case-blind spelling
    assert ngram_bucket("<hi>", BUCKETS) == ngram_bucket("<hi>", BUCKETS) < BUCKETS  # stable, in range
    with pytest.raises(ConfigError, match="buckets"):
        ngram_table(tokens, 0)


def test_embedding_is_wte_plus_the_mean_ngram_row():
    torch.manual_seed(0)
    tok = get_tokenizer()
    emb = TokenNgramEmbedding(tok.vocab_size, 8, BUCKETS)
    ids = torch.tensor([[tok.encode(" FREE")[0], tok.encode(" free")[0], 198], [198, 0, 50256]])
    got = emb(ids)
    for b in range(2):
        for t in range(3):
            token = tok.token_bytes(int(ids[b, t])).decode("utf-8", "backslashreplace")
            rows = [emb.ngrams.weight[ngram_bucket(g, BUCKETS)] for g in token_ngrams(token)]
            expected = emb.weight[ids[b, t]] + torch.stack(rows).mean(0)
            torch.testing.assert_close(got[b, t], expected, rtol=1e-5, atol=1e-6)
    # " FREE" and " free": the same spelling part, different ids
    torch.testing.assert_close(got[0, 0] - emb.weight[ids[0, 0]], got[0, 1] - emb.weight[ids[0, 1]])
    got.sum().backward()
    assert emb.ngrams.weight.grad.abs().sum() > 0 and emb.weight.grad[ids[0, 0]].abs().sum() > 0


def test_partial_utf8_tokens_keep_distinct_spellings():
    ids, _ = gpt2_ngram_table(get_tokenizer().vocab_size, 1 << 20)
    tok = get_tokenizer()
    partial = [i for i in range(256) if not _is_utf8(tok.token_bytes(i))][:2]  # e.g. lone 0x80, 0x81
    assert len(partial) == 2 and not torch.equal(ids[partial[0]], ids[partial[1]])


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def test_gpt_with_ngrams_counts_saves_loads_and_generates(tmp_path):
    torch.manual_seed(0)
    model = GPT(_config()).eval()
    assert isinstance(model.transformer.wte, TokenNgramEmbedding)
    assert model.lm_head.weight is model.transformer.wte.weight  # still tied
    assert model.num_parameters() == model.config.num_parameters()
    assert "transformer.wte.ngrams.weight" in model.state_dict()
    x = torch.tensor([[464, 2068, 7586, 21831]])
    plain = GPT(_config(token_ngram_buckets=0)).eval()
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if "ngrams" not in k})
    assert not torch.allclose(model(x), plain(x))  # the spelling changes the logits

    save_model(model, tmp_path / "m")
    loaded = load_model(tmp_path / "m").eval()
    assert loaded.config.token_ngram_buckets == BUCKETS
    torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)

    params = SamplingParams(max_new_tokens=8, temperature=0.0, stop_at_eot=False)
    cached = [s.token_id for s in generate_tokens(loaded, [464, 2068], params)]
    uncached = [s.token_id for s in generate_tokens(loaded, [464, 2068], params, use_cache=False)]
    assert cached == uncached and len(cached) == 8


def test_hugging_face_export_and_bad_configs_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="n-gram"):
        export_hf(GPT(_config()), tmp_path / "hf")
    assert not (tmp_path / "hf" / "model.safetensors").exists()
    for bad in (-1, 1.5, True):
        with pytest.raises(ConfigError, match="token_ngram_buckets"):
            _config(token_ngram_buckets=bad)
    with pytest.raises(ConfigError, match="GPT-2 vocabulary"):
        GPT(_config(vocab_size=100))(torch.tensor([[1, 2]]))


def test_mean_by_embedding_bag_matches_a_dense_mean():
    torch.manual_seed(0)
    table = torch.randn(BUCKETS, 4)
    ids, weights = ngram_table(["ab", " cde", "f"], BUCKETS)
    bag = F.embedding_bag(ids, table, per_sample_weights=weights, mode="sum")
    dense = torch.stack([table[ids[v, : int((weights[v] > 0).sum())]].mean(0) for v in range(3)])
    torch.testing.assert_close(bag, dense)


def test_ngrams_added_to_pretrained_weights_start_at_zero_and_train(tmp_path):
    hf = tiny_hf_model(vocab_size=50257, n_embd=16, n_head=2, n_layer=2)
    hf.save_pretrained(tmp_path / "hf")
    x = torch.tensor([[464, 2068, 7586, 21831, 625]])
    base = load_model(tmp_path / "hf").eval()
    model = ModelSection(preset=None, init=str(tmp_path / "hf"), token_ngram_buckets=BUCKETS).build().eval()
    assert model.config.token_ngram_buckets == BUCKETS and isinstance(model.transformer.wte, TokenNgramEmbedding)
    assert model.transformer.wte.ngrams.weight.abs().sum() == 0
    assert model.lm_head.weight is model.transformer.wte.weight  # the head stays tied to the same table
    torch.testing.assert_close(model(x), base(x), rtol=0, atol=0)  # exactly the pretrained model at first

    clf = GPTClassifier(model, num_classes=2)
    clf.set_trainable("last_blocks")
    assert clf.gpt.transformer.wte.ngrams.weight.requires_grad  # new, like the head
    assert not clf.gpt.transformer.wte.weight.requires_grad and not clf.gpt.transformer.h[0].attn.c_attn.weight.requires_grad
    clf(x).sum().backward()
    assert clf.gpt.transformer.wte.ngrams.weight.grad.abs().sum() > 0

    save_model(model, tmp_path / "ours")
    with pytest.raises(ConfigError, match="model.token_ngram_buckets: .* have 97 n-gram buckets, not 98"):
        ModelSection(preset=None, init=str(tmp_path / "ours"), token_ngram_buckets=BUCKETS + 1).build()
    again = ModelSection(preset=None, init=str(tmp_path / "ours"), token_ngram_buckets=BUCKETS).build().eval()
    torch.testing.assert_close(again(x), model(x), rtol=0, atol=0)
    with pytest.raises(ConfigError, match="already has"):
        again.add_token_ngrams(BUCKETS)
    with pytest.raises(ConfigError, match=">= 1"):
        base.add_token_ngrams(0)
