"""Tokenizer tests: both engines against two independent references.

References:
* tiktoken itself: a ``tiktoken.Encoding`` built from the vendored rank file with tiktoken's
  own loader and its published ``r50k_base`` pattern and special tokens (the same thing
  ``tiktoken.get_encoding("r50k_base")`` builds, minus the download);
* Hugging Face's GPT-2 tokenizer (Rust ``tokenizers``) loaded from the ``vocab.json`` /
  ``merges.txt`` this project exports.

Checked on every text of the shared datasets and on random Unicode text (hypothesis).
"""

from __future__ import annotations

import base64
import hashlib
import json
import random
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import tiktoken
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tiktoken.load import load_tiktoken_bpe

from customgpt.bpe import GPT2_PATTERN, bpe_merge, bytes_to_unicode, count_pretokens, train_bpe_ranks
from customgpt.errors import ConfigError, DataError
from customgpt.tokenizer import (
    BPETokenizer,
    IncrementalDecoder,
    get_tokenizer,
    gpt2_ranks,
    load_bpe,
    load_tiktoken_ranks,
    save_hf_tokenizer_files,
    save_tiktoken_ranks,
    train_bpe,
)

ASSET = Path(__file__).resolve().parents[1] / "src" / "customgpt" / "assets" / "gpt2.tiktoken"

# Copied verbatim from tiktoken's r50k_base definition (tiktoken_ext/openai_public.py).
R50K_PAT_STR = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
R50K_EXPECTED_HASH = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"
R50K_SPECIAL_TOKENS = {"<|endoftext|>": 50256}

ENGINES = ["tiktoken", "bpe"]
EOT = "<|endoftext|>"
HYPOTHESIS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --------------------------------------------------------------------------------------
# fixtures
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def reference() -> tiktoken.Encoding:
    """What ``tiktoken.get_encoding("r50k_base")`` returns, built without the network."""
    return tiktoken.Encoding(
        name="r50k_base",
        explicit_n_vocab=50257,
        pat_str=R50K_PAT_STR,
        mergeable_ranks=load_tiktoken_bpe(str(ASSET), expected_hash=R50K_EXPECTED_HASH),
        special_tokens=R50K_SPECIAL_TOKENS,
    )


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("hf_gpt2_tokenizer")
    save_hf_tokenizer_files(folder)
    return folder


@pytest.fixture(scope="module")
def hf_fast(hf_dir):
    from transformers import GPT2TokenizerFast

    return GPT2TokenizerFast.from_pretrained(hf_dir)


def _read_dataset_texts(folder: Path) -> dict[str, list[str]]:
    texts: dict[str, list[str]] = {}
    with zipfile.ZipFile(folder / "sms_spam_collection.zip") as archive:
        raw = archive.read("SMSSpamCollection").decode("utf-8")
    texts["sms"] = [line.split("\t", 1)[1] for line in raw.splitlines() if line]
    for name in ("instruction-data.json", "instruction-data-with-preference.json"):
        records = json.loads((folder / name).read_text(encoding="utf-8"))
        texts[name] = [
            record[key]
            for record in records
            for key in ("instruction", "input", "output", "chosen", "rejected")
            if key in record
        ]
    texts["the-verdict"] = [(folder / "the-verdict.txt").read_text(encoding="utf-8")]
    return texts


@pytest.fixture(scope="module")
def dataset_texts(shared_datasets) -> dict[str, list[str]]:
    texts = _read_dataset_texts(shared_datasets)
    assert len(texts["sms"]) == 5574
    assert len(texts["instruction-data.json"]) == 3 * 1100
    assert len(texts["instruction-data-with-preference.json"]) == 5 * 1100
    assert len(texts["the-verdict"][0]) == 20479
    return texts


# Random text that stresses the tokenizer: any code point (hypothesis' default alphabet:
# unassigned ones too, no surrogates), glued to fragments that exercise the regex's
# corner cases and the special token.
FRAGMENTS = [
    EOT, EOT + EOT, "<|endoftext", "endoftext|>", "<|", " ", "  ", "   \n", "\n\n\n", "\t", "\r\n",
    "\u00a0", "\u3000", "\u2028", "\x85", "'s", "'ll", "'VE", "don't", " 12345", "3.14", "...",
    "🎉", "👍🏽", "👨‍👩‍👧", "🇫🇷", "e\u0301", "a\u0300\u0316", "中文字符", "日本語", "한국어", "Ωμέγα",
    "اَلْعَرَبِيَّةُ", "हिन्दी", "\U0001d11e", "\ufffd", "\x00", "\x7f", "Hello", " world", "_x_",
]  # fmt: skip
random_text = st.lists(st.one_of(st.text(max_size=12), st.sampled_from(FRAGMENTS)), max_size=12).map("".join)


