"""``customgpt classify``: one line per text from a saved classifier, and clear errors."""

from __future__ import annotations

import json

import pytest
import torch

from customgpt.cli import main


@pytest.fixture(scope="module")
def classifier_folder(tmp_path_factory):
    from customgpt.classifier import GPTClassifier, save_classifier
    from customgpt.config import GPTConfig
    from customgpt.model import GPT

    torch.manual_seed(0)
    gpt = GPT(GPTConfig(context_length=32, n_embd=16, n_layer=1, n_head=2))  # the GPT-2 vocabulary
    return save_classifier(GPTClassifier(gpt, 2), tmp_path_factory.mktemp("clf") / "best", ["ham", "spam"],
                           max_length=24)


def test_prints_label_probability_and_text(classifier_folder, capsys, tmp_path):
    from customgpt.classifier import load_classifier, predict_texts
    from customgpt.tokenizer import get_tokenizer

    texts = ["WINNER!! Claim your FREE prize now, call 09061701461", "ok see you at home later"]
    assert main(["classify", "--model", str(classifier_folder), *texts]) == 0
    lines = capsys.readouterr().out.splitlines()
    model, _ = load_classifier(classifier_folder)
    probs = predict_texts(model, texts, get_tokenizer().encode, max_length=24)
    for line, text, p in zip(lines, texts, probs):
        label, prob, printed = line.split("\t", 2)
        assert (label, printed) == (["ham", "spam"][int(p.argmax())], text)
        assert float(prob) == pytest.approx(float(p.max()), abs=1e-4)
    messages = tmp_path / "m.txt"
    messages.write_text("first message\n\nsecond message\n", encoding="utf-8")
    assert main(["classify", "-m", str(classifier_folder), "--file", str(messages)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split("\t")[2] for line in out] == ["first message", "second message"]


def test_nothing_to_classify(classifier_folder, capsys):
    assert main(["classify", "-m", str(classifier_folder)]) == 2
    assert "nothing to classify" in capsys.readouterr().err


def test_folder_saved_with_a_removed_option_is_one_clear_line(tmp_path, capsys):
    folder = tmp_path / "old"
    folder.mkdir()
    (folder / "classifier.json").write_text(json.dumps({
        "format": "customgpt-classifier", "labels": ["ham", "spam"], "pooling": "last", "max_length": 64,
        "members": ["member-0", "member-1"], "weights": [0.6, 0.4]}))
    assert main(["classify", "-m", str(folder), "hello"]) == 2
    err = capsys.readouterr().err
    assert err == (f"error: {folder} was saved with an ensemble of several classifiers (classifier.ensemble), an "
                   "option this version no longer has; it cannot be loaded. Train the classifier again with "
                   "`customgpt finetune classify`\n")
