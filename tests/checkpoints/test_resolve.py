"""Model specs, loading and describing (customgpt.checkpoints.resolve)."""

from __future__ import annotations

import json
import os

import pytest
import torch
from helpers import tiny_config, tiny_hf_model, tiny_model

import customgpt.checkpoints as ckpt
from customgpt.checkpoints import (
    describe_model_spec,
    load_model,
    resolve_model_spec,
    save_model,
)
from customgpt.errors import CheckpointError, ConfigError, CustomGPTError


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# --------------------------------------------------------------------------- the resolver


def test_lone_weights_file_needs_a_config(tmp_path):
    model = tiny_model(seed=4)
    ckpt.save_weights(ckpt.state_for_saving(model), tmp_path / "w.safetensors")
    with pytest.raises(CheckpointError, match="config"):
        load_model(tmp_path / "w.safetensors")
    loaded = load_model(tmp_path / "w.safetensors", config=model.config)
    assert _same_weights(loaded, model)
    # HF layout in a lone .bin file, config given as a GPTConfig: the layout is detected.
    hf = tiny_hf_model(seed=5)
    torch.save(hf.state_dict(), tmp_path / "hf.bin")
    source = resolve_model_spec(tmp_path / "hf.bin", config=tiny_config())
    assert source.kind == "file"
    loaded = load_model(tmp_path / "hf.bin", config=tiny_config())
    idx = torch.randint(0, 100, (1, 10))
    with torch.no_grad():
        assert (loaded(idx) - hf(idx).logits).abs().max().item() <= 1e-5


def test_sharded_hf_checkpoint(tmp_path):
    hf = tiny_hf_model(seed=6)
    hf.save_pretrained(tmp_path, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    loaded = load_model(tmp_path)
    idx = torch.randint(0, 100, (1, 10))
    with torch.no_grad():
        assert (loaded(idx) - hf(idx).logits).abs().max().item() <= 1e-5


def test_resolver_kinds_and_errors(tmp_path):
    assert resolve_model_spec("cpu-tiny").kind == "preset"
    assert resolve_model_spec("gpt2-124M").kind == "preset"  # the shape, not the weights
    save_model(tiny_model(), tmp_path / "ours")
    tiny_hf_model().save_pretrained(tmp_path / "theirs")
    assert resolve_model_spec(tmp_path / "ours").kind == "customgpt"
    assert resolve_model_spec(tmp_path / "theirs").kind == "hf"
    with pytest.raises(CustomGPTError, match="unknown model 'nonsense'"):
        load_model("nonsense")
    with pytest.raises(CustomGPTError, match="no such local file or folder"):
        load_model(str(tmp_path / "missing" / "model.safetensors"))
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text(json.dumps(tiny_config().to_dict()))
    with pytest.raises(CheckpointError, match="holds no model.safetensors"):
        load_model(tmp_path / "empty")
    (tmp_path / "empty" / "config.json").write_text('{"n_layer": 2, "n_heads": 3}')
    with pytest.raises(ConfigError, match="n_heads"):
        load_model(tmp_path / "empty")


def test_hub_id_offline_fails_fast_with_advice(monkeypatch):
    assert os.environ["HF_HUB_OFFLINE"] == "1"  # set by conftest
    for spec in ("gpt2", "openai-community/gpt2-medium", "someone/some-gpt2"):
        with pytest.raises(CustomGPTError, match="offline.*pass its path instead of the hub id"):
            load_model(spec)


def test_hub_id_resolves_through_the_cache(tmp_path, monkeypatch):
    """A hub id goes through snapshot_download (offline: the local cache only)."""
    import huggingface_hub

    hf = tiny_hf_model(seed=7)
    hf.save_pretrained(tmp_path / "snapshot")
    calls = []

    def fake_snapshot_download(repo_id, **kwargs):
        calls.append((repo_id, kwargs))
        return str(tmp_path / "snapshot")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    model = load_model("gpt2")
    repo_id, kwargs = calls[0]
    assert repo_id == "openai-community/gpt2"
    assert kwargs["local_files_only"] is True  # HF_HUB_OFFLINE=1
    assert "config.json" in kwargs["allow_patterns"] and "model.safetensors" in kwargs["allow_patterns"]
    assert _same_weights(model, load_model(tmp_path / "snapshot"))
    info = describe_model_spec("openai-community/gpt2")
    assert info.kind == "hub" and info.hub_id == "openai-community/gpt2"
    assert calls[-1][1]["allow_patterns"] == ["config.json"]  # info never downloads weights
    assert info.parameters == hf.num_parameters() and info.dtype == "float32"


def test_describe_model_spec_counts(tmp_path):
    info = describe_model_spec("gpt2-124M")
    assert (info.parameters, info.embedding_parameters, info.non_embedding_parameters) == (
        124_439_808, 39_383_808, 85_056_000,
    )
    offline = describe_model_spec("gpt2")  # not downloaded, offline: described from the preset
    assert offline.parameters == 124_439_808 and "not downloaded" in offline.source
    model = tiny_model()
    save_model(model, tmp_path, metadata={"training run": "r1"})
    info = describe_model_spec(tmp_path)
    assert info.kind == "customgpt" and info.parameters == model.num_parameters()
    assert info.dtype == "float32" and info.metadata["training run"] == "r1"
