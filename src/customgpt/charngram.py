"""A character n-gram classifier: TF-IDF features + L2-regularised logistic regression.

The classical text classifier, small and strong on short messages, written in PyTorch so that
a classifier ensemble (:class:`customgpt.classifier.ClassifierEnsemble`) can average it with
its GPT members (``classifier.char_ngram_weight``; see docs/classification.md). It computes
what scikit-learn's ``TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5),
sublinear_tf=True)`` followed by ``LogisticRegression(C=100)`` computes (tested against them):

* features: the text lower-cased, runs of whitespace made one space, each word padded with a
  space on both sides and cut into its character n-grams (a word shorter than ``n`` counts
  once, whole); the vocabulary is every n-gram of the training texts;
* weights: ``(1 + log tf) * idf``, ``idf = log((1 + n) / (1 + df)) + 1``, each row scaled to unit
  length;
* the fit: minimise ``C * sum(loss) + |W|^2 / 2`` (the bias is not penalised) to convergence with
  L-BFGS in float64: the logistic loss for two classes (one weight vector, as scikit-learn),
  the softmax cross-entropy for more.

As a module its ``forward`` takes right-padded GPT-2 token ids like the GPT classifiers do,
decodes each row back to its text (GPT-2's tokenizer is lossless) and returns class logits, so
an ensemble that mixes both kinds classifies a batch in one call.
"""

from __future__ import annotations

import json
import math
import re
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from customgpt.errors import CheckpointError, ConfigError

WEIGHTS = "char_ngram.safetensors"
VOCAB = "char_ngram_vocab.json"
KIND = "char_ngram"
_WHITESPACE = re.compile(r"\s\s+")


def char_wb_ngrams(text: str, min_n: int = 2, max_n: int = 5) -> list[str]:
    """The character n-grams of ``text`` within word boundaries (scikit-learn's ``char_wb``),
    in order, after lower-casing."""
    text = _WHITESPACE.sub(" ", text.lower())
    grams: list[str] = []
    for word in text.split():
        word = f" {word} "
        for n in range(min_n, max_n + 1):
            offset = 0
            grams.append(word[:n])
            while offset + n < len(word):
                offset += 1
                grams.append(word[offset:offset + n])
            if offset == 0:  # a word no longer than n: counted once, whole
                break
    return grams


