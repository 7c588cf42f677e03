"""The classifier on the GPT body: pooling under right padding, what trains, losses, metrics, save/load."""

from __future__ import annotations

import json

import pytest
import torch

from customgpt.classifier import (
    GPTClassifier,
    load_classifier,
    pool_hidden,
    predict_texts,
    save_classifier,
)
from customgpt.config import GPTConfig
from customgpt.data.classification import collate_classification
from customgpt.errors import CheckpointError, ConfigError
from customgpt.model import GPT

PAD = 7


def _gpt(seed: int = 0, **changes) -> GPT:
    torch.manual_seed(seed)
    cfg = GPTConfig(vocab_size=50, context_length=16, n_embd=16, n_layer=2, n_head=2, **changes)
    return GPT(cfg).eval()


def _loud_pad(gpt: GPT) -> None:
    """Give the pad token a huge embedding: any leak of a pad position would show."""
    with torch.no_grad():
        gpt.transformer.wte.weight[PAD] = 50.0


ROWS = [[3, 9, 4, 1, 5], [2, 6], [8, PAD, 4]]  # the last row holds the pad id as a real token


@pytest.mark.parametrize("pooling", ["last", "mean", "max"])
def test_pooling_ignores_right_padding(pooling):
    gpt = _gpt()
    _loud_pad(gpt)
    batch = collate_classification([(ids, 0) for ids in ROWS], pad_id=PAD)
    hidden = gpt.forward_hidden(batch["input_ids"])
    pooled = pool_hidden(hidden, batch["attention_mask"], pooling)
    for i, ids in enumerate(ROWS):
        alone = gpt.forward_hidden(torch.tensor([ids]))[0]  # (T_i, C), no padding at all
        expected = {"last": alone[-1], "mean": alone.mean(0), "max": alone.max(0).values}[pooling]
        torch.testing.assert_close(pooled[i], expected, rtol=1e-5, atol=1e-5)
    # a naive "last position" pooling would read the (loud) pad's hidden state instead
    naive = hidden[:, -1]
    assert not torch.allclose(naive[1], pooled[1], atol=1e-2)


def test_last_pooling_picks_the_last_real_token_by_hand():
    hidden = torch.arange(2 * 4 * 3, dtype=torch.float32).view(2, 4, 3)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    assert pool_hidden(hidden, mask, "last").tolist() == [hidden[0, 1].tolist(), hidden[1, 3].tolist()]
    assert pool_hidden(hidden, mask, "mean")[0].tolist() == hidden[0, :2].mean(0).tolist()
    assert pool_hidden(hidden, None, "last").tolist() == hidden[:, -1].tolist()
    descending = -hidden  # the largest values are then at the first positions
    assert pool_hidden(descending, mask, "max").tolist() == [descending[0, 0].tolist(), descending[1, 0].tolist()]
    assert pool_hidden(hidden, mask, "max").tolist() == [hidden[0, 1].tolist(), hidden[1, 3].tolist()]
    for pooling in ("last", "max"):
        with pytest.raises(ValueError, match="no real tokens"):
            pool_hidden(hidden, torch.zeros(2, 4, dtype=torch.long), pooling)


def test_classifier_logits_do_not_depend_on_batch_mates():
    model = GPTClassifier(_gpt(), num_classes=3, pooling="last").eval()
    _loud_pad(model.gpt)
    batch = collate_classification([(ids, 0) for ids in ROWS], pad_id=PAD)
    together = model(batch["input_ids"], batch["attention_mask"])
    assert together.shape == (3, 3)
    for i, ids in enumerate(ROWS):
        alone = model(torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long))
        torch.testing.assert_close(together[i], alone[0], rtol=1e-5, atol=1e-5)


def test_set_trainable_modes():
    model = GPTClassifier(_gpt(), 2)

    def trainable():
        return {n for n, p in model.named_parameters() if p.requires_grad}

    model.set_trainable("head")
    assert trainable() == {"score.weight", "score.bias"}
    model.set_trainable("last_blocks", 1)
    names = trainable()
    assert {"score.weight", "gpt.transformer.ln_f.weight", "gpt.transformer.h.1.attn.c_attn.weight"} <= names
    assert not any(n.startswith("gpt.transformer.h.0.") for n in names)
    assert "gpt.transformer.wte.weight" not in names
    model.set_trainable("last_blocks", 2)
    assert any(n.startswith("gpt.transformer.h.0.") for n in trainable())
    model.set_trainable("all")
    assert trainable() == {n for n, _ in model.named_parameters()}
    with pytest.raises(ConfigError, match="last_blocks must be in 1..2"):
        model.set_trainable("last_blocks", 3)
    with pytest.raises(ConfigError, match="trainable must be one of"):
        model.set_trainable("everything")


