"""``model.token_embedding_init: zero``: the token table starts at zero, the rest of the
model is initialised exactly as usual, and a token the training data never shows still has a
zero embedding after training."""

from __future__ import annotations

import csv

import pytest
import torch

from customgpt.classifier import load_classifier
from customgpt.errors import ConfigError
from customgpt.tokenizer import get_tokenizer
from customgpt.train.classify import ClassifyConfig, finetune_classify
from customgpt.train.config import ModelSection, load_config

SHAPE = dict(preset="cpu-tiny", n_layer=1, n_embd=16, n_head=2, context_length=32)


def _build(**changes):
    torch.manual_seed(0)
    return ModelSection(**SHAPE, **changes).build()


@pytest.mark.parametrize("buckets", [None, 64])
def test_zero_init_zeroes_the_token_table_and_nothing_else(buckets):
    normal = _build(token_ngram_buckets=buckets)
    zero = _build(token_ngram_buckets=buckets, token_embedding_init="zero")
    assert normal.transformer.wte.weight.abs().sum() > 0
    for (name, a), (_, b) in zip(normal.state_dict().items(), zero.state_dict().items(), strict=True):
        if name in ("transformer.wte.weight", "lm_head.weight"):  # the head is tied to the token table
            assert b.abs().sum() == 0, name
        else:
            torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


def test_zero_init_is_refused_for_loaded_weights():
    with pytest.raises(ConfigError, match="token_embedding_init"):
        ModelSection(init="some/folder", preset=None, token_embedding_init="zero")
    with pytest.raises(ConfigError, match="token_embedding_init"):
        ModelSection(token_embedding_init="uniform")


def _write(path, rows):
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["text", "label"])
        writer.writerows(rows)


def test_unseen_tokens_keep_a_zero_embedding_after_training(tmp_path):
    train = [("win a free prize now call", "spam"), ("see you at lunch", "ham")] * 8
    val = [("free prize call", "spam"), ("lunch at noon", "ham")]
    test = [("claim your reward today", "spam"), ("meet me later", "ham")]
    for name, rows in (("train", train), ("val", val), ("test", test)):
        _write(tmp_path / f"{name}.csv", rows)
    cfg = load_config(ClassifyConfig, None, [
        ("model.preset", "cpu-tiny"), ("model.n_embd", "16"), ("model.n_layer", "1"), ("model.n_head", "2"),
        ("model.token_ngram_buckets", "64"), ("model.token_embedding_init", "zero"),
        ("data.dataset", "none"), ("data.train_file", str(tmp_path / "train.csv")),
        ("data.val_file", str(tmp_path / "val.csv")), ("data.test_file", str(tmp_path / "test.csv")),
        ("data.max_length", "16"), ("classifier.trainable", "all"), ("classifier.pooling", "mean"),
        ("train.epochs", "2"), ("train.batch_size", "4"), ("train.lr", "1e-2"), ("optim.weight_decay", "0.1"),
        ("logging.out_dir", str(tmp_path / "run")), ("logging.progress", "false"), ("logging.plots", "false"),
        ("runtime.device", "cpu")])
    finetune_classify(cfg)
    model, _ = load_classifier(tmp_path / "run" / "best")
    wte = model.gpt.transformer.wte
    tok = get_tokenizer()
    seen = {i for text, _ in train for i in tok.encode(text)}
    unseen = {i for text, _ in val + test for i in tok.encode(text)} - seen
    assert unseen and seen
    for i in seen:
        assert wte.weight[i].abs().sum() > 0, tok.decode([i])
    for i in unseen:
        assert wte.weight[i].abs().sum() == 0, tok.decode([i])
    assert wte.ngrams.weight.abs().sum() > 0  # the n-gram buckets keep their random start
