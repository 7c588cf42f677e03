"""GPTConfig: configs saved by earlier versions with the removed token n-gram option."""

from __future__ import annotations

import json

import pytest

from customgpt.config import GPTConfig
from customgpt.errors import ConfigError


def test_saved_config_with_zero_token_ngram_buckets_still_loads(tmp_path):
    config = GPTConfig(n_embd=16, n_layer=1, n_head=2, context_length=8)
    path = tmp_path / "config.json"
    path.write_text('{"n_embd": 16, "n_layer": 1, "n_head": 2, "context_length": 8, "token_ngram_buckets": 0}')
    assert GPTConfig.from_dict(json.loads(path.read_text()), where=str(path)) == config
    assert "token_ngram_buckets" not in config.to_dict()


def test_saved_config_with_token_ngram_buckets_is_refused_by_name(tmp_path):
    path = tmp_path / "config.json"
    path.write_text('{"n_embd": 16, "n_layer": 1, "n_head": 2, "token_ngram_buckets": 512}')
    with pytest.raises(ConfigError) as err:
        GPTConfig.from_dict(json.loads(path.read_text()), where=str(path))
    assert str(err.value) == (f"{path}: token_ngram_buckets 512: hashed token n-gram embeddings were removed; "
                              "this model cannot be loaded by this version")
