"""Preference data: records with a prompt and a chosen and a rejected response, split and tokenized.

A record has an instruction, an optional input, and two responses, the preferred ``chosen``
and the dispreferred ``rejected`` (the layout of ``instruction-data-with-preference.json``),
read and checked as instruction records are (:func:`~customgpt.data.instruct.read_records`)
and split as they are (:func:`~customgpt.data.instruct.split_records`). Each response ends
with the end-of-text id (as TRL's ``DPOTrainer`` appends the EOS token), so preference
tuning also scores where it stops. :func:`collate_preference` stacks the chosen and then the
rejected sequences into one batch of ``2B`` rows with a **response mask** over the targets
(docs/preference.md describes the data).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence

from customgpt.constants import EOT_ID
from customgpt.data import MAX_REPORTED, Splits
from customgpt.data.instruct import RecordsDataConfig, read_records, split_sources
from customgpt.errors import DataError
from customgpt.prompts import PromptStyle
from customgpt.sections import FieldError

#: The registry's preference dataset, the default source.
DEFAULT_DATASET = "instruction-data-with-preference"


@dataclass(frozen=True)
class PreferenceRecord:
    """One validated record.

    Attributes:
        instruction, input: the prompt's texts (``input`` is ``""`` when absent).
        chosen, rejected: the preferred and the dispreferred response.
        source: the file it came from.
        index: its 0-based position in the file.
        raw: the record as read (every key, in file order): test responses are written from it.
    """

    instruction: str
    input: str
    chosen: str
    rejected: str
    source: str = ""
    index: int = 0
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def output(self) -> str:
        """The reference answer of the response files and their ROUGE-L: the chosen response."""
        return self.chosen


#: The record keys of the instruction, the input, the chosen and the rejected response.
FIELDS = ("instruction", "input", "chosen", "rejected")


def read_preference_file(path: str | Path, fields: Sequence[str] = FIELDS) -> list[PreferenceRecord]:
    """Read and validate a JSON list or JSON Lines file of preference records
    (:func:`~customgpt.data.instruct.read_records`; ``fields``: the record keys in
    :data:`FIELDS` order): instruction, chosen and rejected non-empty strings, input a string when present.

    Raises:
        DataError: unreadable file, invalid UTF-8 (byte offset), invalid JSON, malformed records.
    """
    instruction, input_, chosen, rejected = fields
    return read_records(path, (instruction, chosen, rejected, input_), (input_,),
                        lambda index, value: PreferenceRecord(value[instruction], value.get(input_, ""), value[chosen],
                                                              value[rejected], str(path), index, value))


@dataclass
class PreferenceDataConfig(RecordsDataConfig):
    """Where the preference records come from and how they are split and tokenized."""

    dataset: str | None = DEFAULT_DATASET
    chosen_field: str = "chosen"
    """The record key of the preferred response."""
    rejected_field: str = "rejected"
    """The record key of the dispreferred response."""
    limit: int | None = None
    """Use only the first N records of the file (before splitting): quick runs and tests."""
    max_length: int | None = None
    """Tokens per sequence (prompt + response); longer ones are truncated and counted. None: the model's context length."""

    def validate(self) -> None:
        super().validate()
        for key in ("limit", "max_length"):
            if getattr(self, key) is not None and getattr(self, key) < 2:
                raise FieldError(key, f"must be >= 2 or none, got {getattr(self, key)}")
        names = (self.instruction_field, self.input_field, self.chosen_field, self.rejected_field)
        if len(set(names)) != 4 or not all(names):
            raise FieldError("instruction_field", "instruction_field, input_field, chosen_field and rejected_field "
                             f"must be four different keys, got {list(names)}")


def prepare_preference_splits(cfg: PreferenceDataConfig) -> Splits[PreferenceRecord]:
    """Read, validate and split the records of ``cfg`` (every file checked before training).

    Raises:
        DataError: a bad file or record, an empty training or validation split.
    """
    fields = (cfg.instruction_field, cfg.input_field, cfg.chosen_field, cfg.rejected_field)
    return split_sources(cfg, lambda path: read_preference_file(path, fields), cfg.limit)


# --------------------------------------------------------------------------- tokens


@dataclass(frozen=True)
class PreferenceExample:
    """A tokenized pair: the shared prompt and the two responses (each ending with end-of-text)."""

    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]


def encode_preference(tokenizer, style: PromptStyle, record: PreferenceRecord) -> PreferenceExample:
    """A record as token ids: the style's prompt, and each response (with the style's response
    end, then the end-of-text id), all encoded as plain text."""
    prompt, chosen = style.format_example(record.instruction, record.input, record.chosen)
    _, rejected = style.format_example(record.instruction, record.input, record.rejected)

    def enc(text: str) -> list[int]:
        return tokenizer.encode(text, allowed_special="none")

    return PreferenceExample(enc(prompt), enc(chosen) + [EOT_ID], enc(rejected) + [EOT_ID])


