"""Weight files: safetensors and .bin reading, corrupt and malicious files (customgpt.checkpoints.files)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import tiny_model

from customgpt.checkpoints import (
    describe_model_spec,
    load_model,
    load_weights,
    save_model,
)
from customgpt.errors import CheckpointError


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
