"""Our layout, the customgpt folder, building models, atomic saves (customgpt.checkpoints.state)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import tiny_model

import customgpt.checkpoints as ckpt
from customgpt.checkpoints import (
    describe_model_spec,
    export_hf,
    load_model,
    load_weights,
    read_metadata,
    save_model,
)
from customgpt.config import GPTConfig
from customgpt.errors import CheckpointError, ConfigError
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


def test_tied_head_stored_twice_must_equal_the_embedding(tmp_path):
    model = tiny_model()
    tensors = _tensors(model)
    tensors["lm_head.weight"] = tensors["transformer.wte.weight"].clone()
    _write_folder(tmp_path, tensors, model.config)
    assert _same_weights(load_model(tmp_path), model)
    tensors["lm_head.weight"] += 1
    _write_folder(tmp_path, tensors, model.config)
    assert describe_model_spec(tmp_path).parameters == model.num_parameters()  # a header has no values
    with pytest.raises(CheckpointError, match="lm_head.weight differs from transformer.wte.weight"):
        load_model(tmp_path)


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
