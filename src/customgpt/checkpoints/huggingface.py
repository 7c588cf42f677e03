"""Layouts: a checkpoint's tensors (ours or Hugging Face GPT-2's) to our state dict, strictly
validated; ours to Hugging Face's; and :func:`export_hf`, a folder with its model card."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from customgpt import __version__
from customgpt.checkpoints.files import CONFIG_NAME, WEIGHTS_NAME, write_safetensors
from customgpt.checkpoints.state import embedding_parameters, state_for_saving, unwrap
from customgpt.config import GPTConfig
from customgpt.constants import GPT2_VOCAB_SIZE
from customgpt.errors import CheckpointError
from customgpt.io import staged_files
from customgpt.model import GPT
from customgpt.tokenizer import save_hf_tokenizer_files

# Hugging Face's GPT-2 uses Conv1D, which stores its weight as (in, out); nn.Linear stores
# (out, in). These weights are transposed on the way in and out.
_CONV1D_SUFFIXES = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
# Non-parameter buffers that old GPT-2 checkpoints carry (the causal mask and its fill value).
_HF_BUFFER = re.compile(r"(^|\.)h\.\d+\.attn\.(bias|masked_bias)$")


def _listing(items: list[str], limit: int = 6) -> str:
    more = f" (and {len(items) - limit} more)" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def hf_to_customgpt_state(
    tensors: Mapping[str, Tensor], config: GPTConfig, *, source: str = "checkpoint", hf: bool = True
) -> dict[str, Tensor]:
    """A checkpoint's tensors → our state dict, strictly validated against ``config``.

    With ``hf`` (Hugging Face / OpenAI GPT-2) keys may lack the ``transformer.`` prefix, the
    Conv1D weights are transposed and the attention-mask buffers dropped; with ``hf=False``
    the tensors are in our layout (:func:`~customgpt.checkpoints.save_model`) already. A
    ``lm_head.weight`` that the config ties must equal the token embedding (meta tensors, the
    shapes of a safetensors header, are checked by shape only) and is left out.

    Raises:
        CheckpointError: missing, unexpected or wrongly shaped tensors, named as in the file
            with the file's and the expected shape; a tied head that differs.
    """
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in GPT(config).state_dict().items()}
    if config.tie_embeddings:
        del expected["lm_head.weight"]
    out: dict[str, Tensor] = {}
    origin: dict[str, str] = {}  # our name -> the file's name, for messages
    unexpected: list[str] = []
    wrong: list[str] = []
    head: Tensor | None = None
    for key, tensor in tensors.items():
        ours = key
        if hf:
            name = key.removeprefix("transformer.")
            if _HF_BUFFER.search(name):
                continue
            ours = name if name == "lm_head.weight" else "transformer." + name
        if ours == "lm_head.weight" and config.tie_embeddings:
            head = tensor
            continue
        if ours not in expected:
            unexpected.append(key)
            continue
        if ours in origin:
            raise CheckpointError(f"{source} holds {ours!r} twice (as {origin[ours]!r} and {key!r})")
        origin[ours] = key
        conv1d = hf and ours.endswith(_CONV1D_SUFFIXES)
        want = expected[ours][::-1] if conv1d else expected[ours]
        if tuple(tensor.shape) != want:
            wrong.append(f"{key} is {tuple(tensor.shape)}, expected {want}")
            continue
        out[ours] = tensor.t().contiguous() if conv1d else tensor
    # Name missing tensors the way this file names the others (with or without the prefix).
    prefix = "transformer." if not hf or any(k.startswith("transformer.") for k in tensors) else ""
    missing = [
        k if k == "lm_head.weight" else prefix + k.removeprefix("transformer.") for k in expected if k not in origin
    ]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing tensor(s): {_listing(missing)}")
        if unexpected:
            parts.append(f"unexpected tensor(s): {_listing(unexpected)}")
        if wrong:
            parts.append(f"wrong shape(s): {_listing(wrong, 4)}")
        raise CheckpointError(f"{source} does not match the model config: " + "; ".join(parts))
    if head is not None:
        wte = out["transformer.wte.weight"]
        if head.shape != wte.shape or not (head.is_meta or torch.equal(head.to(wte.dtype), wte)):
            raise CheckpointError(f"{source}: lm_head.weight differs from transformer.wte.weight, but the config ties them")
    return out


def customgpt_to_hf_state(state: Mapping[str, Tensor], config: GPTConfig) -> dict[str, Tensor]:
    """Our state dict → Hugging Face ``GPT2LMHeadModel`` tensors (Conv1D weights transposed,
    tied ``lm_head.weight`` left out exactly as ``save_pretrained`` leaves it out)."""
    config.to_hf_dict()  # what Hugging Face's GPT-2 cannot hold (an untied head) is an error
    out = {}
    for key, tensor in state.items():
        if key == "lm_head.weight":
            continue
        out[key] = tensor.t().contiguous() if key.endswith(_CONV1D_SUFFIXES) else tensor.contiguous()
    return out


# =========================================================================== Hugging Face export


def _model_card(config: GPTConfig, name: str, dtype: str, provenance: Mapping[str, Any], tokenizer: bool) -> str:
    total, emb = config.num_parameters(), embedding_parameters(config)
    rows = {
        "vocab_size": config.vocab_size,
        "context_length (n_positions)": config.context_length,
        "n_embd": config.n_embd,
        "n_layer": config.n_layer,
        "n_head": config.n_head,
        "n_inner": config.n_inner,
        "layer_norm_epsilon": config.layer_norm_eps,
        "dtype": dtype,
    }
    table = "\n".join(f"| {k} | {v} |" for k, v in rows.items())
    prov = "\n".join(f"- **{k}**: {v}" for k, v in provenance.items() if k != "license") or "- not recorded"
    if tokenizer:
        tok_note = "The GPT-2 tokenizer files are included."
        hf_usage = f"""from transformers import AutoModelForCausalLM, AutoTokenizer

