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
    with pytest.raises(ConfigError, match="unknown model preset 'no-such-preset'"):
        load_model(tmp_path / "w.safetensors", config="no-such-preset")
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
    info = describe_model_spec(tmp_path)  # shapes checked over every shard's header
    assert info.parameters == hf.num_parameters() and info.dtype == "float32"
    config = json.loads((tmp_path / "config.json").read_text(encoding="utf-8"))
    (tmp_path / "config.json").write_text(json.dumps({**config, "n_layer": 3}), encoding="utf-8")
    with pytest.raises(CheckpointError, match=r"model.safetensors.index.json does not match the model config: missing"):
        describe_model_spec(tmp_path)


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
    (tmp_path / "blank").mkdir()
    with pytest.raises(CheckpointError, match="blank holds no model.safetensors or pytorch_model.bin$"):
        load_model(tmp_path / "blank")
    # a run folder given instead of its model: the models inside it are named
    save_model(tiny_model(), tmp_path / "run" / "final")
    with pytest.raises(CheckpointError, match=r"run holds no model \(no config.json\), but its subfolder\(s\) "
                       r"final do: pass one of them, e.g. .*run/final$"):
        load_model(tmp_path / "run")


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


# --------------------------------------------------------------------------- local paths are not hub ids (17.10)


def test_missing_folder_under_an_existing_parent_is_only_local(tmp_path, monkeypatch, capsys):
    from customgpt import hub
    from customgpt.cli import main

    def no_hub(*args, **kwargs):
        raise AssertionError("a local path must never be tried on the hub")

    monkeypatch.setattr(hub, "download_model", no_hub)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    with pytest.raises(CustomGPTError) as info:
        load_model("runs/my-model")
    assert str(info.value) == "no such local file or folder: runs/my-model"
    assert main(["info", "runs/my-model"]) == 2
    assert capsys.readouterr().err == "error: no such local file or folder: runs/my-model\n"


@pytest.mark.parametrize("spec", ["./my-model", "../elsewhere/model", "/no/such/model", "~/no-such-model/x"])
def test_paths_starting_with_dot_slash_or_tilde_are_only_local(spec, monkeypatch):
    from customgpt import hub

    monkeypatch.setattr(hub, "download_model", lambda *a, **k: pytest.fail("tried on the hub"))
    with pytest.raises(CustomGPTError) as info:
        resolve_model_spec(spec)
    assert str(info.value) == f"no such local file or folder: {spec}"


def test_bare_owner_name_names_both_interpretations(tmp_path, monkeypatch, capsys):
    from customgpt.cli import main

    monkeypatch.chdir(tmp_path)  # no folder "someone" here
    with pytest.raises(CustomGPTError) as info:
        load_model("someone/my-model")
    message = str(info.value)
    assert message.startswith(
        "'someone/my-model' is not a local folder (no such path), and as a hub id: cannot download "
        "'someone/my-model': the hub is offline (HF_HUB_OFFLINE=1) and it is not in the local cache; "
    )
    assert main(["info", "someone/my-model"]) == 2
    err = capsys.readouterr().err
    assert err == f"error: {message}\n" and "Traceback" not in err


# --------------------------------------------------------------------------- vocabulary vs tokenizer (17.2)


def test_model_vocabulary_smaller_than_the_tokenizer_is_refused_at_load(tmp_path):
    save_model(tiny_model(), tmp_path / "small")  # 100 ids
    with pytest.raises(CheckpointError) as info:
        load_model(tmp_path / "small", tokenizer_vocab_size=50257)
    assert str(info.value) == (
        f"customgpt checkpoint {tmp_path / 'small' / 'model.safetensors'} has a vocabulary of 100 ids, "
        "smaller than its tokenizer's 50,257: the tokenizer would produce ids the model has no embedding "
        "for; use the tokenizer the model was trained with"
    )
    assert load_model(tmp_path / "small", tokenizer_vocab_size=100).config.vocab_size == 100


def test_padded_vocabulary_is_accepted_and_a_trained_tokenizer_is_checked(tmp_path):
    from customgpt.tokenizer import train_bpe

    tok = train_bpe(["hello world, hello there " * 20], vocab_size=265)
    with pytest.raises(CheckpointError, match=r"vocabulary of 100 ids, smaller than its tokenizer's 265"):
        load_model("cpu-tiny", config=tiny_config(), tokenizer_vocab_size=tok.vocab_size)
    padded = load_model("cpu-tiny", config=tiny_config(vocab_size=50304), tokenizer_vocab_size=50257)
    assert padded.config.vocab_size == 50304  # padded as nanoGPT: fine
    model = load_model("cpu-tiny", config=tiny_config(vocab_size=320), tokenizer_vocab_size=tok.vocab_size)
    assert model.config.vocab_size == 320
