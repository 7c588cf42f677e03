"""The classifier on the GPT body: pooling under right padding, what trains, losses, metrics, save/load."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from customgpt.classifier import (
    ClassifierEnsemble,
    GPTClassifier,
    classification_loss,
    load_classifier,
    pool_hidden,
    predict_texts,
    save_classifier,
)
from customgpt.config import GPTConfig
from customgpt.data.classification import collate_classification
from customgpt.errors import CheckpointError, ConfigError
from customgpt.metrics import classification_report, confusion_matrix, format_report
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


def test_ensemble_averages_member_probabilities(tmp_path):
    members = [GPTClassifier(_gpt(seed), 3, pooling=pooling).eval() for seed, pooling in ((1, "last"), (2, "mean"))]
    ensemble = ClassifierEnsemble(members).eval()
    x = torch.tensor([[1, 2, 3, PAD], [4, 5, 6, 7]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    expected = (torch.softmax(members[0](x, mask), -1) + torch.softmax(members[1](x, mask), -1)) / 2
    torch.testing.assert_close(torch.softmax(ensemble(x, mask), -1), expected)
    torch.testing.assert_close(ensemble(x, mask).exp(), expected)  # the output is log mean probability
    assert ensemble.num_parameters() == sum(m.num_parameters() for m in members)

    folder = save_classifier(ensemble, tmp_path / "best", ["a", "b", "c"], max_length=9, extra={"seeds": [1, 2]})
    assert sorted(p.name for p in folder.iterdir()) == ["classifier.json", "member-0", "member-1"]
    assert not (tmp_path / "best.tmp").exists()
    loaded, info = load_classifier(folder)
    assert isinstance(loaded, ClassifierEnsemble) and len(loaded.members) == 2
    assert info["members"] == ["member-0", "member-1"] and info["seeds"] == [1, 2] and info["max_length"] == 9
    assert [m.pooling for m in loaded.members] == ["last", "mean"]
    torch.testing.assert_close(loaded(x, mask), ensemble(x, mask))
    member, member_info = load_classifier(folder / "member-1")  # every member is a classifier on its own
    assert member_info["pooling"] == "mean"
    torch.testing.assert_close(member(x, mask), members[1](x, mask))
    probs = predict_texts(loaded, ["abc"], lambda s: [ord(c) % 50 for c in s], max_length=4)
    torch.testing.assert_close(probs[0], torch.softmax(ensemble(torch.tensor([[47, 48, 49]])), -1)[0])


def test_ensemble_errors(tmp_path):
    with pytest.raises(ConfigError, match="at least one member"):
        ClassifierEnsemble([])
    with pytest.raises(ConfigError, match="number of classes"):
        ClassifierEnsemble([GPTClassifier(_gpt(), 2), GPTClassifier(_gpt(), 3)])
    ensemble = ClassifierEnsemble([GPTClassifier(_gpt(1), 2), GPTClassifier(_gpt(2), 2)])
    folder = save_classifier(ensemble, tmp_path / "e", ["x", "y"], max_length=4)
    info_path = folder / "classifier.json"
    info = info_path.read_text()
    info_path.write_text(info.replace('"member-1"', '"../elsewhere"'))
    with pytest.raises(CheckpointError, match="'members' must be"):
        load_classifier(folder)
    info_path.write_text(info)
    member_info = folder / "member-1" / "classifier.json"
    member_info.write_text(member_info.read_text().replace('"y"', '"z"'))
    with pytest.raises(CheckpointError, match="differ from the ensemble"):
        load_classifier(folder)


def test_constructor_checks():
    with pytest.raises(ConfigError, match="pooling"):
        GPTClassifier(_gpt(), 2, pooling="median")
    with pytest.raises(ConfigError, match="at least 2 classes"):
        GPTClassifier(_gpt(), 1)


# --------------------------------------------------------------------------- losses


def test_cross_entropy_options():
    logits = torch.tensor([[2.0, 0.0], [0.5, 1.5], [0.0, 0.0]])
    targets = torch.tensor([0, 1, 1])
    torch.testing.assert_close(classification_loss(logits, targets), F.cross_entropy(logits, targets))
    w = torch.tensor([1.0, 3.0])
    per = F.cross_entropy(logits, targets, reduction="none")
    expected = (per * w[targets]).sum() / w[targets].sum()
    torch.testing.assert_close(classification_loss(logits, targets, class_weights=w), expected)
    smooth = classification_loss(logits, targets, label_smoothing=0.1)
    torch.testing.assert_close(smooth, F.cross_entropy(logits, targets, label_smoothing=0.1))


def test_focal_loss_by_hand():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    targets = torch.tensor([0, 0])
    p0 = 1 / (1 + math.exp(-2.0))  # softmax probability of class 0, row 1
    p1 = 1 / (1 + math.exp(1.0))  # row 2
    by_hand = (-(1 - p0) ** 2 * math.log(p0) - (1 - p1) ** 2 * math.log(p1)) / 2
    assert classification_loss(logits, targets, kind="focal", focal_gamma=2.0).item() == pytest.approx(by_hand, rel=1e-6)
    torch.testing.assert_close(  # gamma 0 is the cross-entropy
        classification_loss(logits, targets, kind="focal", focal_gamma=0.0), F.cross_entropy(logits, targets))
    w = torch.tensor([2.0, 1.0])
    assert classification_loss(logits, targets, kind="focal", class_weights=w).item() == pytest.approx(by_hand, rel=1e-6)
    with pytest.raises(ConfigError, match="label smoothing"):
        classification_loss(logits, targets, kind="focal", label_smoothing=0.1)


# --------------------------------------------------------------------------- metrics


def test_metrics_by_hand():
    targets = [0, 0, 0, 1, 1, 2]
    preds = [0, 1, 0, 1, 1, 1]
    assert confusion_matrix(targets, preds, 3) == [[2, 1, 0], [0, 2, 0], [0, 1, 0]]
    r = classification_report(targets, preds, ["a", "b", "c"])
    assert r["accuracy"] == pytest.approx(4 / 6)
    assert r["per_class"]["a"] == {"precision": 1.0, "recall": pytest.approx(2 / 3), "f1": pytest.approx(0.8), "support": 3}
    assert r["per_class"]["b"]["precision"] == pytest.approx(0.5) and r["per_class"]["b"]["recall"] == 1.0
    assert r["per_class"]["c"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}  # never predicted
    assert r["macro_f1"] == pytest.approx((0.8 + 2 / 3 + 0.0) / 3)
    assert r["macro_precision"] == pytest.approx(0.5) and r["macro_recall"] == pytest.approx((2 / 3 + 1) / 3)
    text = format_report(r, "test:")
    assert "accuracy 0.6667 (6 examples)" in text and "[[2, 1, 0], [0, 2, 0], [0, 1, 0]]" in text
    with pytest.raises(ValueError):
        confusion_matrix([0], [0, 1], 2)


# --------------------------------------------------------------------------- auxiliary LM loss


def test_auxiliary_lm_loss_matches_the_restricted_softmax_by_hand():
    from customgpt.train.classify import AuxiliaryLM

    gpt = _gpt()
    _loud_pad(gpt)
    train_ids = [[3, 9, 4, 1, 5], [2, 6], [8, 4, 11]]  # the softmax runs over these ids only
    aux = AuxiliaryLM(train_ids, gpt)
    assert aux.vocab.tolist() == [1, 2, 3, 4, 5, 6, 8, 9, 11]
    rows = [[3, 9, 4, 1, 5], [2, 6], [8, 13, 4]]  # 13 is not a training id: its target is skipped
    batch = collate_classification([(ids, 0) for ids in rows], pad_id=PAD)
    hidden = gpt.forward_hidden(batch["input_ids"])
    got = aux.loss(hidden, batch["input_ids"], batch["attention_mask"])

    vocab = aux.vocab.tolist()
    terms = []
    for ids in rows:
        logits = gpt(torch.tensor([ids]))[0][:, vocab]  # (T, |vocab|), no padding at all
        log_probs = F.log_softmax(logits, dim=-1)
        terms += [-log_probs[t, vocab.index(nxt)] for t, nxt in enumerate(ids[1:]) if nxt in vocab]
    assert len(terms) == 4 + 1 + 1  # pads and the out-of-vocabulary target contribute nothing
    torch.testing.assert_close(got, torch.stack(terms).mean(), rtol=1e-5, atol=1e-5)
    got.backward()  # reaches the tied embedding through the restricted head
    assert gpt.transformer.wte.weight.grad[vocab].abs().sum() > 0
    assert gpt.transformer.wte.weight.grad[[0, PAD, 12]].abs().sum() == 0  # neither a real input nor in the softmax
