"""Evaluating instruction-tuned models: responses, perplexity, ROUGE-L and exact match, an LLM judge.

* :mod:`.responses`: greedy responses for instruction records, written as the reference
  recipe's JSON (each record plus ``model_response``);
* :mod:`.perplexity`: the loss and perplexity of a model on response tokens (or whole texts);
* :mod:`.overlap`: ROUGE-L F1 (``rouge-score``) and exact match of responses against references;
* :mod:`.judge`: scores 0-100 from any OpenAI-compatible chat endpoint, with the reference prompt.

``customgpt eval {responses,perplexity,rouge,judge}`` runs each from the command line.
"""
