"""The classical peer for spam vs ham: TF-IDF character n-grams + logistic regression.

Needs scikit-learn (``pip install -e ".[bench]"``); used by ``spam.py`` to
score the peer on exactly the messages customgpt is scored on, in the same run. Settings
(characters within word boundaries, 2- to 5-grams, sublinear term frequency, C = 100) are the
best of five variants by a 5-fold cross-validation on train + validation (RESULTS.md); the peer
scores 97.67% on the 300 reference test messages, the published figure.
"""

from __future__ import annotations

from collections.abc import Sequence


def available() -> bool:
    try:
        import sklearn  # noqa: F401
    except ImportError:
        return False
    return True


def tfidf_lr_accuracy(train_texts: Sequence[str], train_labels: Sequence[str],
                      test_texts: Sequence[str], test_labels: Sequence[str]) -> float:
    """Fit on the training texts, return the accuracy on the test texts."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    model = make_pipeline(TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True),
                          LogisticRegression(C=100.0, max_iter=2000))
    model.fit(list(train_texts), list(train_labels))
    return float(model.score(list(test_texts), list(test_labels)))
