"""Word overlap of responses with references: ROUGE-L F1 and exact match.

ROUGE-L is ``rouge-score``'s (Google's reference implementation) with its default settings
and no stemming: ``RougeScorer(["rougeL"], use_stemmer=False)``, whose tokenizer lower-cases
the text and keeps runs of letters and digits. The F1 is the harmonic mean of the longest
common subsequence's recall and precision (Lin, 2004, "ROUGE: A Package for Automatic
Evaluation of Summaries"). Exact match compares the texts with surrounding whitespace removed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import cache
from typing import Any


@cache
def _scorer():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F1 of ``prediction`` against ``reference``, in [0, 1] (0 when either has no words)."""
    return float(_scorer().score(reference, prediction)["rougeL"].fmeasure)


def exact_match(prediction: str, reference: str) -> bool:
    """True when the texts are equal once surrounding whitespace is removed."""
    return prediction.strip() == reference.strip()


def score_responses(records: Sequence[Mapping[str, Any]], *, response_key: str = "model_response",
                    reference_key: str = "output") -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Per-record scores and their summary for records holding a response and a reference.

    Returns:
        ``(per_record, summary)``: ``per_record[i]`` is ``{"index", "rouge_l", "exact_match"}``
        (ROUGE-L F1 in [0, 1]); ``summary`` has ``rouge_l`` and ``exact_match`` as percentages
        (mean over records, 0-100) and ``count``.
    """
    rows = []
    for i, record in enumerate(records):
        prediction, reference = record[response_key], record[reference_key]
        rows.append({"index": i, "rouge_l": rouge_l(prediction, reference),
                     "exact_match": exact_match(prediction, reference)})
    n = len(rows)
    summary = {
        "count": n,
        "rouge_l": 100.0 * sum(r["rouge_l"] for r in rows) / n if n else float("nan"),
        "exact_match": 100.0 * sum(r["exact_match"] for r in rows) / n if n else float("nan"),
    }
    return rows, summary