def _split_chunks(text: str) -> list[str]:
    return [text[i : i + 64] for i in range(0, len(text), 64)]


# --------------------------------------------------------------------------------------
# the vocabulary file
# --------------------------------------------------------------------------------------


def test_vendored_file_is_r50k_base():
    assert hashlib.sha256(ASSET.read_bytes()).hexdigest() == R50K_EXPECTED_HASH
    # our copy of tiktoken's pattern is exact
    from tiktoken_ext.openai_public import r50k_pat_str

    assert r50k_pat_str == R50K_PAT_STR


def test_our_rank_parser_matches_tiktoken_loader():
    ranks = gpt2_ranks()
    assert ranks == load_tiktoken_bpe(str(ASSET))
    assert len(ranks) == 50256
    assert sorted(ranks.values()) == list(range(50256))


def test_rank_file_errors_name_file_and_line(tmp_path):
    bad = tmp_path / "bad.tiktoken"
    lines = [f"{base64.b64encode(bytes([b])).decode()} {b}" for b in range(256)]
    bad.write_text("\n".join([*lines[:3], "not-base64!! 3", *lines[4:]]) + "\n")
    with pytest.raises(DataError, match=r"bad\.tiktoken:4:"):
        load_tiktoken_ranks(bad)
    bad.write_text("\n".join([*lines[:3], "QQ==", *lines[4:]]) + "\n")
    with pytest.raises(DataError, match=r"bad\.tiktoken:4: expected"):
        load_tiktoken_ranks(bad)
    bad.write_text("\n".join(lines[:-1]) + "\nQUI= 300\n")  # rank gap
    with pytest.raises(DataError, match="without gaps"):
        load_tiktoken_ranks(bad)
    bad.write_text("\n".join(lines[:-1]) + "\n")  # byte 255 missing
    with pytest.raises(DataError, match="byte 255"):
        load_tiktoken_ranks(bad)
    good = tmp_path / "good.tiktoken"
    good.write_text("\n".join(lines) + "\n")
    assert len(load_tiktoken_ranks(good)) == 256
    with pytest.raises(DataError, match="sha256"):
        load_tiktoken_ranks(good, expected_sha256="0" * 64)


# --------------------------------------------------------------------------------------
# basic API
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("engine", ENGINES)
def test_basic_api(engine):
    tok = get_tokenizer(engine)
    assert get_tokenizer(engine) is tok is get_tokenizer(engine=engine)  # cached
    assert tok.vocab_size == 50257
    assert tok.eot_id == 50256
    assert tok.eot_text == EOT
    # GPT-2's published examples
    assert tok.encode("Hello world") == [15496, 995]
    assert tok.encode(" Hello world") == [18435, 995]
    assert tok.encode("Hello, world") == [15496, 11, 995]
    assert tok.decode([15496, 11, 995]) == "Hello, world"
    assert tok.decode_bytes([12520, 236, 231]) == " 🎉".encode()
    assert tok.encode("") == [] and tok.encode(EOT) == [50256]


def test_unknown_engine():
    with pytest.raises(ConfigError, match="unknown tokenizer engine"):
        get_tokenizer("sentencepiece")


@pytest.mark.parametrize("engine", ENGINES)
def test_allowed_special(engine, reference):
    tok = get_tokenizer(engine)
    text = f"a{EOT}b"
    as_text = reference.encode_ordinary(text)
    assert as_text == [64, 27, 91, 437, 1659, 5239, 91, 29, 65]
    assert tok.encode(text) == [64, 50256, 65]  # default: <|endoftext|> allowed
    assert tok.encode(text, allowed_special="all") == [64, 50256, 65]
    assert tok.encode(text, allowed_special={EOT}) == [64, 50256, 65]
    assert tok.encode(text, allowed_special="none") == as_text
    assert tok.encode(text, allowed_special=set()) == as_text
    assert tok.encode(text, allowed_special={"<|unknown|>"}) == as_text  # unknown names ignored
    with pytest.raises(ConfigError, match="allowed_special"):
        tok.encode(text, allowed_special="some")


