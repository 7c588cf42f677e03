"""The Hugging Face layout and export (customgpt.checkpoints.huggingface)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import tiny_config, tiny_hf_model, tiny_model

import customgpt.checkpoints as ckpt
from customgpt.checkpoints import (
    export_hf,
    load_model,
)
from customgpt.config import GPTConfig
from customgpt.errors import CheckpointError


def _files(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


# --------------------------------------------------------------------------- strict validation


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
