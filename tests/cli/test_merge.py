"""``customgpt merge``: fold a LoRA adapter into a customgpt or Hugging Face folder; a base
with other weights is refused in one line and nothing is written."""

from __future__ import annotations

import torch
from torch import nn

from customgpt import checkpoints
from customgpt.cli import main as cli_main
from customgpt.config import GPTConfig
from customgpt.lora import LoRAConfig, inject_lora, lora_layers, save_adapter
from customgpt.model import GPT

ALL_TARGETS = ("c_attn", "attn.c_proj", "c_fc", "mlp.c_proj")
TINY = GPTConfig(vocab_size=101, context_length=32, n_embd=32, n_layer=2, n_head=4)


def tiny_gpt(seed: int = 0, config: GPTConfig = TINY) -> GPT:
    return checkpoints.random_model(config, seed=seed)


def tokens(seed: int = 1, batch: int = 2, length: int = 12) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, TINY.vocab_size, (batch, length), generator=g)


def randomise_b(model: nn.Module, seed: int = 3, std: float = 0.2) -> None:
    """Non-zero B, as after some training, reproducibly."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in lora_layers(model).values():
            layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=g) * std)


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