@pytest.mark.parametrize("engine", ENGINES)
def test_decode_errors(engine):
    tok = get_tokenizer(engine)
    for bad in (50257, -1, 10**12):
        with pytest.raises(DataError, match=f"token id {bad} is not in the vocabulary"):
            tok.decode([15496, bad])
        with pytest.raises(DataError, match="not in the vocabulary"):
            tok.token_bytes(bad)
    # ids from a generator, numpy or a tensor are fine
    assert tok.decode(i for i in [15496, 11, 995]) == "Hello, world"
    assert tok.decode(np.array([15496, 11, 995])) == "Hello, world"
    assert tok.decode(list(torch.tensor([15496, 11, 995]))) == "Hello, world"
    with pytest.raises(DataError, match="not in the vocabulary"):
        tok.decode(i for i in [15496, 50257])
    with pytest.raises(DataError, match="not in the vocabulary"):
        tok.decode([1.5])
    # a cut-off character decodes to U+FFFD by default, raises with errors="strict"
    assert tok.decode([12520]) == " \ufffd"
    with pytest.raises(UnicodeDecodeError):
        tok.decode([12520], errors="strict")


def test_bytes_to_unicode():
    mapping = bytes_to_unicode()
    assert sorted(mapping) == list(range(256))
    assert len(set(mapping.values())) == 256
    assert mapping[ord(" ")] == "Ġ" and mapping[ord("\n")] == "Ċ" and mapping[ord("!")] == "!"
    assert all(ch.isprintable() and not ch.isspace() for ch in mapping.values())


def test_pretokenize_gpt2_pattern():
    assert GPT2_PATTERN.findall("I'll say:   hello  world\n\n 42!!") == [
        "I", "'ll", " say", ":", "  ", " hello", " ", " world", "\n\n", " 42", "!!",
    ]  # fmt: skip


def test_bpe_merge_lowest_rank_first():
    ranks = {bytes([b]): b for b in range(256)}
    ranks.update({b"bc": 256, b"ab": 257, b"abc": 258, b"abcd": 259})
    # "bc" (rank 256) merges before "ab" (257), and then "a"+"bc" -> "abc".
    assert bpe_merge(b"abcd", ranks) == [b"abcd"]
    assert bpe_merge(b"abcd", ranks, max_rank=259) == [b"abc", b"d"]
    assert bpe_merge(b"abab", ranks) == [b"ab", b"ab"]
    assert bpe_merge(b"", ranks) == []


def test_bpe_cache_is_bounded():
    tok = BPETokenizer(gpt2_ranks(), {EOT: 50256}, cache_size=8)
    reference = get_tokenizer("tiktoken")
    text = "the quick brown fox jumps over the lazy dog " * 3 + "and then some more words appear"
    assert tok.encode(text) == reference.encode(text)
    assert tok._encode_piece.cache_info().currsize == 8


# --------------------------------------------------------------------------------------
# parity on the shared datasets
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("engine", ENGINES)
def test_dataset_parity_with_tiktoken(engine, reference, dataset_texts):
    tok = get_tokenizer(engine)
    for name, texts in dataset_texts.items():
        for i, text in enumerate(texts):
            ids = tok.encode(text)
            assert ids == reference.encode(text, allowed_special="all"), f"{name}[{i}]: {text[:80]!r}"
            assert tok.decode(ids) == text, f"{name}[{i}]"


def test_dataset_parity_with_hugging_face(hf_fast, reference, dataset_texts):
    for name, texts in dataset_texts.items():
        if name == "the-verdict":  # longer than GPT-2's context: encode in chunks of text
            texts = _split_chunks(texts[0])
        hf_ids = hf_fast(texts)["input_ids"]
        for i, (text, ids) in enumerate(zip(texts, hf_ids)):
            assert ids == reference.encode(text, allowed_special="all"), f"{name}[{i}]: {text[:80]!r}"


def test_the_verdict_token_count(dataset_texts):
    # 5,145 tokens: the figure the GPT-2 from-scratch literature quotes for this story.
    assert len(get_tokenizer().encode(dataset_texts["the-verdict"][0])) == 5145


# --------------------------------------------------------------------------------------
# parity on random text
# --------------------------------------------------------------------------------------


@HYPOTHESIS
@given(text=random_text)
def test_random_text_parity(text, reference, hf_fast):
    expected = reference.encode(text, allowed_special="all")
    expected_plain = reference.encode_ordinary(text)
    for engine in ENGINES:
        tok = get_tokenizer(engine)
        assert tok.encode(text) == expected, engine
        assert tok.encode(text, allowed_special="none") == expected_plain, engine
        assert tok.decode(expected) == text
        assert tok.decode(expected_plain) == text
    assert hf_fast(text)["input_ids"] == expected
    assert hf_fast.decode(expected) == text


