"""Pretraining data: token windows of the-verdict as in the book, the content-keyed token cache,
documents joined by end-of-text, stale temporary files of a killed tokenisation."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest

from customgpt.constants import EOT_ID
from customgpt.data.pretrain import TokenWindows, cache_path, epoch_order, load_tokens, split_tokens
from customgpt.tokenizer import get_tokenizer


@pytest.fixture(scope="module")
def verdict(shared_datasets) -> Path:
    return shared_datasets / "the-verdict.txt"


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("token-cache")


def test_verdict_windows_match_the_book(verdict, cache):
    tokens = load_tokens([verdict], get_tokenizer(), cache)
    assert len(tokens) == 5145 and tokens.dtype == np.uint16
    train, val = split_tokens(tokens, 0.1)
    train_w, val_w = TokenWindows(train, 256, 256), TokenWindows(val, 256, 256)
    assert (len(train_w) // 2, len(val_w)) == (9, 2)  # the book: 9 training batches of 2, 2 validation windows
    x, y = train_w[1]
    assert x.tolist() == tokens[256:512].tolist() and y.tolist() == tokens[257:513].tolist()
    assert len(TokenWindows(train, 256, 128)) == 35  # overlapping windows with a smaller stride
    assert sorted(epoch_order(18, seed=1, epoch=0, shuffle=True)) == list(range(18))
    assert epoch_order(18, seed=1, epoch=0, shuffle=True) != epoch_order(18, seed=1, epoch=1, shuffle=True)


def test_cache_is_keyed_by_content_and_documents_are_joined(tmp_path):
    tok = get_tokenizer()
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("Hello world.")
    b.write_text("Second document.")
    joined = load_tokens([a, b], tok, tmp_path / "cache")
    assert joined.tolist() == tok.encode("Hello world.") + [EOT_ID] + tok.encode("Second document.")
    first = cache_path([a, b], tok, tmp_path / "cache")
    assert first.is_file()
    a.write_text("Hello there.")  # an edited file gets a new cache entry
    assert cache_path([a, b], tok, tmp_path / "cache") != first
    assert load_tokens([a, b], tok, tmp_path / "cache")[:3].tolist() == tok.encode("Hello there.")[:3]


def test_stale_temporary_files_of_a_killed_tokenisation_are_removed(verdict, tmp_path):
    """Issue 17.13: a run killed while tokenising leaves ``.NAME.XXXX.tmp`` in the token cache."""
    files, tokenizer = [verdict], get_tokenizer()
    target = cache_path(files, tokenizer, tmp_path)
    tmp_path.mkdir(exist_ok=True)
    stale = tmp_path / f".{target.name}.deadbeef.tmp"
    live = tmp_path / f".{target.name}.0badf00d.tmp"  # another run tokenising right now
    stale.write_bytes(b"\0" * 100)
    live.write_bytes(b"\0" * 10)
    old = time.time() - 2 * 3600
    os.utime(stale, (old, old))
    load_tokens(files, tokenizer, tmp_path)
    assert not stale.exists() and live.exists() and target.is_file()
