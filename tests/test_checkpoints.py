"""Checkpoint format, strict validation, atomic writes, the resolver, HF export and the hub."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from helpers import tiny_config, tiny_hf_model, tiny_model

import customgpt.checkpoints as ckpt
from customgpt.checkpoints import (
    describe_model_spec,
    export_hf,
    load_model,
    load_weights,
    read_metadata,
    resolve_model_spec,
    save_model,
)
from customgpt.config import GPTConfig
from customgpt.errors import CheckpointError, ConfigError, CustomGPTError
from customgpt.hub import push_to_hub
from customgpt.io import StagedFiles


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _files(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


# --------------------------------------------------------------------------- round trip


def test_save_load_round_trip(tmp_path):
    model = tiny_model(seed=1)
    save_model(model, tmp_path, metadata={"training run": "unit-test", "step": 3})
    assert _files(tmp_path) == {"model.safetensors", "config.json", "metadata.json"}
    # The tied head is stored once, as the token embedding.
    keys = set(load_weights(tmp_path / "model.safetensors"))
    assert "transformer.wte.weight" in keys and "lm_head.weight" not in keys
    assert json.loads((tmp_path / "config.json").read_text()) == model.config.to_dict()
    meta = read_metadata(tmp_path)
    assert meta["training run"] == "unit-test" and meta["step"] == 3 and meta["format"] == "customgpt"

    loaded = load_model(tmp_path)
    assert loaded.config == model.config
    assert _same_weights(loaded, model)
    assert loaded.lm_head.weight is loaded.transformer.wte.weight  # tied again
    assert not loaded.training  # eval mode, like from_pretrained
    assert all(p.requires_grad for p in loaded.parameters())  # ready to fine-tune
    idx = torch.randint(0, 100, (2, 16))
    assert torch.equal(loaded(idx), model(idx))


def test_saved_files_get_ordinary_permissions(tmp_path):
    """Not the private 0600 that a temporary file (or the safetensors writer) starts with."""
    probe = tmp_path / "probe"
    probe.write_text("x")
    expected = probe.stat().st_mode & 0o777
    save_model(tiny_model(), tmp_path / "ckpt")
    export_hf(tiny_model(), tmp_path / "hf")
    for folder in ("ckpt", "hf"):
        for path in (tmp_path / folder).iterdir():
            assert path.stat().st_mode & 0o777 == expected, path


def test_load_with_dtype_and_overrides(tmp_path):
    model = tiny_model(seed=2)
    save_model(model, tmp_path)
    half = load_model(tmp_path, dtype="bfloat16")
    assert all(p.dtype == torch.bfloat16 for p in half.parameters())
    assert half.lm_head.weight is half.transformer.wte.weight
    explicit = load_model(tmp_path, overrides={"impl": "explicit", "dropout": 0.1})
    assert explicit.config.impl == "explicit" and explicit.config.dropout == 0.1
    save_model(half, tmp_path / "bf16")  # saved in bf16 → loads in bf16 when dtype is not given
    assert load_model(tmp_path / "bf16").transformer.wte.weight.dtype == torch.bfloat16
    assert describe_model_spec(tmp_path / "bf16").dtype == "bfloat16"


def test_untied_head_round_trip(tmp_path):
    model = tiny_model(seed=3, tie_embeddings=False)
    save_model(model, tmp_path)
    assert "lm_head.weight" in load_weights(tmp_path / "model.safetensors")
    loaded = load_model(tmp_path)
    assert loaded.lm_head.weight is not loaded.transformer.wte.weight
    assert _same_weights(loaded, model)
    with pytest.raises(ConfigError, match="tie"):
        export_hf(model, tmp_path / "hf")


def test_replaced_head_is_not_dropped_silently(tmp_path):
    model = tiny_model()
    model.lm_head = torch.nn.Linear(48, 100, bias=False)  # e.g. a new head, config still tied
    with pytest.raises(CheckpointError, match="lm_head.weight is not the token embedding"):
        save_model(model, tmp_path)
    assert not (tmp_path / "model.safetensors").exists()


def test_compiled_model_is_saved_as_the_plain_model(tmp_path):
    """torch.compile wraps the model as ``_orig_mod`` (its state-dict keys gain that prefix);
    a stand-in wrapper of the same shape keeps this test free of the compiler's start-up."""

    class Wrapped(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self._orig_mod = inner
            self.config = inner.config

    model = tiny_model(seed=3)
    save_model(Wrapped(model), tmp_path / "ours")
    export_hf(Wrapped(model), tmp_path / "hf")
    assert _same_weights(load_model(tmp_path / "ours"), model)
    assert _same_weights(load_model(tmp_path / "hf"), model)


def test_preset_random_init_is_seeded():
    a = load_model("cpu-tiny", seed=5)
    state = torch.random.get_rng_state()
    b = load_model("cpu-tiny", seed=5)
    assert torch.equal(torch.random.get_rng_state(), state)  # the global RNG is left alone
    assert _same_weights(a, b)
    assert not _same_weights(a, load_model("cpu-tiny", seed=6))
    assert a.config == GPTConfig.from_preset("cpu-tiny")


# --------------------------------------------------------------------------- strict validation


def _tensors(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in ckpt.state_for_saving(model).items()}


def _write_folder(folder: Path, tensors: dict[str, torch.Tensor], config: GPTConfig) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    ckpt.save_weights(tensors, folder / "model.safetensors")
    config.save(folder / "config.json")
    return folder


def test_missing_tensor_is_named(tmp_path):
    model = tiny_model()
    tensors = _tensors(model)
    del tensors["transformer.h.1.mlp.c_fc.bias"]
    _write_folder(tmp_path, tensors, model.config)
    with pytest.raises(CheckpointError, match=r"missing tensor\(s\): transformer\.h\.1\.mlp\.c_fc\.bias"):
        load_model(tmp_path)


def test_unexpected_tensor_is_named(tmp_path):
    model = tiny_model()
    tensors = _tensors(model)
    tensors["transformer.h.2.attn.c_attn.weight"] = torch.zeros(144, 48)
    _write_folder(tmp_path, tensors, model.config)
    with pytest.raises(CheckpointError, match=r"unexpected tensor\(s\): transformer\.h\.2\.attn\.c_attn\.weight"):
        load_model(tmp_path)


def test_wrong_shape_is_named_with_shapes(tmp_path):
    model = tiny_model()
    tensors = _tensors(model)
    tensors["transformer.wpe.weight"] = torch.zeros(16, 48)
    _write_folder(tmp_path, tensors, model.config)
    with pytest.raises(CheckpointError, match=r"transformer\.wpe\.weight is \(16, 48\), expected \(32, 48\)"):
        load_model(tmp_path)


def test_hf_layout_validation_names_tensors(tmp_path):
    hf = tiny_hf_model(seed=1)
    hf.save_pretrained(tmp_path)
    config = GPTConfig.from_hf_dict(hf.config.to_dict())
    state = dict(hf.state_dict())

    missing = {k: v for k, v in state.items() if k != "transformer.ln_f.bias"}
    with pytest.raises(CheckpointError, match=r"missing tensor\(s\): transformer\.ln_f\.bias"):
        ckpt.hf_to_customgpt_state(missing, config)
    # Conv1D weights are checked in the file's (in, out) orientation.
    wrong = {**state, "transformer.h.0.mlp.c_fc.weight": torch.zeros(192, 48)}
    with pytest.raises(CheckpointError, match=r"transformer\.h\.0\.mlp\.c_fc\.weight is \(192, 48\), expected \(48, 192\)"):
        ckpt.hf_to_customgpt_state(wrong, config)
    extra = {**state, "transformer.h.0.attn.q_proj.weight": torch.zeros(48, 48)}
    with pytest.raises(CheckpointError, match=r"unexpected tensor\(s\): transformer\.h\.0\.attn\.q_proj\.weight"):
        ckpt.hf_to_customgpt_state(extra, config)
    untied = {**state, "lm_head.weight": torch.zeros(100, 48)}
    with pytest.raises(CheckpointError, match="lm_head.weight differs"):
        ckpt.hf_to_customgpt_state(untied, config)
    # A config of another size: every mismatch is reported against the file.
    with pytest.raises(CheckpointError, match="model.safetensors does not match"):
        load_model(tmp_path, config=tiny_config(n_layer=3))


def test_truncated_safetensors_names_the_file(tmp_path):
    save_model(tiny_model(), tmp_path)
    path = tmp_path / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"model\.safetensors.*corrupt or truncated"):
        load_model(tmp_path)
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        describe_model_spec(tmp_path)
    path.write_bytes(b"\x00" * 5)
    with pytest.raises(CheckpointError, match=str(path.name)):
        load_model(tmp_path)