@HYPOTHESIS
@given(text=st.text(st.characters(codec=None, categories=["Cs", "Ll", "Zs"]), max_size=20))
def test_lone_surrogates_like_tiktoken(text, reference):
    # Not valid UTF-8: both engines replace lone surrogates with U+FFFD, as tiktoken does.
    expected = reference.encode(text)
    for engine in ENGINES:
        assert get_tokenizer(engine).encode(text) == expected


# --------------------------------------------------------------------------------------
# Hugging Face export
# --------------------------------------------------------------------------------------


def test_hf_files(hf_dir):
    merges = (hf_dir / "merges.txt").read_text(encoding="utf-8").splitlines()
    assert merges[0] == "#version: 0.2"
    # GPT-2's published merges.txt starts like this and has 50,000 merges.
    assert merges[1:11] == ["Ġ t", "Ġ a", "h e", "i n", "r e", "o n", "Ġt he", "e r", "Ġ s", "a t"]
    assert len(merges) == 1 + 50000
    vocab = json.loads((hf_dir / "vocab.json").read_text(encoding="utf-8"))
    assert len(vocab) == 50257
    assert vocab["<|endoftext|>"] == 50256 and vocab["Hello"] == 15496 and vocab["Ġworld"] == 995
    assert vocab["!"] == 0 and vocab["Ġ"] == 220
    assert sorted(vocab.values()) == list(range(50257))
    config = json.loads((hf_dir / "tokenizer_config.json").read_text())
    assert config["eos_token"] == EOT and config["model_max_length"] == 1024
    assert json.loads((hf_dir / "special_tokens_map.json").read_text())["eos_token"] == EOT
    assert not [p for p in hf_dir.iterdir() if p.name.endswith(".tmp")]
    for engine in ENGINES:
        assert get_tokenizer(engine).hf_vocab_and_merges == (
            vocab,
            [tuple(m.split()) for m in merges[1:]],
        )


def test_hf_tokenizer_classes_load_export(hf_dir, reference):
    from transformers import GPT2Tokenizer, GPT2TokenizerFast

    text = f"Hello, world!  It's 2024 🎉 — déjà vu.{EOT}\n\n  next"
    for cls in (GPT2Tokenizer, GPT2TokenizerFast):
        hf = cls.from_pretrained(hf_dir)
        assert len(hf) == 50257
        assert hf.eos_token_id == 50256 and hf.bos_token_id == 50256
        assert hf(text)["input_ids"] == reference.encode(text, allowed_special="all")
        assert hf.decode(hf(text)["input_ids"]) == text


# --------------------------------------------------------------------------------------
# incremental decoding
# --------------------------------------------------------------------------------------


def _stream(decoder: IncrementalDecoder, ids: list[int]) -> list[str]:
    return [decoder.feed(i) for i in ids] + [decoder.flush()]


def test_incremental_decoder_holds_back_partial_characters():
    tok = get_tokenizer()
    ids = tok.encode("héllo 🎉!")
    assert ids == [71, 2634, 18798, 12520, 236, 231, 0]
    dec = tok.incremental_decoder()
    assert dec.feed(71) == "h"
    assert dec.feed(2634) == "é"
    assert dec.feed(18798) == "llo"
    assert dec.feed(12520) == " "  # b" \xf0\x9f": the emoji's first two bytes are held back
    assert dec.feed(236) == ""
    assert dec.feed(231) == "🎉"
    assert dec.feed(0) == "!"
    assert dec.flush() == ""
    # a stream that ends inside a character flushes U+FFFD, like decode()
    assert _stream(dec, [12520, 236]) == [" ", "", "\ufffd"]
    assert tok.decode([12520, 236]) == " \ufffd"


@pytest.mark.parametrize("engine", ENGINES)
def test_incremental_decoder_on_datasets(engine, dataset_texts):
    tok = get_tokenizer(engine)
    sample = dataset_texts["sms"][:300] + dataset_texts["instruction-data.json"][:300]
    sample += ["日本語のテキスト 🎉👍🏽 e\u0301 " + EOT + " 中文"]
    for text in sample:
        ids = tok.encode(text)
        assert "".join(_stream(IncrementalDecoder(tok), ids)) == text