def _sparse_rows(ids: Tensor, offsets: Tensor, values: Tensor, width: int) -> tuple[Tensor, Tensor]:
    """The feature rows as a sparse (N, V) matrix and its transpose, both CSR (fast products)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta state"
        crow = torch.cat([offsets, torch.tensor([len(ids)])])
        x = torch.sparse_csr_tensor(crow, ids, values, size=(len(offsets), width))
        x_t = x.to_sparse_coo().t().coalesce().to_sparse_csr()
    return x, x_t


class CharNgramClassifier(nn.Module):
    """TF-IDF character n-grams + logistic regression; build one with :meth:`fit`."""

    def __init__(self, vocab: Sequence[str], idf: Tensor, num_classes: int, ngram_range: tuple[int, int] = (2, 5),
                 c: float = 100.0, decode: Callable[[list[int]], str] | None = None) -> None:
        super().__init__()
        if num_classes < 2:
            raise ConfigError(f"a classifier needs at least 2 classes, got {num_classes}")
        if len(idf) != len(vocab):
            raise ConfigError(f"{len(vocab)} n-grams but {len(idf)} idf values")
        self.vocab = list(vocab)
        self.index = {g: i for i, g in enumerate(self.vocab)}
        self.num_classes = num_classes
        self.ngram_range = (int(ngram_range[0]), int(ngram_range[1]))
        self.c = float(c)
        self._decode = decode
        outputs = 1 if num_classes == 2 else num_classes
        self.register_buffer("idf", idf.to(torch.float32).clone())
        self.register_buffer("weight", torch.zeros(len(self.vocab), outputs))
        self.register_buffer("bias", torch.zeros(outputs))

    # ------------------------------------------------------------------ features

    def features(self, texts: Sequence[str], idf: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """The TF-IDF rows of ``texts`` as (n-gram ids, row offsets, values) for
        :func:`torch.nn.functional.embedding_bag`, in the dtype of ``idf`` (default: the
        stored float32 idf). N-grams outside the vocabulary are dropped."""
        ids: list[int] = []
        offsets: list[int] = []
        values: list[Tensor] = []
        idf = (self.idf if idf is None else idf).cpu()
        dtype = idf.dtype
        for text in texts:
            counts = Counter(self.index[g] for g in char_wb_ngrams(text, *self.ngram_range) if g in self.index)
            offsets.append(len(ids))
            row = list(counts)
            ids.extend(row)
            tf = torch.tensor([1.0 + math.log(counts[i]) for i in row], dtype=dtype)
            v = tf * idf[torch.tensor(row, dtype=torch.long)] if row else tf
            norm = v.norm()
            values.append(v / norm if norm > 0 else v)
        return (torch.tensor(ids, dtype=torch.long), torch.tensor(offsets, dtype=torch.long),
                torch.cat(values) if values else torch.zeros(0, dtype=dtype))

    @staticmethod
    def _scores(features: tuple[Tensor, Tensor, Tensor], weight: Tensor, bias: Tensor) -> Tensor:
        ids, offsets, values = (t.to(weight.device) for t in features)
        return F.embedding_bag(ids, weight, offsets, mode="sum", per_sample_weights=values.to(weight.dtype)) + bias

    def logits_texts(self, texts: Sequence[str]) -> Tensor:
        """Class logits (N, K) of raw ``texts``; for two classes ``[0, z]`` (softmax = the logistic)."""
        z = self._scores(self.features(texts), self.weight, self.bias)
        return torch.cat([torch.zeros_like(z), z], dim=1) if self.num_classes == 2 else z

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """Class logits (B, K) of right-padded GPT-2 token ids (B, T): each row's real tokens
        are decoded back to text."""
        if self._decode is None:
            from customgpt.tokenizer import get_tokenizer

            self._decode = get_tokenizer().decode
        rows = input_ids.tolist()
        lengths = attention_mask.sum(1).tolist() if attention_mask is not None else [len(r) for r in rows]
        return self.logits_texts([self._decode(r[:int(n)]) for r, n in zip(rows, lengths)])

    def num_parameters(self, trainable_only: bool = False) -> int:
        """Weights and biases of the logistic regression (none are trained by gradient descent
        in a GPT loop, so ``trainable_only`` counts them too)."""
        return self.weight.numel() + self.bias.numel()

    # ------------------------------------------------------------------ fit

    @classmethod
    def fit(cls, texts: Sequence[str], targets: Sequence[int], num_classes: int, *,
            ngram_range: tuple[int, int] = (2, 5), c: float = 100.0, max_iter: int = 2000,
            tolerance: float = 1e-9) -> CharNgramClassifier:
        """Learn the vocabulary and idf from ``texts`` and fit the regression to ``targets``
        (class ids in ``0..num_classes-1``) to convergence (L-BFGS, float64)."""
        lo, hi = int(ngram_range[0]), int(ngram_range[1])
        if not 1 <= lo <= hi:
            raise ConfigError(f"char n-gram range must satisfy 1 <= min <= max, got {ngram_range}")
        if c <= 0:
            raise ConfigError(f"the inverse regularisation strength C must be > 0, got {c}")
        if len(texts) != len(targets) or not texts:
            raise ConfigError(f"{len(texts)} texts and {len(targets)} targets: need as many, at least one")
        if not all(0 <= t < num_classes for t in targets):
            raise ConfigError(f"targets must be class ids in 0..{num_classes - 1}, got {sorted(set(targets))}")
        df: Counter[str] = Counter()
        for text in texts:
            df.update(set(char_wb_ngrams(text, lo, hi)))
        vocab = sorted(df)
        n = len(texts)
        idf = torch.tensor([math.log((1 + n) / (1 + df[g])) + 1.0 for g in vocab], dtype=torch.float64)
        model = cls(vocab, idf, num_classes, (lo, hi), c)
        ids, offsets, values = model.features(texts, idf=idf)  # float64 (the buffer keeps a float32 copy)
        x, x_t = _sparse_rows(ids, offsets, values, len(vocab))
        y = torch.tensor(list(targets), dtype=torch.long)
        outputs = model.weight.shape[1]
        target = (y[:, None].to(torch.float64) if outputs == 1
                  else F.one_hot(y, num_classes).to(torch.float64))
        w = torch.zeros(len(vocab), outputs, dtype=torch.float64, requires_grad=True)
        b = torch.zeros(outputs, dtype=torch.float64, requires_grad=True)
        opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, tolerance_grad=tolerance,
                                tolerance_change=1e-15, history_size=20, line_search_fn="strong_wolfe")

        @torch.no_grad()
        def objective() -> Tensor:  # the loss and its gradient, by hand (sparse products both ways)
            z = x @ w + b
            if outputs == 1:
                loss = F.binary_cross_entropy_with_logits(z, target, reduction="sum")
                dz = torch.sigmoid(z) - target
            else:
                loss = -(target * F.log_softmax(z, dim=1)).sum()
                dz = torch.softmax(z, dim=1) - target
            dz = model.c * dz
            w.grad = x_t @ dz + w
            b.grad = dz.sum(0)
            return model.c * loss + 0.5 * (w * w).sum()

        opt.step(objective)
        with torch.no_grad():
            model.weight.copy_(w.detach())
            model.bias.copy_(b.detach())
        return model

    # ------------------------------------------------------------------ save / load

    def save(self, folder: Path, head_info: dict[str, Any]) -> None:
        """Write the model into ``folder``: weights (safetensors), vocabulary (JSON) and
        ``classifier.json`` (``head_info`` plus this model's settings)."""
        from customgpt.checkpoints import save_weights
        from customgpt.classifier import HEAD_CONFIG
        from customgpt.io import atomic_write_text

        folder.mkdir(parents=True, exist_ok=True)
        save_weights({"weight": self.weight, "bias": self.bias, "idf": self.idf}, folder / WEIGHTS)
        atomic_write_text(folder / VOCAB, json.dumps(self.vocab, ensure_ascii=False) + "\n")
        info = {**head_info, "kind": KIND, "ngram_range": list(self.ngram_range), "c": self.c}
        atomic_write_text(folder / HEAD_CONFIG, json.dumps(info, indent=2, ensure_ascii=False) + "\n")

    @classmethod
    def load(cls, folder: Path, info: dict[str, Any]) -> CharNgramClassifier:
        """Read a folder written by :meth:`save` (``info``: its ``classifier.json``)."""
        from customgpt.checkpoints import load_weights

        try:
            vocab = json.loads((folder / VOCAB).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise CheckpointError(f"cannot read {folder / VOCAB}: {exc}") from exc
        if not isinstance(vocab, list) or not all(isinstance(g, str) for g in vocab):
            raise CheckpointError(f"{folder / VOCAB} must be a JSON list of strings")
        tensors = load_weights(folder / WEIGHTS)
        try:
            lo, hi = info["ngram_range"]
            model = cls(vocab, tensors["idf"], len(info["labels"]), (lo, hi), info.get("c", 100.0))
            model.load_state_dict({k: tensors[k] for k in ("idf", "weight", "bias")}, strict=True)
        except (KeyError, ValueError, TypeError, RuntimeError, ConfigError) as exc:
            raise CheckpointError(f"{folder} does not hold a matching char n-gram classifier: {exc}") from exc
        return model