tokenizer = AutoTokenizer.from_pretrained("path/to/{name}")
model = AutoModelForCausalLM.from_pretrained("path/to/{name}")
inputs = tokenizer("Every effort moves you", return_tensors="pt")
print(tokenizer.decode(model.generate(**inputs, max_new_tokens=20)[0]))"""
    else:
        tok_note = f"No tokenizer files: the vocabulary ({config.vocab_size}) is smaller than GPT-2's ({GPT2_VOCAB_SIZE})."
        hf_usage = f"""import torch
from transformers import AutoModelForCausalLM

model = AutoModelForCausalLM.from_pretrained("path/to/{name}")
logits = model(torch.tensor([[1, 2, 3]])).logits  # token ids below {config.vocab_size}"""
    return f"""---
library_name: transformers
pipeline_tag: text-generation
license: {provenance.get("license", "mit")}
tags:
- gpt2
- text-generation
- customgpt
---

# {name}

A GPT-2 language model (`GPT2LMHeadModel`) exported by customgpt {__version__}. {tok_note}

## Configuration

| field | value |
|---|---|
{table}

Parameters: {total:,} ({emb:,} in the token and position embeddings, {total - emb:,} others;
the LM head is tied to the token embedding).

## Provenance

{prov}

## Usage

With customgpt:

```python
from customgpt.checkpoints import load_model

model = load_model("path/to/{name}")  # a local folder or the hub id of this repository
```

With transformers:

```python
{hf_usage}
```
"""


def export_hf(
    model: GPT,
    folder: str | Path,
    *,
    provenance: Mapping[str, Any] | None = None,
    include_tokenizer: bool | None = None,
) -> Path:
    """Write ``model`` as a Hugging Face GPT-2 folder that ``GPT2LMHeadModel.from_pretrained``
    loads with no missing or unexpected keys.

    Files: ``config.json`` (:meth:`GPTConfig.to_hf_dict` plus the dtype), ``model.safetensors``
    (Conv1D layout, full ``transformer.`` keys, the tied head left out as transformers does),
    ``generation_config.json``, the GPT-2 tokenizer files, and a model card ``README.md``
    recording ``provenance`` (source weights, training run; a ``license`` key sets the card's
    licence, default MIT as GPT-2's).

    Args:
        include_tokenizer: write the GPT-2 tokenizer files; None (default) writes them when
            the vocabulary covers GPT-2's 50,257 ids.
    """
    model = unwrap(model)
    config = model.config
    hf = config.to_hf_dict()  # raises ConfigError for an untied head, which GPT-2 cannot express
    folder = Path(folder)
    dtype = str(model.transformer.wte.weight.dtype).removeprefix("torch.")
    hf["torch_dtype"] = dtype  # transformers 4.x reads torch_dtype ...
    hf["dtype"] = dtype  # ... and 5.x reads dtype
    if include_tokenizer is None:
        include_tokenizer = config.vocab_size >= GPT2_VOCAB_SIZE
    token_id = hf["eos_token_id"]
    generation = {"_from_model_config": True, "bos_token_id": token_id, "eos_token_id": token_id}
    tensors = customgpt_to_hf_state(state_for_saving(model), config)
    with staged_files(folder) as stage:
        write_safetensors(tensors, stage.path(WEIGHTS_NAME), None)
        stage.write_json(CONFIG_NAME, hf)
        stage.write_json("generation_config.json", generation)
        stage.write_text("README.md", _model_card(config, folder.resolve().name, dtype, provenance or {}, include_tokenizer))
    if include_tokenizer:
        save_hf_tokenizer_files(folder, model_max_length=config.context_length)
    return folder
