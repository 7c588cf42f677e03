"""Evaluating instruction-tuned models: responses, perplexity, ROUGE-L and exact match, an LLM judge.

* :mod:`.responses`: greedy responses for instruction records, written as the reference
  recipe's JSON (each record plus ``model_response``);
* :mod:`.perplexity`: the loss and perplexity of a model on response tokens (or whole texts);
* :mod:`.overlap`: ROUGE-L F1 (``rouge-score``) and exact match of responses against references;
* :mod:`.judge`: scores 0-100 from any OpenAI-compatible chat endpoint, with the reference prompt.

``customgpt eval {responses,perplexity,rouge,judge}`` runs each from the command line.
"""

from __future__ import annotations

import importlib
from typing import Any

#: public name -> submodule; imported on first use, so the judge and ROUGE need no torch.
_EXPORTS = {
    "JUDGE_PROMPT": "judge", "JudgeClient": "judge", "JudgeError": "judge", "judge_prompt": "judge",
    "judge_responses": "judge", "parse_score": "judge",
    "exact_match": "overlap", "rouge_l": "overlap", "score_responses": "overlap",
    "Perplexity": "perplexity", "response_perplexity": "perplexity", "text_perplexity": "perplexity",
    "clean_response": "responses", "generate_responses": "responses", "read_responses": "responses",
    "with_responses": "responses",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'customgpt.evaluate' has no attribute {name!r}")
    return getattr(importlib.import_module(f"customgpt.evaluate.{_EXPORTS[name]}"), name)
