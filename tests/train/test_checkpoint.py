"""Training checkpoints: round trip, RNG state, corruption, and interrupted writes."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest
import torch

from customgpt.checkpoints import load_model
from customgpt.config import GPTConfig
from customgpt.errors import CheckpointError
from customgpt.io import atomic_open, atomic_write_text
from customgpt.model import GPT
from customgpt.train import checkpoint as ckpt
from customgpt.train.config import OptimConfig
from customgpt.train.optim import build_optimizer

TINY = GPTConfig(vocab_size=97, context_length=16, n_embd=16, n_layer=1, n_head=2)


def _trained(seed: int = 0) -> tuple[GPT, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    model = GPT(TINY)
    opt = build_optimizer(model, OptimConfig(), lr=1e-2)
    x = torch.randint(0, 97, (2, 8))
    model(x).float().logsumexp(-1).mean().backward()
    opt.step()
    return model, opt


def _state(opt, step: int) -> dict:
    return {"step": step, "optimizer": opt.state_dict(), "rng": [ckpt.capture_rng_state()], "best_val_loss": 1.5}


def test_round_trip_restores_weights_optimizer_and_rng(tmp_path):
    model, opt = _trained()
    random.seed(5)
    np.random.seed(5)
    torch.manual_seed(5)
    folder = ckpt.save_checkpoint(tmp_path, ckpt.LAST, model, _state(opt, 7), config_yaml="train: {}\n")
    expected = (random.random(), np.random.rand(), torch.rand(3))

    fresh, fresh_opt = _trained(seed=1)
    state = ckpt.load_checkpoint(folder, fresh)
    fresh_opt.load_state_dict(state["optimizer"])
    ckpt.restore_rng_state(state["rng"][0])
    assert (random.random(), np.random.rand()) == expected[:2]
    assert torch.equal(torch.rand(3), expected[2])
    assert state["step"] == 7 and state["best_val_loss"] == 1.5
    for (n, p), q in zip(model.state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(p, q), n
    a, b = opt.state_dict()["state"], fresh_opt.state_dict()["state"]
    assert all(torch.equal(a[k]["exp_avg"], b[k]["exp_avg"]) for k in a)
    # the folder is also a plain model checkpoint
    assert torch.equal(load_model(folder).transformer.wte.weight, model.transformer.wte.weight)
    assert (folder / ckpt.CONFIG_NAME).read_text() == "train: {}\n"


def test_another_shape_is_one_line_naming_the_runs_config(tmp_path):
    model, opt = _trained()
    folder = ckpt.save_checkpoint(tmp_path, ckpt.LAST, model, _state(opt, 7), config_yaml="train: {}\n")
    wider = GPT(GPTConfig(vocab_size=97, context_length=16, n_embd=32, n_layer=1, n_head=2))
    with pytest.raises(CheckpointError) as info:
        ckpt.load_checkpoint(folder, wider)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"checkpoint {folder} does not match the model of this config (size mismatch for ")
    assert message.endswith(f"; resume with the run's own config (--config {folder / ckpt.CONFIG_NAME})")


def test_state_file_loads_with_weights_only(tmp_path):
    model, opt = _trained()
    folder = ckpt.save_checkpoint(tmp_path, "last", model, _state(opt, 1))
    state = torch.load(folder / ckpt.STATE_NAME, weights_only=True)  # no arbitrary unpickling
    assert isinstance(state["rng"][0]["numpy"]["keys"], torch.Tensor)


@pytest.mark.parametrize("target", ["model.safetensors", ckpt.STATE_NAME])
def test_corrupted_file_is_a_clear_error(tmp_path, target):
    model, opt = _trained()
    folder = ckpt.save_checkpoint(tmp_path, "last", model, _state(opt, 3))
    path = folder / target
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=f"{target} is corrupted"):
        ckpt.load_checkpoint(folder, _trained()[0])


def test_truncated_file_is_a_clear_error(tmp_path):
    model, opt = _trained()
    folder = ckpt.save_checkpoint(tmp_path, "last", model, _state(opt, 3))
    path = folder / ckpt.STATE_NAME
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError, match=f"{ckpt.STATE_NAME} is truncated"):
        ckpt.load_checkpoint(folder, model)
    # without the manifest check, the loader itself still refuses the truncated file
    with pytest.raises(CheckpointError, match="cannot read"):
        ckpt.load_trainer_state(folder, verify=False)
    (folder / ckpt.MANIFEST_NAME).unlink()
    with pytest.raises(CheckpointError, match="incomplete"):
        ckpt.load_checkpoint(folder, model)


def test_failed_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    model, opt = _trained()
    ckpt.save_checkpoint(tmp_path, "last", model, _state(opt, 1))

    def failing_save(obj, fh, *args, **kwargs):
        fh.write(b"PK\x03\x04 half a file")
        raise OSError("disk full")

    monkeypatch.setattr(ckpt.torch, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        ckpt.save_checkpoint(tmp_path, "last", model, _state(opt, 2))
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last"]  # no .tmp left behind
    assert ckpt.load_checkpoint(tmp_path / "last", model)["step"] == 1


def test_interrupted_swap_falls_back_to_the_complete_copy(tmp_path):
    model, opt = _trained()
    run = tmp_path / "run"
    ckpt.save_checkpoint(run / ckpt.CHECKPOINTS_DIR, "last", model, _state(opt, 4))
    # a crash between "last -> last.prev" and "last.tmp -> last"
    (run / ckpt.CHECKPOINTS_DIR / "last").rename(run / ckpt.CHECKPOINTS_DIR / "last.prev")
    found = ckpt.find_checkpoint(run)
    assert found.name == "last.prev" and ckpt.load_trainer_state(found)["step"] == 4
    with pytest.raises(CheckpointError, match="no checkpoint to resume from"):
        ckpt.find_checkpoint(tmp_path / "empty")


def test_best_copy(tmp_path):
    model, opt = _trained()
    ckpt.save_checkpoint(tmp_path, ckpt.LAST, model, _state(opt, 5))
    ckpt.copy_checkpoint(tmp_path, ckpt.LAST, ckpt.BEST)
    ckpt.save_checkpoint(tmp_path, ckpt.LAST, model, _state(opt, 6))
    assert ckpt.load_trainer_state(tmp_path / ckpt.BEST)["step"] == 5
    assert ckpt.load_trainer_state(tmp_path / ckpt.LAST)["step"] == 6
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best", "last"]


def test_atomic_open_never_leaves_a_half_file(tmp_path):
    target = tmp_path / "metrics.json"
    with pytest.raises(RuntimeError):
        with atomic_open(target, "w", encoding="utf-8") as fh:
            fh.write("half")
            raise RuntimeError("killed mid-write")
    assert not target.exists() and os.listdir(tmp_path) == []
    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError):
        with atomic_open(target, "w", encoding="utf-8") as fh:
            fh.write("new but incomplete")
            raise RuntimeError("killed mid-write")
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["metrics.json"]