def test_corrupt_and_malicious_bin_files(tmp_path):
    bad = tmp_path / "garbage.bin"
    bad.write_bytes(b"not a zip or a pickle")
    with pytest.raises(CheckpointError, match="garbage.bin"):
        load_weights(bad)

    marker = tmp_path / "pwned"

    class Payload:  # a pickle that would run code when loaded without weights_only
        def __reduce__(self):
            return (Path.touch, (marker,))

    evil = tmp_path / "evil.bin"
    torch.save({"transformer.wte.weight": torch.zeros(1), "x": Payload()}, evil)
    with pytest.raises(CheckpointError, match="evil.bin"):
        load_weights(evil)
    assert not marker.exists()

    nested = tmp_path / "nested.pt"
    torch.save({"model": {"w": torch.zeros(1)}}, nested)
    with pytest.raises(CheckpointError, match="flat state dict"):
        load_weights(nested)


# --------------------------------------------------------------------------- atomic writes


def _fail_mid_write(monkeypatch):
    """Make the safetensors writer die after writing half a file, as a crash would."""
    import safetensors.torch

    real = safetensors.torch.save_file

    def broken(tensors, filename, metadata=None):
        real(tensors, filename, metadata=metadata)
        data = Path(filename).read_bytes()
        Path(filename).write_bytes(data[: len(data) // 2])
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(safetensors.torch, "save_file", broken)


def test_interrupted_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
    old = tiny_model(seed=1)
    save_model(old, tmp_path, metadata={"version": 1})
    before = {name: (tmp_path / name).read_bytes() for name in _files(tmp_path)}

    _fail_mid_write(monkeypatch)
    with pytest.raises(OSError, match="simulated"):
        save_model(tiny_model(seed=2, n_layer=3), tmp_path, metadata={"version": 2})
    # Nothing half-written under a final name, no temporary file left behind, old one intact.
    assert _files(tmp_path) == set(before)
    assert {name: (tmp_path / name).read_bytes() for name in before} == before
    assert _same_weights(load_model(tmp_path), old)


def test_interrupted_save_after_weights_keeps_previous_checkpoint(tmp_path, monkeypatch):
    """A failure after the weights are complete (writing the config) still changes nothing."""
    old = tiny_model(seed=1)
    save_model(old, tmp_path)
    before = {name: (tmp_path / name).read_bytes() for name in _files(tmp_path)}

    def broken(self, name, data):
        raise OSError(f"cannot write {name} (simulated)")

    monkeypatch.setattr(StagedFiles, "write_json", broken)
    with pytest.raises(OSError, match="simulated"):
        save_model(tiny_model(seed=2), tmp_path)
    assert {name: (tmp_path / name).read_bytes() for name in _files(tmp_path)} == before


def test_interrupted_first_save_leaves_nothing(tmp_path, monkeypatch):
    _fail_mid_write(monkeypatch)
    target = tmp_path / "new"
    with pytest.raises(OSError):
        save_model(tiny_model(), target)
    assert _files(target) == set()
    with pytest.raises(CheckpointError):
        load_model(target, config="cpu-tiny")


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


# --------------------------------------------------------------------------- HF export


def test_export_hf_files_card_and_tokenizer(tmp_path):
    from transformers import AutoTokenizer, GPT2LMHeadModel

    from customgpt.tokenizer import get_tokenizer

    model = tiny_model(seed=8, vocab_size=50257, n_layer=1, n_embd=16, n_head=2)
    export_hf(model, tmp_path, provenance={"source weights": "random init", "training run": "runs/x"})
    names = _files(tmp_path)
    assert {"config.json", "model.safetensors", "generation_config.json", "README.md", "vocab.json", "merges.txt"} <= names
    assert not any(n.endswith(".tmp") for n in names)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["torch_dtype"] == "float32" and config["model_type"] == "gpt2" and config["n_inner"] == 64
    card = (tmp_path / "README.md").read_text()
    front = card.split("---")[1]
    assert "library_name: transformers" in front and "license: mit" in front and "- gpt2" in front
    assert "runs/x" in card and f"{model.num_parameters():,}" in card and "AutoModelForCausalLM" in card
    assert "load_model" in card

    hf, loading = GPT2LMHeadModel.from_pretrained(tmp_path, output_loading_info=True)
    assert all(not v for v in loading.values()), loading
    text = "Every effort moves you"
    ids = AutoTokenizer.from_pretrained(tmp_path)(text)["input_ids"]
    assert ids == get_tokenizer().encode(text)
    idx = torch.tensor([ids])
    with torch.no_grad():
        assert (hf.eval()(idx).logits - model(idx)).abs().max().item() <= 1e-5


def test_export_hf_small_vocab_has_no_tokenizer(tmp_path):
    export_hf(tiny_model(), tmp_path)
    assert "vocab.json" not in _files(tmp_path)
    assert "No tokenizer files" in (tmp_path / "README.md").read_text()


# --------------------------------------------------------------------------- push


class FakeHfApi:
    """Records what push_to_hub asks of the hub (HfApi's two methods that it uses)."""

    calls: list = []

    def __init__(self, token=None):
        self.calls.append(("init", token))

    def create_repo(self, repo_id, private=False, exist_ok=False, repo_type=None):
        self.calls.append(("create_repo", repo_id, private, exist_ok, repo_type))
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, folder_path, repo_id, repo_type=None, commit_message=None):
        self.calls.append(("upload_folder", sorted(os.listdir(folder_path)), repo_id, repo_type))


def test_push_to_hub_uses_hfapi(tmp_path, monkeypatch):
    import huggingface_hub

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE")
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeHfApi)
    FakeHfApi.calls = []
    export_hf(tiny_model(), tmp_path)
    url = push_to_hub(tmp_path, "me/tiny-gpt2", private=True, token="hf_test")
    assert url == "https://huggingface.co/me/tiny-gpt2"
    assert FakeHfApi.calls[0] == ("init", "hf_test")
    assert FakeHfApi.calls[1] == ("create_repo", "me/tiny-gpt2", True, True, "model")
    op, files, repo, kind = FakeHfApi.calls[2]
    assert op == "upload_folder" and repo == "me/tiny-gpt2" and "model.safetensors" in files


def test_push_without_token_or_export_is_a_clear_error(tmp_path, monkeypatch):
    import huggingface_hub

    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeHfApi)
    export_hf(tiny_model(), tmp_path / "hf")
    with pytest.raises(CustomGPTError, match="login.*HF_TOKEN"):
        push_to_hub(tmp_path / "hf", "me/x")
    save_model(tiny_model(), tmp_path / "ours")
    with pytest.raises(CustomGPTError, match="convert"):
        push_to_hub(tmp_path / "ours", "me/x", token="t")
    with pytest.raises(CustomGPTError, match="user/name"):
        push_to_hub(tmp_path / "hf", "not a repo", token="t")
