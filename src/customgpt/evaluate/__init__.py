"""Evaluating instruction-tuned models: greedy responses, perplexity, ROUGE-L and exact match,
an LLM judge; ``customgpt eval {responses,perplexity,rouge,judge}`` runs each."""
