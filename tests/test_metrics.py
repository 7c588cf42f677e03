"""Classification metrics: by hand, and against scikit-learn's definitions."""

from __future__ import annotations

import json
import random

import pytest
from sklearn import metrics as sklearn_metrics

from customgpt.metrics import classification_report, confusion_matrix, format_report


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


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_report_matches_scikit_learn(seed):
    rng = random.Random(seed)
    labels = ["ham", "spam", "other", "never"]  # "never" is neither a target nor a prediction
    targets = [rng.randrange(3) for _ in range(50)]
    preds = [t if rng.random() < 0.6 else rng.randrange(3) for t in targets]
    preds[:2] = [2, 2]  # every class present in the three first labels
    r = classification_report(targets, preds, labels)
    ids = list(range(len(labels)))
    assert r["confusion_matrix"] == sklearn_metrics.confusion_matrix(targets, preds, labels=ids).tolist()
    assert r["accuracy"] == pytest.approx(sklearn_metrics.accuracy_score(targets, preds))
    p, rec, f1, support = sklearn_metrics.precision_recall_fscore_support(
        targets, preds, labels=ids, average=None, zero_division=0)
    for i, name in enumerate(labels):
        c = r["per_class"][name]
        assert c["precision"] == pytest.approx(p[i]) and c["recall"] == pytest.approx(rec[i])
        assert c["f1"] == pytest.approx(f1[i]) and c["support"] == support[i]
    mp, mr, mf, _ = sklearn_metrics.precision_recall_fscore_support(
        targets, preds, labels=ids, average="macro", zero_division=0)
    assert (r["macro_precision"], r["macro_recall"], r["macro_f1"]) == (
        pytest.approx(mp), pytest.approx(mr), pytest.approx(mf))


def test_report_is_json_friendly_and_handles_an_empty_set():
    r = classification_report([1, 0], [1, 1], ["neg", "pos"])
    assert json.loads(json.dumps(r)) == r
    assert r["labels"] == ["neg", "pos"] and r["n"] == 2
    empty = classification_report([], [], ["neg", "pos"])
    assert empty["n"] == 0 and empty["accuracy"] == 0.0 and empty["macro_f1"] == 0.0
    assert empty["confusion_matrix"] == [[0, 0], [0, 0]]


def test_format_report_lists_every_class():
    r = classification_report([0, 1, 1], [0, 1, 0], ["ham", "a-very-long-label"])
    lines = format_report(r).splitlines()
    assert lines[0].startswith("  accuracy 0.6667 (3 examples), macro F1 0.6667")
    assert any(line.split()[:2] == ["ham", "0.5000"] for line in lines)
    assert any(line.split()[:5] == ["a-very-long-label", "1.0000", "0.5000", "0.6667", "2"] for line in lines)
