"""``customgpt info`` (customgpt.cli.info)."""

from __future__ import annotations

import json

from helpers import tiny_hf_model

from customgpt.cli import main


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_info_preset(capsys):
    rc, out, _ = _run(capsys, "info", "cpu-tiny")
    assert rc == 0
    assert "preset cpu-tiny" in out and "n_layer" in out
    from customgpt.config import GPTConfig

    total = GPTConfig.from_preset("cpu-tiny").num_parameters()
    assert f"{total:,}" in out
    rc, out, _ = _run(capsys, "info", "gpt2-124M", "--json")
    data = json.loads(out)
    assert data["parameters"] == {"total": 124_439_808, "embedding": 39_383_808, "non_embedding": 85_056_000}
    assert data["config"]["n_head"] == 12 and data["kind"] == "preset"


def test_info_hf_folder_and_checkpoint(tmp_path, capsys):
    hf = tiny_hf_model(seed=1)
    hf.save_pretrained(tmp_path / "hf")
    rc, out, _ = _run(capsys, "info", str(tmp_path / "hf"))
    assert rc == 0 and "Hugging Face GPT-2 folder" in out and f"{hf.num_parameters():,}" in out
    rc, out, _ = _run(capsys, "info", str(tmp_path / "hf"), "--json")
    data = json.loads(out)
    assert data["kind"] == "hf" and data["dtype"] == "float32"
    assert data["parameters"]["non_embedding"] == hf.num_parameters(exclude_embeddings=True)
