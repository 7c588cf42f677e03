"""Weights in and out: weight files (:mod:`~customgpt.checkpoints.files`), our layout and the
customgpt checkpoint folder (:mod:`~customgpt.checkpoints.state`), the Hugging Face mapping and
export (:mod:`~customgpt.checkpoints.huggingface`), model specs and loading
(:mod:`~customgpt.checkpoints.resolve`). Untrusted files are never unpickled.
"""

from customgpt.checkpoints.files import load_weights, save_weights
from customgpt.checkpoints.huggingface import customgpt_to_hf_state, export_hf, hf_to_customgpt_state
from customgpt.checkpoints.resolve import (
    ModelInfo,
    ModelSource,
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
)

__all__ = [
    "ModelInfo",
    "ModelSource",
    "build_model",
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
]
