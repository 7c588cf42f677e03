"""Classification metrics: accuracy, per-class precision / recall / F1, macro F1, confusion matrix.

Plain Python on lists of class ids, so the numbers are easy to check by hand (and match
scikit-learn's definitions: a class with no predictions has precision 0, one with no true
examples has recall 0, F1 = 0 when precision + recall = 0).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def confusion_matrix(targets: Sequence[int], predictions: Sequence[int], num_classes: int) -> list[list[int]]:
    """``matrix[true][predicted]`` counts."""
    if len(targets) != len(predictions):
        raise ValueError(f"{len(targets)} targets but {len(predictions)} predictions")
    matrix = [[0] * num_classes for _ in range(num_classes)]
    for t, p in zip(targets, predictions):
        matrix[int(t)][int(p)] += 1
    return matrix


def classification_report(
    targets: Sequence[int], predictions: Sequence[int], labels: Sequence[str]
) -> dict[str, Any]:
    """Accuracy, per-class precision/recall/F1/support, macro averages and the confusion matrix.

    Returns a JSON-friendly dict::

        {"n": 300, "accuracy": 0.97, "macro_precision": ..., "macro_recall": ..., "macro_f1": ...,
         "per_class": {"ham": {"precision": ..., "recall": ..., "f1": ..., "support": 149}, ...},
         "confusion_matrix": [[...], [...]], "labels": ["ham", "spam"]}
    """
    k = len(labels)
    matrix = confusion_matrix(targets, predictions, k)
    n = len(targets)
    correct = sum(matrix[i][i] for i in range(k))
    per_class: dict[str, dict[str, float | int]] = {}
    for i, name in enumerate(labels):
        tp = matrix[i][i]
        predicted = sum(matrix[r][i] for r in range(k))
        support = sum(matrix[i])
        precision = tp / predicted if predicted else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[name] = {"precision": precision, "recall": recall, "f1": f1, "support": support}
    macro = {f"macro_{key}": sum(float(c[key]) for c in per_class.values()) / k if k else 0.0
             for key in ("precision", "recall", "f1")}
    return {"n": n, "accuracy": correct / n if n else 0.0, **macro, "per_class": per_class,
            "confusion_matrix": matrix, "labels": list(labels)}


def format_report(report: dict[str, Any], title: str = "") -> str:
    """A small text table of a :func:`classification_report` (for the terminal)."""
    labels = report["labels"]
    width = max(9, *(len(name) for name in labels))
    lines = [title] if title else []
    lines.append(f"  accuracy {report['accuracy']:.4f} ({report['n']} examples), macro F1 {report['macro_f1']:.4f}")
    lines.append(f"  {'class'.ljust(width)}  precision  recall  f1      support")
    for name in labels:
        c = report["per_class"][name]
        lines.append(f"  {name.ljust(width)}  {c['precision']:.4f}     {c['recall']:.4f}  {c['f1']:.4f}  {c['support']}")
    lines.append("  confusion matrix (rows: true, columns: predicted): " + str(report["confusion_matrix"]))
    return "\n".join(lines)