class PreferenceDataset(torch.utils.data.Dataset):
    """Tokenized pairs of a list of records; item ``i`` is ``(i, PreferenceExample)``.

    Attributes:
        n_truncated: pairs with a sequence longer than ``max_length`` tokens (its end is cut off).
        reference_logps: after :meth:`set_reference_logps`, a (N, 2) tensor of the reference
            model's (chosen, rejected) sequence log-probs, else None.
    """

    def __init__(self, records: Sequence[PreferenceRecord], tokenizer, style: PromptStyle,
                 max_length: int | None = None) -> None:
        self.examples = [encode_preference(tokenizer, style, r) for r in records]
        self.max_length = max_length
        self.reference_logps: Tensor | None = None
        self.n_truncated = 0
        if max_length is not None:
            self.n_truncated = sum(len(e.prompt_ids) + max(len(e.chosen_ids), len(e.rejected_ids)) > max_length
                                   for e in self.examples)
            no_room = [r.index for r, e in zip(records, self.examples) if len(e.prompt_ids) >= max_length]
            if no_room:
                raise DataError(f"{len(no_room)} record(s) have prompts of {max_length} tokens or more, leaving no "
                                f"response token within data.max_length (records {no_room[:MAX_REPORTED]}); raise "
                                "data.max_length or shorten them")

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> tuple[int, PreferenceExample]:
        return i, self.examples[i]

    def set_reference_logps(self, logps: Tensor) -> None:
        """Store the reference model's (N, 2) (chosen, rejected) log-probs with the examples."""
        self.reference_logps = logps.detach().to("cpu", torch.float64)


@dataclass
class PreferenceBatch:
    """A collated batch of B pairs as 2B sequences: rows ``0..B-1`` chosen, ``B..2B-1`` rejected.

    Attributes:
        input_ids: (2B, T) token ids, right-padded with the end-of-text id.
        targets: (2B, T) next-token ids (``input_ids`` shifted left by one).
        response_mask: (2B, T) bool, true where the target is a response token.
        indices: (B,) the pairs' positions in their dataset.
        reference_logps: (B, 2) precomputed reference (chosen, rejected) log-probs, or None.
    """

    input_ids: Tensor
    targets: Tensor
    response_mask: Tensor
    indices: Tensor
    reference_logps: Tensor | None = None

    @property
    def n_pairs(self) -> int:
        return int(self.indices.numel())

    def lengths(self) -> tuple[Tensor, Tensor]:
        """(B,) response token counts of the chosen and the rejected sequences."""
        n = self.response_mask.sum(-1)
        return n[: self.n_pairs], n[self.n_pairs:]

    def to(self, device: torch.device | str) -> PreferenceBatch:
        return PreferenceBatch(self.input_ids.to(device), self.targets.to(device), self.response_mask.to(device),
                               self.indices, None if self.reference_logps is None else self.reference_logps.to(device))


def collate_preference(batch: Sequence[tuple[int, PreferenceExample]], *, eot_id: int = EOT_ID,
                       max_length: int | None = None, reference_logps: Tensor | None = None) -> PreferenceBatch:
    """Stack B pairs into 2B right-padded sequences (chosen rows first) with targets and masks.

    Sequence ``prompt + response`` (the response ends with end-of-text) of length ``n`` gives
    inputs ``seq[:-1]`` and targets ``seq[1:]``; the response mask is true at the targets
    ``seq[len(prompt):]``, i.e. at positions ``len(prompt)-1 .. n-2``. Every row is padded
    with ``eot_id`` to the longest (``T = max(n) - 1``, at most ``max_length - 1`` after
    truncating each sequence to ``max_length`` tokens); padding is never in the mask.

    Args:
        batch: ``(dataset index, example)`` items, as :class:`PreferenceDataset` yields.
        reference_logps: the dataset's (N, 2) precomputed reference log-probs, if any; the
            batch takes the rows of its pairs.
    """
    seqs = [(torch.tensor((ex.prompt_ids + getattr(ex, side))[:max_length], dtype=torch.long), len(ex.prompt_ids))
            for side in ("chosen_ids", "rejected_ids") for _, ex in batch]
    ids = pad_sequence([seq for seq, _ in seqs], batch_first=True, padding_value=eot_id)
    # true at the response tokens as they sit in the sequence
    mask = pad_sequence([torch.arange(len(seq)) >= n_prompt for seq, n_prompt in seqs], batch_first=True)
    indices = torch.tensor([i for i, _ in batch], dtype=torch.long)
    ref = reference_logps[indices] if reference_logps is not None else None
    return PreferenceBatch(ids[:, :-1].contiguous(), ids[:, 1:].contiguous(), mask[:, 1:].contiguous(), indices, ref)
