"""Greedy responses to instruction records, and the responses file.

The file is the reference recipe's (LLMs-from-scratch, chapter 7): a JSON list of the
records as read, each with ``model_response`` added, so its judge script reads it
unchanged. Each record also gets ``generation``: how the response was made (the model,
prompt style, decoding settings). A response is the text generated after the prompt
(which ends with the style's response marker), stopped at the end-of-text token (or a
stop string of the style), with a repeated response marker at its start removed and
surrounding whitespace stripped, as the reference does.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from customgpt.data.instruct import InstructionRecord, read_records
from customgpt.errors import CustomGPTError
from customgpt.io import atomic_write_text
from customgpt.prompts import PromptStyle, TemplateStyle


def clean_response(style: PromptStyle, text: str) -> str:
    """The response proper: whitespace stripped, and a response marker the model wrote
    again at the start (``### Response:``) removed."""
    text = text.strip()
    marker = style.response_prefix.strip() if isinstance(style, TemplateStyle) else ""
    while marker and text.startswith(marker):
        text = text[len(marker):].strip()
    return text


def generate_responses(model, tokenizer, style: PromptStyle, records: Sequence[InstructionRecord], *,
                       max_new_tokens: int = 256, batch_size: int = 8, use_stop_strings: bool = True,
                       progress: bool = True) -> tuple[list[str], dict[str, Any]]:
    """Greedy responses to ``records``, and the settings that made them.

    Prompts are the style's instruction prompts, encoded as plain text; generation is greedy
    (argmax), batched (a greedy row gives what it gives alone), at most ``max_new_tokens``
    tokens, stopped at end-of-text and, with ``use_stop_strings``, at the style's stop strings.

    Returns:
        ``(responses, settings)``; ``settings`` is what the responses file records.
    """
    from tqdm.auto import tqdm

    from customgpt.generate import SamplingParams, generate_batch

    stops = tuple(style.stop_strings) if use_stop_strings else ()
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0, stop=stops, stop_at_eot=True)
    prompts = [tokenizer.encode(style.format_instruction(r.instruction, r.input), allowed_special="none")
               for r in records]
    responses: list[str] = []
    with tqdm(total=len(prompts), desc="responses", unit="record", dynamic_ncols=True, disable=not progress) as bar:
        for start in range(0, len(prompts), batch_size):
            chunk = prompts[start:start + batch_size]  # generation runs the model in eval mode
            results = generate_batch(model, chunk, params, tokenizer=tokenizer, eot_id=tokenizer.eot_id)
            responses += [clean_response(style, r.text) for r in results]
            bar.update(len(chunk))
    settings = {"decoding": "greedy", "max_new_tokens": max_new_tokens, "stop_at_eot": True,
                "stop_strings": list(stops), "prompt_style": style.name}
    return responses, settings


def with_responses(records: Sequence[InstructionRecord], responses: Sequence[str],
                   generation: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """The records as read, each with ``model_response`` (and ``generation``) added."""
    out = []
    for record, response in zip(records, responses, strict=True):
        row = dict(record.raw) if record.raw else {"instruction": record.instruction, "input": record.input,
                                                   "output": record.output}
        row["model_response"] = response
        if generation is not None:
            row["generation"] = dict(generation)
        out.append(row)
    return out


def write_json(path: str | Path, data: Any, *, force: bool = False, inputs: Sequence[str | Path] = ()) -> Path:
    """Write ``data`` as indented JSON, atomically.

    Raises:
        CustomGPTError: ``path`` exists and ``force`` is not set, or ``path`` is one of ``inputs``.
    """
    path = Path(path)
    for source in inputs:
        if Path(source).exists() and path.exists() and path.resolve() == Path(source).resolve():
            raise CustomGPTError(f"{path} is an input of this command; write the results elsewhere")
    if path.exists() and not force:
        raise CustomGPTError(f"{path} exists; pass --force to replace it, or choose another output")
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(data, indent=4, ensure_ascii=False) + "\n")
    return path


def read_responses(path: str | Path, keys: Sequence[str] = ("output", "model_response")) -> list[dict[str, Any]]:
    """Read a responses file (a JSON list, or JSON Lines, of objects) whose ``keys`` are strings.

    Raises:
        DataError: unreadable file or JSON, a record that is not an object, lacks a key or
            holds a non-string there (named by index with the file name), no records.
    """
    return read_records(path, keys, (), lambda _, value: value, empty_ok=True)
