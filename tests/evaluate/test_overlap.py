"""ROUGE-L and exact match equal rouge-score's on hand-picked pairs."""

from __future__ import annotations

import pytest
from rouge_score import rouge_scorer

from customgpt.evaluate.overlap import exact_match, rouge_l, score_responses

PAIRS = [
    ("The capital of France is Paris.", "The capital of France is Paris."),
    ("Paris is the capital of France.", "The capital of France is Paris."),
    ("The cats are running quickly", "The cat runs quick"),  # no stemming: cats != cat
    ("", "Something"),
    ("Bonjour!", "bonjour"),  # the tokenizer lower-cases and drops punctuation
    ("1. apples 2. pears", "apples, pears and plums"),
    ("Ünïcödé wörds ok", "ok"),
]


@pytest.mark.parametrize("prediction, reference", PAIRS)
def test_rouge_l_equals_rouge_score(prediction, reference):
    want = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False).score(reference, prediction)["rougeL"].fmeasure
    assert rouge_l(prediction, reference) == want


def test_hand_computed_rouge_l():
    # LCS of "paris is the capital of france" and "the capital of france is paris" = "the capital of france" (4)
    assert rouge_l("Paris is the capital of France.", "The capital of France is Paris.") == pytest.approx(4 / 6)
    assert rouge_l("The cats are running quickly", "The cat runs quick") == pytest.approx(2 * (1 / 5) * (1 / 4) / (1 / 5 + 1 / 4))


def test_exact_match_ignores_only_surrounding_whitespace():
    assert exact_match("  Paris.\n", "Paris.")
    assert not exact_match("paris.", "Paris.")
    assert not exact_match("Paris", "Paris.")


def test_score_responses_summarises_as_percentages():
    records = [{"output": ref, "model_response": pred} for pred, ref in PAIRS]
    rows, summary = score_responses(records)
    assert [r["index"] for r in rows] == list(range(len(PAIRS)))
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    want = [scorer.score(ref, pred)["rougeL"].fmeasure for pred, ref in PAIRS]
    assert [r["rouge_l"] for r in rows] == want
    assert summary["rouge_l"] == pytest.approx(100 * sum(want) / len(want))
    assert summary["exact_match"] == pytest.approx(100 / len(PAIRS)) and summary["count"] == len(PAIRS)
    _, custom = score_responses([{"ref": "a b", "pred": "a b"}], response_key="pred", reference_key="ref")
    assert custom["rouge_l"] == 100.0 and custom["exact_match"] == 100.0
