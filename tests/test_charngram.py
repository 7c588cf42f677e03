"""The character n-gram classifier against scikit-learn's TF-IDF + logistic regression, and as
an ensemble member (saved, loaded, weighted)."""

from __future__ import annotations

import json
import random

import pytest
import torch

from customgpt.charngram import CharNgramClassifier, char_wb_ngrams
from customgpt.classifier import ClassifierEnsemble, GPTClassifier, load_classifier, save_classifier
from customgpt.errors import CheckpointError, ConfigError
from customgpt.model import GPT, GPTConfig

sklearn_text = pytest.importorskip("sklearn.feature_extraction.text")  # the reference (test extra)
sklearn_linear = pytest.importorskip("sklearn.linear_model")

TEXTS = [
    "WINNER!! You have won a FREE prize, call 09061701461 now",
    "ok see you at home later",
    "Hey  babe,\tfar 2 spun-out 2 spk at da mo",
    "a b c",
    "Ü ÜBER café naïve — déjà vu",
    "",
    "   leading and trailing   ",
    "URGENT! Your mobile No 07808726822 was awarded a £2,000 Bonus",
]


@pytest.mark.parametrize("ngram_range", [(2, 5), (1, 3), (3, 3)])
def test_ngrams_are_scikit_learns_char_wb(ngram_range):
    analyzer = sklearn_text.TfidfVectorizer(analyzer="char_wb", ngram_range=ngram_range).build_analyzer()
    for text in TEXTS:
        assert char_wb_ngrams(text, *ngram_range) == analyzer(text), text


def _corpus(n: int, classes: int, seed: int = 0) -> tuple[list[str], list[int]]:
    """Texts whose words lean towards their class (learnable, not separable by one word)."""
    rng = random.Random(seed)
    words = [["free", "prize", "call", "WIN", "txt", "claim"], ["home", "later", "ok", "love", "dinner", "lol"],
             ["meeting", "report", "budget", "Q3", "slides", "team"]][:classes]
    shared = ["the", "you", "now", "and", "2", "u"]
    texts, labels = [], []
    for _ in range(n):
        y = rng.randrange(classes)
        pool = words[y] * 2 + shared * 3 + [w for ws in words for w in ws]
        texts.append(" ".join(rng.choice(pool) for _ in range(rng.randint(2, 9))))
        labels.append(y)
    return texts, labels


@pytest.mark.parametrize("classes", [2, 3])
def test_probabilities_match_scikit_learn(classes):
    texts, labels = _corpus(160, classes)
    test_texts, _ = _corpus(60, classes, seed=1)
    test_texts += ["zzz unseen words only", ""]  # no known n-gram: the bias alone
    model = CharNgramClassifier.fit(texts, labels, classes, ngram_range=(2, 5), c=10.0)
    vec = sklearn_text.TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True)
    features = vec.fit_transform(texts)
    assert model.vocab == sorted(vec.vocabulary_)
    assert torch.allclose(model.idf.double(), torch.tensor(vec.idf_)[[vec.vocabulary_[g] for g in model.vocab]])
    reference = sklearn_linear.LogisticRegression(C=10.0, tol=1e-12, max_iter=100_000).fit(features, labels)
    expected = torch.tensor(reference.predict_proba(vec.transform(test_texts)))
    got = model.logits_texts(test_texts).softmax(-1).double()
    assert (got - expected).abs().max() < 1e-5
    assert model.num_parameters() == len(model.vocab) * (1 if classes == 2 else classes) + (1 if classes == 2 else classes)


def test_forward_decodes_right_padded_token_ids():
    from customgpt.tokenizer import get_tokenizer

    tok = get_tokenizer()
    texts, labels = _corpus(80, 2)
    model = CharNgramClassifier.fit(texts, labels, 2)
    rows = [tok.encode(t) for t in texts[:5]]
    width = max(map(len, rows))
    ids = torch.tensor([r + [tok.eot_id] * (width - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    assert torch.equal(model(ids, mask), model.logits_texts(texts[:5]))


def test_bad_settings_are_refused():
    with pytest.raises(ConfigError, match="range"):
        CharNgramClassifier.fit(["a b"], [0], 2, ngram_range=(3, 2))
    with pytest.raises(ConfigError, match="C must be > 0"):
        CharNgramClassifier.fit(["a b"], [0], 2, c=0.0)
    with pytest.raises(ConfigError, match="as many"):
        CharNgramClassifier.fit(["a b", "c"], [0], 2)
    with pytest.raises(ConfigError, match="class ids in 0..1"):
        CharNgramClassifier.fit(["a b", "c"], [0, 2], 2)


def _gpt_member(seed: int) -> GPTClassifier:
    torch.manual_seed(seed)
    cfg = GPTConfig(vocab_size=50257, context_length=32, n_layer=1, n_head=2, n_embd=16, dropout=0.0)
    return GPTClassifier(GPT(cfg), 2).eval()


def test_weighted_ensemble_with_an_ngram_member_saves_and_loads(tmp_path):
    from customgpt.classifier import predict_texts
    from customgpt.tokenizer import get_tokenizer

    texts, labels = _corpus(80, 2)
    ngram = CharNgramClassifier.fit(texts, labels, 2).eval()
    gpts = [_gpt_member(0), _gpt_member(1)]
    ensemble = ClassifierEnsemble([*gpts, ngram], [0.3, 0.3, 0.4]).eval()
    assert all(k.startswith("members.") for k in ensemble.state_dict())  # each member once
    encode = get_tokenizer().encode
    probs = predict_texts(ensemble, texts[:6], encode, max_length=32)
    parts = [predict_texts(m, texts[:6], encode, max_length=32) for m in (*gpts, ngram)]
    assert torch.allclose(probs, 0.3 * parts[0] + 0.3 * parts[1] + 0.4 * parts[2], atol=1e-6)

    save_classifier(ensemble, tmp_path / "clf", ["ham", "spam"], max_length=32)
    info = json.loads((tmp_path / "clf" / "classifier.json").read_text())
    assert info["weights"] == pytest.approx([0.3, 0.3, 0.4])
    loaded, _ = load_classifier(tmp_path / "clf")
    assert isinstance(loaded.members[2], CharNgramClassifier)
    assert torch.equal(predict_texts(loaded, texts[:6], encode, max_length=32), probs)

    info["weights"] = [0.5, 0.5]  # one weight short
    (tmp_path / "clf" / "classifier.json").write_text(json.dumps(info))
    with pytest.raises(CheckpointError, match="one positive number per member"):
        load_classifier(tmp_path / "clf")
    (tmp_path / "clf" / "member-2" / "char_ngram_vocab.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="char_ngram_vocab.json"):
        load_classifier(tmp_path / "clf" / "member-2")


def test_an_ensemble_needs_a_gpt_member_and_positive_weights():
    ngram = CharNgramClassifier.fit(*_corpus(40, 2), 2)
    with pytest.raises(ConfigError, match="GPT classifier"):
        ClassifierEnsemble([ngram])
    with pytest.raises(ConfigError, match="weights"):
        ClassifierEnsemble([_gpt_member(0), ngram], [1.0, 0.0])
