"""``customgpt merge``: fold a LoRA adapter into a customgpt or Hugging Face folder; a base
with other weights is refused in one line and nothing is written."""

from __future__ import annotations

import torch
from lora_helpers import ALL_TARGETS, randomise_b, tiny_gpt, tokens  # noqa: E402

from customgpt import checkpoints
from customgpt.cli import main as cli_main
from customgpt.lora import LoRAConfig, inject_lora, lora_layers, save_adapter


def test_merge_cli_end_to_end(tmp_path, capsys):
    from transformers import GPT2LMHeadModel

    checkpoints.save_model(tiny_gpt(), tmp_path / "base")
    model = checkpoints.load_model(tmp_path / "base")
    inject_lora(model, LoRAConfig(r=4, alpha=8, targets=ALL_TARGETS))
    randomise_b(model)
    save_adapter(model, tmp_path / "ad", base_model_info=str(tmp_path / "base"))
    idx = tokens()
    with torch.no_grad():
        expected = model(idx)

    assert cli_main(["merge", "--adapter", str(tmp_path / "ad"), "--out", str(tmp_path / "merged")]) == 0
    assert "merged LoRA (r=4, alpha=8" in capsys.readouterr().out
    merged = checkpoints.load_model(tmp_path / "merged")
    assert not lora_layers(merged)
    with torch.no_grad():
        assert (merged(idx) - expected).abs().max() <= 1e-5

    rc = cli_main(
        ["merge", "--base", str(tmp_path / "base"), "--adapter", str(tmp_path / "ad"), "--out", str(tmp_path / "hf"), "--hf"]
    )
    assert rc == 0
    hf = GPT2LMHeadModel.from_pretrained(tmp_path / "hf").eval()
    with torch.no_grad():
        assert (hf(idx).logits - expected).abs().max() <= 1e-5

    checkpoints.save_model(tiny_gpt(seed=9), tmp_path / "other")
    capsys.readouterr()  # drop what transformers printed while loading
    rc = cli_main(["merge", "--base", str(tmp_path / "other"), "--adapter", str(tmp_path / "ad"), "--out", str(tmp_path / "x")])
    assert rc == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "checksum mismatch" in err and err.count("\n") == 1
    assert not (tmp_path / "x").exists()
