"""Weights in and out, by concern:

* :mod:`~customgpt.checkpoints.files`: weight files (safetensors, ``.bin`` read with
  ``weights_only``, shards, headers);
* :mod:`~customgpt.checkpoints.state`: our layout, models built from it, and the customgpt
  checkpoint folder (:func:`save_model`);
* :mod:`~customgpt.checkpoints.huggingface`: the Hugging Face GPT-2 mapping and
  :func:`export_hf` with its model card;
* :mod:`~customgpt.checkpoints.resolve`: model specs (presets, folders, files, hub ids),
  :func:`load_model` and :func:`describe_model_spec`.

The names below are importable from ``customgpt.checkpoints``; file names and lower-level
checks live in their submodules. Untrusted files are never unpickled: safetensors, or
``torch.load(weights_only=True)``.
"""

from customgpt.checkpoints.files import CONFIG_NAME, load_weights, save_weights
from customgpt.checkpoints.huggingface import customgpt_to_hf_state, export_hf, hf_to_customgpt_state
from customgpt.checkpoints.resolve import (
    ModelInfo,
    ModelSource,
    check_vocab_covers,
    describe_model_spec,
    load_model,
    load_state,
    provenance_of,
    resolve_model_spec,
)
from customgpt.checkpoints.state import (
    build_model,
    embedding_parameters,
    random_model,
    read_metadata,
    save_model,
    state_for_saving,
    unwrap,
)

__all__ = [
    "CONFIG_NAME",
    "ModelInfo",
    "ModelSource",
    "build_model",
    "check_vocab_covers",
    "customgpt_to_hf_state",
    "describe_model_spec",
    "embedding_parameters",
    "export_hf",
    "hf_to_customgpt_state",
    "load_model",
    "load_state",
    "load_weights",
    "provenance_of",
    "random_model",
    "read_metadata",
    "resolve_model_spec",
    "save_model",
    "save_weights",
    "state_for_saving",
    "unwrap",
]
