"""Weights in and out, by concern:

* :mod:`~customgpt.checkpoints.files`: weight files (safetensors, ``.bin`` read with
  ``weights_only``, shards, headers);
* :mod:`~customgpt.checkpoints.state`: our layout, models built from it, and the customgpt
  checkpoint folder (:func:`save_model`);
* :mod:`~customgpt.checkpoints.huggingface`: the Hugging Face GPT-2 mapping and
  :func:`export_hf` with its model card;
* :mod:`~customgpt.checkpoints.resolve`: model specs (presets, folders, files, hub ids),
  :func:`load_model` and :func:`describe_model_spec`.

Every public name is importable from ``customgpt.checkpoints``. Untrusted files are never
unpickled: safetensors, or ``torch.load(weights_only=True)``.
"""

from customgpt.checkpoints.files import (
    CONFIG_NAME,
    HF_BIN_INDEX,
    HF_BIN_NAME,
    HF_SAFETENSORS_INDEX,
    METADATA_NAME,
    WEIGHT_SUFFIXES,
    WEIGHTS_NAME,
    load_shards,
    load_weights,
    read_safetensors_header,
    save_weights,
    write_safetensors,
)
from customgpt.checkpoints.huggingface import (
    customgpt_to_hf_state,
    detect_layout,
    export_hf,
    hf_to_customgpt_state,
)
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
    check_customgpt_state,
    embedding_parameters,
    expected_shapes,
    random_model,
    read_metadata,
    save_model,
    state_for_saving,
    unwrap,
)

__all__ = [
    "CONFIG_NAME",
    "HF_BIN_INDEX",
    "HF_BIN_NAME",
    "HF_SAFETENSORS_INDEX",
    "METADATA_NAME",
    "WEIGHTS_NAME",
    "WEIGHT_SUFFIXES",
    "ModelInfo",
    "ModelSource",
    "build_model",
    "check_customgpt_state",
    "check_vocab_covers",
    "customgpt_to_hf_state",
    "describe_model_spec",
    "detect_layout",
    "embedding_parameters",
    "expected_shapes",
    "export_hf",
    "hf_to_customgpt_state",
    "load_model",
    "load_shards",
    "load_state",
    "load_weights",
    "provenance_of",
    "random_model",
    "read_metadata",
    "read_safetensors_header",
    "resolve_model_spec",
    "save_model",
    "save_weights",
    "state_for_saving",
    "unwrap",
    "write_safetensors",
]