@HYPOTHESIS
@given(ids=st.lists(st.integers(0, 50256), max_size=40), text=random_text)
def test_incremental_decoder_matches_decode(ids, text):
    tok = get_tokenizer()
    # random ids (often invalid UTF-8) and real text: the stream equals one decode
    for seq in (ids, tok.encode(text)):
        assert "".join(_stream(tok.incremental_decoder(), seq)) == tok.decode(seq)


# --------------------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------------------


def _naive_train(counts: Counter[bytes], n_ranks: int) -> list[bytes]:
    """The textbook algorithm, recounting every pair at every step (slow, obviously right)."""
    vocab = [bytes([b]) for b in range(256)]
    ids = {tok: i for i, tok in enumerate(vocab)}
    words = {tuple(piece): n for piece, n in counts.items()}
    while len(vocab) < n_ranks:
        pairs: Counter[tuple[int, int]] = Counter()
        for word, n in words.items():
            for pair in zip(word, word[1:]):
                pairs[pair] += n
        left, right = min(pairs, key=lambda p: (-pairs[p], p))
        merged = vocab[left] + vocab[right]
        if merged not in ids:
            ids[merged] = len(vocab)
            vocab.append(merged)
        new_words: Counter[tuple[int, ...]] = Counter()
        for word, n in words.items():
            out, i = [], 0
            while i < len(word):
                if i + 1 < len(word) and (word[i], word[i + 1]) == (left, right):
                    out.append(ids[merged])
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            new_words[tuple(out)] += n
        words = new_words
    return vocab


def test_train_first_merges_hand_made():
    # pre-tokens: "ab", " ab" x3, " cd" x2 -> pairs (a,b) x4, (" ",a) x3, (" ",c) x2, (c,d) x2
    tok = train_bpe(["ab ab ab cd cd ab"], vocab_size=261)
    learned = sorted((rank, token) for token, rank in tok.mergeable_ranks.items() if rank >= 256)
    # "ab" (4), then " ab" (3), then the tie (" ",c)=(c,d)=2 goes to the earlier-learned
    # left token (" " = 32 < "c" = 99), then " cd".
    assert [token for _, token in learned] == [b"ab", b" ab", b" c", b" cd"]
    assert tok.special_tokens == {EOT: 260}
    assert tok.vocab_size == 261
    assert tok.encode(" cd ab") == [259, 257]


def test_train_matches_naive_algorithm(dataset_texts):
    text = dataset_texts["the-verdict"][0][:4000]
    counts = count_pretokens([text])
    fast = train_bpe_ranks(counts, 420)
    assert list(fast) == _naive_train(counts, 420)


@settings(max_examples=60, deadline=None)
@given(
    texts=st.lists(st.text(st.sampled_from("abcab ."), max_size=30), min_size=1, max_size=8),
    n_merges=st.integers(1, 30),
)
def test_train_matches_naive_algorithm_random(texts, n_merges):
    # tiny alphabets make ties and different pairs spelling the same bytes common
    counts = count_pretokens(texts)
    try:
        expected = _naive_train(counts, 256 + n_merges)
    except ValueError:  # min() of no pairs: the text runs out of merges
        with pytest.raises(DataError, match="only supports"):
            train_bpe_ranks(counts, 256 + n_merges)
        return
    assert list(train_bpe_ranks(counts, 256 + n_merges)) == expected


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    texts=st.lists(st.text(st.sampled_from("abcab ."), min_size=5, max_size=40), min_size=4, max_size=8),
    probe=st.text(st.sampled_from("abc ."), max_size=60),
)
def test_hf_export_of_random_trained_vocab(texts, probe, tmp_path):
    from transformers import GPT2TokenizerFast

    try:
        tok = train_bpe(texts, vocab_size=256 + 12 + 1)
    except DataError:
        return  # too little text for 12 merges
    folder = tmp_path / str(abs(hash((tuple(texts), probe))))
    save_hf_tokenizer_files(folder, tok)
    hf = GPT2TokenizerFast.from_pretrained(folder)
    for text in [*texts, probe]:
        assert hf(text)["input_ids"] == tok.encode(text)


