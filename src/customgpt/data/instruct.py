"""Instruction data: records, splits, tokenized examples and the collate function.

A record has an instruction, an optional input and an output (the Alpaca layout of
``instruction-data.json``); files are a JSON list or JSON Lines, every record checked before
training (:func:`read_records`). The splits (:func:`split_records`) and the collate rule
(:func:`collate_instructions`) are the reference recipe's (LLMs-from-scratch, chapter 7);
docs/instruct.md, "Data", describes them.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor
from torch.utils.data import Dataset

from customgpt.constants import EOT_ID, IGNORE_INDEX
from customgpt.data import R, SourceConfig, Splits, raise_problems
from customgpt.data.registry import DATASETS, fetch
from customgpt.errors import DataError
from customgpt.io import decode_utf8_strict
from customgpt.prompts import PromptStyle
from customgpt.sections import FieldError

#: The registry's instruction dataset, the default source.
DEFAULT_DATASET = "instruction-data"

#: The record keys of the instruction, the input and the output.
FIELDS = ("instruction", "input", "output")


@dataclass(frozen=True)
class InstructionRecord:
    """One validated record.

    Attributes:
        instruction, input, output: the three texts (``input`` is ``""`` when absent).
        source: the file it came from.
        index: its 0-based position in the file (the list index, or the line's record number).
        raw: the record as read (every key, in file order): responses are written from it.
    """

    instruction: str
    input: str
    output: str
    source: str = ""
    index: int = 0
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)


# --------------------------------------------------------------------------- reading


def parse_records(text: str, source: str | Path) -> list[tuple[int, Any, str]]:
    """The raw records of a JSON list or JSON Lines text as ``(index, value, where)``.

    A text whose first non-blank character is ``[`` is read as one JSON list; anything else
    as JSON Lines (blank lines skipped). ``where`` says ``record N`` (plus ``line L`` for JSON Lines).

    Raises:
        DataError: invalid JSON (with line and column), a top level that is not a list.
    """
    stripped = text.lstrip()
    if not stripped:
        raise DataError(f"{source}: the file is empty")
    if stripped.startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(f"{source}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from None
        return [(i, value, f"record {i}") for i, value in enumerate(data)]
    out = []
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{source}: line {number}: invalid JSON at column {exc.colno}: {exc.msg} "
                            "(expected a JSON list, or one JSON object per line)") from None
        out.append((len(out), value, f"record {len(out)} (line {number})"))
    return out


def read_records(path: str | Path, keys: Sequence[str], optional: Sequence[str],
                 build: Callable[[int, dict[str, Any]], R], *, empty_ok: bool = False) -> list[R]:
    """Read a JSON list or JSON Lines file (strict UTF-8, a leading BOM dropped; see
    :func:`parse_records`) and validate its records: each must be an object whose ``keys``
    are strings, all present and non-empty (any string with ``empty_ok``) except the
    ``optional`` ones (absent or any string); ``build(index, value)`` makes the record of
    each good one.

    Raises:
        DataError: unreadable file, invalid UTF-8 (byte offset), invalid JSON, no records,
            or naming the file and every bad record by index
            (:func:`~customgpt.data.raise_problems`).
    """
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from None
    raw = parse_records(decode_utf8_strict(data, str(path)).removeprefix("\ufeff"), path)
    required = [k for k in keys if k not in optional]
    problems: list[str] = []
    records: list[R] = []
    for index, value, where in raw:
        if not isinstance(value, dict):
            problems.append(f"{where}: expected an object, got {type(value).__name__}")
            continue
        missing = [k for k in required if k not in value]
        if missing:
            problems.append(f"{where}: missing {', '.join(map(repr, missing))} (keys: {', '.join(map(repr, value))})")
            continue
        bad = [k for k in keys if k in value and not isinstance(value[k], str)]
        if bad:
            problems.append(f"{where}: " + ", ".join(f"{k!r} must be a string, got {type(value[k]).__name__}"
                                                     for k in bad))
            continue
        empty = [k for k in required if not value[k].strip()]
        if empty and not empty_ok:
            problems.append(f"{where}: empty {' and '.join(map(repr, empty))}")
            continue
        records.append(build(index, value))
    raise_problems(path, "malformed record(s)", problems)
    if not records:
        raise DataError(f"{path}: no records")
    return records


def read_instruction_file(path: str | Path, fields: Sequence[str] = FIELDS) -> list[InstructionRecord]:
    """Read and validate a JSON list or JSON Lines file of instruction records
    (:func:`read_records`; ``fields``: the record keys of instruction, input and output):
    instruction and output non-empty strings, input a string when present.

    Raises:
        DataError: unreadable file, invalid UTF-8 (byte offset), invalid JSON, malformed records.
    """
    instruction, input_, output = fields
    return read_records(path, fields, (input_,),
                        lambda index, value: InstructionRecord(value[instruction], value.get(input_, ""),
                                                               value[output], str(path), index, value))


# --------------------------------------------------------------------------- splits


def split_records(records: Sequence[R], *, method: Literal["order", "random"] = "order",
                  train_fraction: float = 0.85, test_fraction: float = 0.10, seed: int = 123) -> Splits[R]:
    """Split as the reference recipe does: ``int(train_fraction n)`` train, the next
    ``int(test_fraction n)`` test, the rest validation; in file order (``order``) or after a
    shuffle seeded with ``seed`` (``random``). 1,100 records give 935 / 110 / 55."""
    items = list(records)
    if method == "random":
        random.Random(seed).shuffle(items)
    n_train, n_test = int(len(items) * train_fraction), int(len(items) * test_fraction)
    return Splits(items[:n_train], items[n_train + n_test:], items[n_train:n_train + n_test])


@dataclass
class RecordsDataConfig(SourceConfig):
    """Where records come from and how they are split: the keys that instruction and
    preference data share (each task's section adds its own record keys and lengths)."""

    dataset: str | None = DEFAULT_DATASET
    instruction_field: str = "instruction"
    """The record key of the instruction."""
    input_field: str = "input"
    """The record key of the optional input."""
    split: Literal["order", "random"] = "order"
    """order: the reference split in file order (train, then test, then validation); random: after a seeded shuffle."""
    train_fraction: float = 0.85
    """Share of the records that train."""
    test_fraction: float = 0.10
    """Share of the records that test (the rest validate)."""
    split_seed: int = 123
    """Seed of the random split."""

    def validate(self) -> None:
        """One data source (explicit splits with a validation file); train / test fractions
        in [0, 1] that leave records to validate."""
        super().validate()
        if self.train_file and not self.val_file:
            raise FieldError("val_file", "explicit splits need a validation file beside data.train_file")
        for key in ("train_fraction", "test_fraction"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise FieldError(key, f"must be in [0, 1], got {getattr(self, key)}")
        if self.train_fraction <= 0 or self.train_fraction + self.test_fraction >= 1.0:
            raise FieldError("train_fraction", f"train ({self.train_fraction}) and test ({self.test_fraction}) "
                             "fractions must leave records for validation")


@dataclass
class InstructDataConfig(RecordsDataConfig):
    """Where the instruction records come from and how they are split and tokenized."""

    output_field: str = "output"
    """The record key of the reference output."""
    max_length: int | None = None
    """Tokens per example (inputs); longer ones are truncated and counted. None: the model's context length."""
    mask_instructions: bool = False
    """Loss on the response tokens only (the prompt's targets are ignored)."""

    def validate(self) -> None:
        super().validate()
        if self.max_length is not None and self.max_length < 1:
            raise FieldError("max_length", f"must be >= 1 or none, got {self.max_length}")
        names = (self.instruction_field, self.input_field, self.output_field)
        if len(set(names)) != 3 or not all(names):
            raise FieldError("instruction_field", f"instruction_field, input_field and output_field must be three "
                             f"different keys, got {list(names)}")


def resolve_source(source: str, data_dir: str | None = None, cache_dir: str | None = None, *,
                   data_dir_option: str = "--data-dir") -> Path:
    """A file path, or a registered dataset name fetched through the registry
    (``data_dir_option``: how the calling command sets the mirror folder, for the offline advice)."""
    path = Path(source).expanduser()
    if path.is_file():
        return path
    if source in DATASETS:
        return fetch(source, data_dir, cache_dir, data_dir_option=data_dir_option)
    raise DataError(f"{source}: no such file, and not a registered dataset ({', '.join(DATASETS)})")


def split_sources(cfg: RecordsDataConfig, read: Callable[[str | Path], list[R]], limit: int | None = None) -> Splits[R]:
    """Read the files of ``cfg`` (explicit splits, or one file or registered
    dataset to split by ``cfg.split``) with ``read``; ``limit``: only the first records of
    the one file. Every file is read and checked before anything else happens.

    Raises:
        DataError: a bad file or record, an empty training or validation split.
    """
    if cfg.train_file:
        splits = Splits(read(cfg.train_file), read(cfg.val_file), read(cfg.test_file) if cfg.test_file else [])
    else:
        path = resolve_source(cfg.path or cfg.dataset, cfg.data_dir, cfg.cache_dir, data_dir_option="--data.data_dir")
        records = read(path)[:limit]
        splits = split_records(records, method=cfg.split, train_fraction=cfg.train_fraction,
                               test_fraction=cfg.test_fraction, seed=cfg.split_seed)
    if not splits.train:
        raise DataError("the training split is empty: use more records or a larger data.train_fraction")
    if not splits.val:
        raise DataError("the validation split is empty: use more records or smaller data.train_fraction / test_fraction")
    return splits


def prepare_splits(cfg: InstructDataConfig) -> Splits[InstructionRecord]:
    """Read, validate and split the records of ``cfg`` (:func:`split_sources`).

    Raises:
        DataError: a bad file or record, an empty training or validation split.
    """
    fields = (cfg.instruction_field, cfg.input_field, cfg.output_field)
    return split_sources(cfg, lambda path: read_instruction_file(path, fields))


# --------------------------------------------------------------------------- tokens


def encode_example(tokenizer, style: PromptStyle, record: InstructionRecord) -> tuple[list[int], int]:
    """``(prompt ids + response ids, number of prompt ids)`` of a record, as plain text."""
    prompt, response = style.format_example(record.instruction, record.input, record.output)
    prompt_ids = tokenizer.encode(prompt, allowed_special="none")
    return prompt_ids + tokenizer.encode(response, allowed_special="none"), len(prompt_ids)


class InstructionDataset(Dataset):
    """Tokenized examples of a list of records: item ``i`` is ``(ids, prompt_length)``.

    Attributes:
        n_truncated: examples longer than ``max_length`` tokens (their end, the end-of-text
            target included, is cut off by the collate function).
    """

    def __init__(self, records: Sequence[InstructionRecord], tokenizer, style: PromptStyle,
                 max_length: int | None = None) -> None:
        encoded = [encode_example(tokenizer, style, r) for r in records]
        self.ids = [ids for ids, _ in encoded]
        self.prompt_lengths = [p for _, p in encoded]
        self.max_length = max_length
        self.n_truncated = sum(len(ids) > max_length for ids in self.ids) if max_length else 0

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> tuple[list[int], int]:
        return self.ids[i], self.prompt_lengths[i]


def collate_instructions(
    batch: Sequence[tuple[Sequence[int], int]],
    *,
    eot_id: int = EOT_ID,
    max_length: int | None = None,
    mask_instructions: bool = False,
) -> tuple[Tensor, Tensor]:
    """Inputs and targets, both (B, T), of a batch of ``(ids, prompt_length)`` examples.

    Each example becomes ``ids + [eot_id]``, right-padded with ``eot_id`` to the longest
    (``T = max(len(ids))``, at most ``max_length``); inputs are its first ``T`` tokens,
    targets the tokens one to the right. The target of the first end-of-text (right after
    the last real token) is kept; every padding target after it is ``IGNORE_INDEX``. With
    ``mask_instructions`` the targets that predict prompt tokens are ``IGNORE_INDEX`` too
    (the first response token's stays). This is the reference's ``custom_collate_fn``
    (LLMs-from-scratch, chapter 7, with exercise 7.2's masking) and gives the same tensors,
    the pad id being the end-of-text id; the rule here is by position, so it holds even for
    ids that contain the end-of-text id.
    """
    longest = max(len(ids) for ids, _ in batch)
    inputs = torch.full((len(batch), longest), eot_id, dtype=torch.long)
    targets = torch.full((len(batch), longest), IGNORE_INDEX, dtype=torch.long)
    for row, (ids, prompt_length) in enumerate(batch):
        n = len(ids)
        if n == 0:
            raise ValueError(f"example {row} of the batch has no tokens")
        seq = torch.as_tensor(list(ids), dtype=torch.long)
        inputs[row, :n] = seq
        targets[row, : n - 1] = seq[1:]
        targets[row, n - 1] = eot_id
        if mask_instructions:
            targets[row, : max(prompt_length - 1, 0)] = IGNORE_INDEX
    if max_length is not None:
        inputs, targets = inputs[:, :max_length], targets[:, :max_length]
    return inputs, targets