def test_lora_trainable_and_saved_merged(tmp_path):
    from customgpt.lora import LoRAConfig, inject_lora

    model = GPTClassifier(_gpt(), 2)
    inject_lora(model.gpt, LoRAConfig(r=2, alpha=4, targets=("c_attn",)))
    model.set_trainable("lora")
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert names == {"score.weight", "score.bias"} | {
        f"gpt.transformer.h.{i}.attn.c_attn.lora_{m}" for i in range(2) for m in "AB"}
    with torch.no_grad():
        for i in range(2):
            model.gpt.transformer.h[i].attn.c_attn.lora_B.normal_()
    model.eval()
    x = torch.tensor([[1, 2, 3, 4]])
    expected = model(x)
    save_classifier(model, tmp_path / "clf", ["no", "yes"], max_length=8)
    loaded, _ = load_classifier(tmp_path / "clf")
    torch.testing.assert_close(loaded(x), expected, rtol=1e-5, atol=1e-5)


def test_save_load_roundtrip(tmp_path):
    model = GPTClassifier(_gpt(), 3, pooling="mean").eval()
    with torch.no_grad():
        model.score.bias.copy_(torch.tensor([0.1, -0.2, 0.3]))
    folder = save_classifier(model, tmp_path / "best", ["a", "b", "c"], max_length=12, extra={"epoch": 2})
    assert sorted(p.name for p in folder.iterdir()) == [
        "classifier.json", "classifier.safetensors", "config.json", "metadata.json", "model.safetensors"]
    assert not (tmp_path / "best.tmp").exists()
    loaded, info = load_classifier(folder)
    assert info["labels"] == ["a", "b", "c"] and info["pooling"] == "mean" and info["max_length"] == 12
    assert info["epoch"] == 2
    x = torch.tensor([[1, 2, 3], [4, 5, 6]])
    torch.testing.assert_close(loaded(x), model(x))
    # saving again replaces the folder whole
    save_classifier(model, folder, ["a", "b", "c"], max_length=5)
    assert load_classifier(folder)[1]["max_length"] == 5

    probs = predict_texts(loaded, ["abc", "a much longer text here"], lambda s: [ord(c) % 50 for c in s], max_length=4)
    assert probs.shape == (2, 3)
    torch.testing.assert_close(probs.sum(-1), torch.ones(2))
    ids = [ord(c) % 50 for c in "a much longer text here"][:4]
    torch.testing.assert_close(probs[1], torch.softmax(loaded(torch.tensor([ids])), -1)[0])


def test_load_errors(tmp_path):
    with pytest.raises(CheckpointError, match="not a classifier folder"):
        load_classifier(tmp_path)
    with pytest.raises(ConfigError, match="2 label names for a 3-class head"):
        save_classifier(GPTClassifier(_gpt(), 3), tmp_path / "x", ["a", "b"], max_length=4)
    # a run folder given instead of its classifier: the classifiers inside it are named
    save_classifier(GPTClassifier(_gpt(), 2), tmp_path / "run" / "best", ["a", "b"], max_length=4)
    with pytest.raises(CheckpointError, match=r"run is not a classifier folder, but its subfolder\(s\) best are: "
                       r"pass one of them, e.g. .*run/best$"):
        load_classifier(tmp_path / "run")


ENSEMBLE_JSON = {"format": "customgpt-classifier", "labels": ["ham", "spam"], "pooling": "last", "max_length": 64,
                 "members": ["member-0", "member-1"], "weights": [0.5, 0.5]}


@pytest.mark.parametrize("extra, option", [
    ({}, "an ensemble of several classifiers (classifier.ensemble)"),  # the folder spam-small saved before
    ({"members": None, "weights": None, "kind": "char_ngram"},
     "a character n-gram classifier (classifier.char_ngram_weight)"),
])
def test_folder_saved_with_a_removed_option_is_refused_by_name(tmp_path, extra, option):
    folder = tmp_path / "best"
    folder.mkdir()
    info = {k: v for k, v in {**ENSEMBLE_JSON, **extra}.items() if v is not None}
    (folder / "classifier.json").write_text(json.dumps(info))
    with pytest.raises(CheckpointError) as err:
        load_classifier(folder)
    assert str(err.value) == (f"{folder} was saved with {option}, an option this version no longer has; it cannot "
                              "be loaded. Train the classifier again with `customgpt finetune classify`")


def test_body_with_token_ngram_buckets_is_refused_by_name(tmp_path):
    folder = save_classifier(GPTClassifier(_gpt(), 2), tmp_path / "best", ["a", "b"], max_length=4)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "token_ngram_buckets": 512}))
    with pytest.raises(CheckpointError, match=r"best was saved with hashed token n-gram embeddings "
                                              r"\(model\.token_ngram_buckets\), an option this version"):
        load_classifier(folder)


def test_constructor_checks():
    with pytest.raises(ConfigError, match="pooling"):
        GPTClassifier(_gpt(), 2, pooling="median")
    with pytest.raises(ConfigError, match="at least 2 classes"):
        GPTClassifier(_gpt(), 1)