def test_train_the_verdict(dataset_texts, tmp_path, reference):
    text = dataset_texts["the-verdict"][0]
    path = tmp_path / "the-verdict.txt"
    path.write_text(text, encoding="utf-8")
    calls = []
    tok = train_bpe(path, vocab_size=500, progress=lambda done, total: calls.append((done, total)))
    assert tok.vocab_size == 500 and len(tok.mergeable_ranks) == 499
    assert tok.eot_id == 499
    assert calls[-1] == (243, 243) and len(calls) == 243
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert len(ids) < len(text.encode()) / 2  # it learned something
    # deterministic, and independent of input order
    assert train_bpe([text], 500).mergeable_ranks == tok.mergeable_ranks
    lines = text.splitlines(keepends=True)
    random.Random(0).shuffle(lines)
    assert train_bpe(lines[::-1], 500).mergeable_ranks == train_bpe(lines, 500).mergeable_ranks
    # the Hugging Face export of a trained vocabulary gives the same ids
    from transformers import GPT2TokenizerFast

    save_hf_tokenizer_files(tmp_path / "hf", tok)
    hf = GPT2TokenizerFast.from_pretrained(tmp_path / "hf")
    assert len(hf) == 500 and hf.eos_token_id == 499
    chunks = _split_chunks(text) + [f"hello{EOT}world"]
    assert hf(chunks)["input_ids"] == [tok.encode(chunk) for chunk in chunks]


@HYPOTHESIS
@given(text=random_text)
def test_trained_tokenizer_round_trips_any_text(text, trained_small):
    ids = trained_small.encode(text)
    assert all(0 <= i < trained_small.vocab_size for i in ids)
    assert trained_small.decode(ids) == text


@pytest.fixture(scope="module")
def trained_small(dataset_texts) -> BPETokenizer:
    return train_bpe(dataset_texts["instruction-data.json"][:200], vocab_size=400)


def test_train_special_tokens_are_not_learned():
    text = f"one two{EOT}three four{EOT}<|pad|>" * 50
    # Cut out or not, the special strings are the most frequent text here: had they been
    # trained on, "<|", "|>", ... would be among the first merges.
    tok = train_bpe([text], vocab_size=270, special_tokens=[EOT, "<|pad|>"])
    assert tok.special_tokens == {EOT: 268, "<|pad|>": 269}
    assert not any(b"|" in token for token in tok.mergeable_ranks if len(token) > 1)
    assert tok.encode(f"one{EOT}<|pad|>", allowed_special="all")[-2:] == [268, 269]
    # by default only <|endoftext|> is special; "<|pad|>" stays text
    assert 268 in tok.encode(f"one{EOT}<|pad|>") and 269 not in tok.encode(f"one{EOT}<|pad|>")
    assert tok.decode(tok.encode(text, allowed_special="all")) == text


def test_train_errors(tmp_path):
    with pytest.raises(ConfigError, match="at least 257"):
        train_bpe(["abc"], vocab_size=200)
    with pytest.raises(DataError, match="only supports a vocabulary of 258"):
        train_bpe(["abc"], vocab_size=400)
    with pytest.raises(ConfigError, match="pathlib.Path"):
        train_bpe("some-file.txt", vocab_size=300)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="repeats"):
        train_bpe(["abc"], vocab_size=300, special_tokens=[EOT, EOT])
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(DataError, match="not UTF-8"):
        train_bpe(latin1, vocab_size=300)


def test_save_load_round_trip(trained_small, tmp_path):
    path = trained_small.save(tmp_path / "vocab" / "small.tiktoken")
    assert [p.name for p in path.parent.iterdir()] == ["small.tiktoken"]  # no temp file left
    # the file is tiktoken's format: tiktoken reads it too
    assert load_tiktoken_bpe(str(path)) == trained_small.mergeable_ranks
    loaded = load_bpe(path)
    assert loaded.mergeable_ranks == trained_small.mergeable_ranks
    assert loaded.special_tokens == trained_small.special_tokens
    text = f"Rewrite the sentence using a simile.{EOT}Hi"
    assert loaded.encode(text) == trained_small.encode(text)
    # overwriting is atomic too, and save_tiktoken_ranks writes the same bytes
    save_tiktoken_ranks(gpt2_ranks(), path)
    assert path.read_bytes() == ASSET.read_bytes()


@pytest.mark.parametrize("specials", [[], [EOT, "<|pad|>"]])
def test_hf_export_of_trained_special_tokens(specials, dataset_texts, tmp_path):
    from transformers import GPT2TokenizerFast

    tok = train_bpe(dataset_texts["the-verdict"], vocab_size=258 + len(specials), special_tokens=specials)
    save_hf_tokenizer_files(tmp_path, tok)
    hf = GPT2TokenizerFast.from_pretrained(tmp_path)
    assert len(hf) == tok.vocab_size  # nothing added behind our back
    assert hf.eos_token == (EOT if specials else None)
    text = f"hello {EOT} the<|pad|>re"
    assert hf(text)["input_ids"] == tok.encode(text, allowed_special="all")


