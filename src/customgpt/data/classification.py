"""Labelled text for classification: reading, validating, splitting, tokenizing, batching.

Two sources: the SMS Spam Collection (``sms-spam``), read as pandas reads it and split the
reference way (:func:`reference_split`), and any CSV / TSV / JSONL file with a text column and
a label column (:func:`read_labelled_file`), every row validated before training starts.
Batches are right-padded; pooling reads the attention mask. docs/classification.md gives the
reading rules, the splits and the error messages.
"""

from __future__ import annotations

import csv
import io
import json
import sys
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import Dataset

from customgpt.constants import EOT_ID
from customgpt.data import MAX_REPORTED, SourceConfig, Splits, raise_problems
from customgpt.data.registry import fetch
from customgpt.errors import DataError
from customgpt.sections import FieldError

#: The SMS Spam Collection's class names, in class-id order (ham = 0, spam = 1).
SPAM_LABELS = ("ham", "spam")
#: The file format of each extension (``data.format: auto``).
SUFFIX_FORMATS = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl"}


@dataclass(frozen=True)
class LabelledText:
    """One example: the text, its label name, and where it came from (file and 1-based line)."""

    text: str
    label: str
    source: str = ""
    line: int = 0


# --------------------------------------------------------------------------- decoding and records


def decode_utf8(data: bytes, source: str | Path) -> str:
    """Decode UTF-8 (a leading BOM is dropped); a DataError lists every line with invalid bytes."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        problems: list[str] = []
        for number, raw in enumerate(data.split(b"\n"), start=1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                problems.append(f"line {number}: invalid UTF-8 byte {raw[exc.start]:#04x} at column {exc.start + 1}")
        raise_problems(source, "bad row(s)", problems)
        raise  # unreachable: some line failed to decode


def read_records(text: str, source: str | Path, delimiter: str = ",") -> list[tuple[int, list[str]]]:
    """``(first line number, fields)`` of each record of delimited ``text``; blank lines are skipped.

    The csv module's rules (not strict), which are RFC 4180's and, with ``delimiter="\\t"``,
    those of pandas' default C parser (``read_csv(sep="\\t")``): a field that *starts* with a
    quote runs to the closing quote, across delimiters and line ends, ``""`` inside it is one
    quote, and characters after the closing quote up to the next delimiter or line end are
    appended; a quote elsewhere is an ordinary character. Fields may be of any size.

    Raises:
        DataError: a quoted field is never closed (naming ``source`` and the line).
    """
    # A sentinel line at the end shows whether the last quote was closed: an open quote swallows it.
    end = "\x00end"
    limit = csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # a field of any size
    try:
        reader = csv.reader(io.StringIO(text + "\n" + end, newline=""), delimiter=delimiter)
        records, first = [], 1
        for fields in reader:
            if fields:  # a blank line is []
                records.append((first, fields))
            first = reader.line_num + 1
    finally:
        csv.field_size_limit(limit)
    last_line, last = records.pop()
    if last != [end]:
        raise DataError(f"{source}: line {last_line}: a quoted field is never closed")
    return records


# --------------------------------------------------------------------------- SMS Spam Collection


def read_sms_spam(path: str | Path) -> list[LabelledText]:
    """Read the SMS Spam Collection: the registry's zip, or the extracted ``SMSSpamCollection``.

    Gives the same 5,572 (label, text) rows, in the same order, as
    ``pandas.read_csv(path, sep="\\t", header=None, names=["Label", "Text"])``.
    """
    path = Path(path)
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            try:
                data = zf.read("SMSSpamCollection")
            except KeyError:
                raise DataError(f"{path}: no SMSSpamCollection inside the zip") from None
        source = f"{path}!SMSSpamCollection"
    else:
        data = path.read_bytes()
        source = str(path)
    records = read_records(decode_utf8(data, source), source, "\t")
    problems: list[str] = []
    rows = []
    for line, fields in records:
        if len(fields) != 2:
            problems.append(f"line {line}: expected 2 tab-separated fields (label, text), got {len(fields)}")
        elif fields[0] not in SPAM_LABELS:
            problems.append(f"line {line}: unknown label {fields[0]!r} (expected ham or spam)")
        elif not fields[1].strip():
            problems.append(f"line {line}: empty text")
        else:
            rows.append(LabelledText(fields[1], fields[0], source, line))
    if not records:
        raise DataError(f"{source}: the file is empty")
    raise_problems(source, "bad row(s)", problems)
    return rows


def reference_split(rows: Sequence[LabelledText], *, seed: int = 123) -> Splits:
    """The reference spam split: undersample ham to the size of spam, shuffle, then 70% / 10% /
    rest (on the spam data: 1,045 / 149 / 300).

    Reproduces, without pandas, exactly the rows and order of::

        ham = df[df.Label == "ham"].sample(n_spam, random_state=123)
        df = pd.concat([ham, df[df.Label == "spam"]]).sample(frac=1, random_state=123)

    ``DataFrame.sample(n, random_state=s)`` draws ``RandomState(s).choice(len, n, replace=False)``,
    which is ``RandomState(s).permutation(len)[:n]``; numpy's legacy ``RandomState`` is kept
    bit-for-bit stable by numpy for exactly this kind of reproducibility.
    """
    ham = [r for r in rows if r.label == "ham"]
    spam = [r for r in rows if r.label == "spam"]  # the registry's checksum fixes the counts: 4,825 and 747
    pick = np.random.RandomState(seed).permutation(len(ham))[: len(spam)]
    combined = [ham[i] for i in pick] + spam
    order = np.random.RandomState(seed).permutation(len(combined))
    shuffled = [combined[i] for i in order]
    train_end = int(len(shuffled) * 0.7)
    val_end = train_end + int(len(shuffled) * 0.1)
    return Splits(shuffled[:train_end], shuffled[train_end:val_end], shuffled[val_end:])


def stratified_split(
    rows: Sequence[LabelledText], *, val_fraction: float, test_fraction: float, seed: int = 123
) -> Splits:
    """Split keeping each class's share the same in every part (rounded per class), shuffled."""
    if not 0 <= val_fraction < 1 or not 0 <= test_fraction < 1 or val_fraction + test_fraction >= 1:
        raise DataError(
            f"val_fraction ({val_fraction}) and test_fraction ({test_fraction}) must be in [0, 1) and sum below 1"
        )
    rng = np.random.RandomState(seed)
    by_label: dict[str, list[LabelledText]] = {}
    for row in rows:
        by_label.setdefault(row.label, []).append(row)
    train: list[LabelledText] = []
    val: list[LabelledText] = []
    test: list[LabelledText] = []
    for label in sorted(by_label):
        group = by_label[label]
        group = [group[i] for i in rng.permutation(len(group))]
        n_test = round(len(group) * test_fraction)
        n_val = round(len(group) * val_fraction)
        test += group[:n_test]
        val += group[n_test : n_test + n_val]
        train += group[n_test + n_val :]
    return Splits(*([part[i] for i in rng.permutation(len(part))] for part in (train, val, test)))


# --------------------------------------------------------------------------- CSV / TSV / JSONL


def read_labelled_file(
    path: str | Path,
    *,
    text_column: str = "text",
    label_column: str = "label",
    labels: Sequence[str] | None = None,
    fmt: Literal["auto", "csv", "tsv", "jsonl"] | None = None,
) -> list[LabelledText]:
    """Read and validate a CSV/TSV (with a header row) or JSONL file of labelled texts.

    ``fmt`` None or ``auto``: from the extension (:data:`SUFFIX_FORMATS`). A TSV is read
    literally: one line is one row, split at tabs (no quote processing); a CSV by
    :func:`read_records`. Every problem is collected first: non-UTF-8 bytes, a missing column,
    an empty text or label, a label not in ``labels`` (when declared), a malformed row, JSONL
    labels that mix integers and strings. One DataError then names the file and the line of
    each bad row. A header that names a column twice, or ``text_column`` equal to
    ``label_column``, is a DataError too.
    """
    path = Path(path)
    if fmt in (None, "auto"):
        fmt = SUFFIX_FORMATS.get(path.suffix.lower())
        if fmt is None:
            raise DataError(f"{path}: cannot tell the format from the extension {path.suffix.lower()!r}; "
                            "set data.format (csv, tsv, jsonl)")
    if text_column == label_column:
        raise DataError(f"{path}: the text column and the label column are both {text_column!r}; "
                        "set data.text_column and data.label_column to two different columns")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if not data.strip():
        raise DataError(f"{path}: the file is empty")
    text = decode_utf8(data, path)
    problems: list[str] = []
    declared = set(labels) if labels is not None else None
    rows: list[LabelledText] = []
    label_types: dict[type, int] = {}  # JSONL: the first line of each type of label

    def check(line: int, raw_text: object, raw_label: object) -> None:
        if not isinstance(raw_text, str):
            problems.append(f"line {line}: {text_column!r} must be a string, got {type(raw_text).__name__}")
            return
        if isinstance(raw_label, bool) or not isinstance(raw_label, (str, int)):
            problems.append(f"line {line}: {label_column!r} must be a string or an integer, got {raw_label!r}")
            return
        label_types.setdefault(type(raw_label), line)
        label = str(raw_label).strip()
        if not raw_text.strip():
            problems.append(f"line {line}: empty text in column {text_column!r}")
        elif not label:
            problems.append(f"line {line}: empty label in column {label_column!r}")
        elif declared is not None and label not in declared:
            problems.append(f"line {line}: unknown label {label!r} (declared labels: {', '.join(labels or ())})")
        else:
            rows.append(LabelledText(raw_text, label, str(path), line))

    if fmt == "jsonl":
        for number, raw in enumerate(text.split("\n"), start=1):
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw)
            except json.JSONDecodeError as exc:
                problems.append(f"line {number}: invalid JSON ({exc.msg})")
                continue
            if not isinstance(obj, dict):
                problems.append(f"line {number}: expected a JSON object")
                continue
            missing = [c for c in (text_column, label_column) if c not in obj]
            if missing:
                problems.append(f"line {number}: missing key(s) {', '.join(map(repr, missing))} "
                                f"(keys: {', '.join(obj)})")
                continue
            check(number, obj[text_column], obj[label_column])
        if len(label_types) > 1:
            raise DataError(f"{path}: {label_column!r} mixes integers (first on line {label_types[int]}) and "
                            f"strings (first on line {label_types[str]}); write every label the same way")
    else:
        tsv = ((n, raw.removesuffix("\r").split("\t")) for n, raw in enumerate(text.split("\n"), start=1))
        records = iter(tsv if fmt == "tsv" else read_records(text, path))  # a TSV: no quoting
        _, header = next(records, (1, []))
        _check_header(path, header, text_column, label_column)
        t_idx, l_idx = header.index(text_column), header.index(label_column)
        for line, record in records:
            if record == [""]:
                continue  # a blank TSV line
            if len(record) != len(header):
                problems.append(f"line {line}: expected {len(header)} fields, got {len(record)}")
                continue
            check(line, record[t_idx], record[l_idx])
    if not rows and not problems:
        raise DataError(f"{path}: no rows after the header" if fmt != "jsonl" else f"{path}: the file is empty")
    raise_problems(path, "bad row(s)", problems)
    return rows


def _check_header(path: Path, header: list[str], text_column: str, label_column: str) -> None:
    missing = [c for c in (text_column, label_column) if c not in header]
    if missing:
        raise DataError(
            f"{path}: line 1 (header): missing column(s) {', '.join(map(repr, missing))}; "
            f"columns are {', '.join(map(repr, header))} (set data.text_column / data.label_column)"
        )
    twice = sorted({c for c in header if header.count(c) > 1})
    if twice:
        raise DataError(f"{path}: line 1 (header): column(s) {', '.join(map(repr, twice))} appear more than "
                        "once; every column needs its own name")


def resolve_labels(splits: Splits, declared: Sequence[str] | None) -> list[str]:
    """Class names in class-id order: ``declared``, else the sorted labels of the training set.

    Every validation/test label must be a known class (a DataError names its file and line).
    """
    names = list(declared) if declared is not None else sorted({r.label for r in splits.train})
    if len(names) < 2:
        if declared is not None:
            raise DataError(f"data.labels: classification needs at least 2 classes, got {names}")
        files = ", ".join(sorted({r.source for r in splits.train}))
        raise DataError(f"{files}: classification needs at least 2 classes; the training rows have only "
                        f"{', '.join(map(repr, names))}")
    known = set(names)
    bad = [r for part in (splits.train, splits.val, splits.test) for r in part if r.label not in known]
    if bad:
        shown = "; ".join(f"{r.source}: line {r.line}: label {r.label!r}" for r in bad[:MAX_REPORTED])
        raise DataError(f"{len(bad)} row(s) have a label absent from the training set ({', '.join(names)}): {shown}")
    return names


# --------------------------------------------------------------------------- tensors


class ClassificationDataset(Dataset):
    """Token ids and class ids of a list of examples, truncated to ``max_length`` tokens.

    ``max_length=None`` keeps every token (the training set sets it to its longest message).
    ``num_truncated`` counts the examples that lost tokens, so the run can report it.
    ``pad_id`` is what :func:`collate_classification` pads with.
    """

    def __init__(
        self,
        rows: Sequence[LabelledText],
        labels: Sequence[str],
        encode: Callable[[str], list[int]],
        max_length: int | None = None,
        *,
        pad_id: int = EOT_ID,
    ) -> None:
        index = {name: i for i, name in enumerate(labels)}
        self.pad_id = pad_id
        self.labels = [index[r.label] for r in rows]
        encoded = [list(encode(r.text)) for r in rows]  # the readers refuse empty texts: never []
        self.longest = max((len(ids) for ids in encoded), default=0)
        self.max_length = max_length if max_length is not None else self.longest
        self.num_truncated = sum(len(ids) > self.max_length for ids in encoded)
        self.ids = [ids[: self.max_length] for ids in encoded]

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> tuple[list[int], int]:
        return self.ids[i], self.labels[i]


def collate_classification(batch: Sequence[tuple[list[int], int]], pad_id: int = EOT_ID) -> dict[str, Tensor]:
    """Right-pad a batch to its longest row: ``input_ids`` (B, T), ``attention_mask`` (B, T) with 1
    for real tokens, ``labels`` (B,)."""
    input_ids = pad_sequence([torch.tensor(ids, dtype=torch.long) for ids, _ in batch], batch_first=True,
                             padding_value=pad_id)
    mask = pad_sequence([torch.ones(len(ids), dtype=torch.long) for ids, _ in batch], batch_first=True)
    labels = torch.tensor([label for _, label in batch], dtype=torch.long)
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}


# --------------------------------------------------------------------------- config → splits


@dataclass
class ClassifyDataConfig(SourceConfig):
    """Where the labelled texts come from (one CSV / TSV / JSONL file, or explicit split files
    with an optional validation and test file), how they are split and batched (the ``data`` section)."""

    dataset: str | None = "sms-spam"
    """A registered dataset (sms-spam), fetched through the registry; none when the data comes from path or train_file."""
    val_file: str | None = None
    """Explicit splits: the validation file (none: a stratified data.val_fraction of the training file)."""
    format: Literal["auto", "csv", "tsv", "jsonl"] = "auto"
    """File format; auto: from the extension (.csv, .tsv/.tab, .jsonl/.ndjson)."""
    text_column: str = "text"
    """Column (CSV/TSV header) or key (JSONL) of the texts."""
    label_column: str = "label"
    """Column (CSV/TSV header) or key (JSONL) of the labels."""
    labels: list[str] | None = None
    """Class names in class-id order; any other label is an error (none: the sorted training labels)."""
    split: Literal["reference", "stratified"] = "reference"
    """reference (sms-spam only: balanced, seed 123, 1,045 / 149 / 300) or stratified (class shares kept)."""
    val_fraction: float = 0.1
    """Share of the rows in the validation part of a stratified split."""
    test_fraction: float = 0.2
    """Share of the rows in the test part of a stratified split."""
    split_seed: int = 123
    """Seed of the split (123: the reference split)."""
    max_length: int | None = None
    """Tokens per text, longer texts are truncated (none: the longest training text, capped at the context)."""
    pad_token_id: int = EOT_ID
    """Id used for right padding (never seen by the pooled token)."""
    bucket_by_length: bool = False
    """Batch training texts of similar length together (less padding; batches stay random)."""

    def validate(self) -> None:
        super().validate()
        if self.split == "reference" and not self.dataset and not self.train_file:
            raise FieldError("split", "the reference split is defined for data.dataset: sms-spam; use stratified")
        for key in ("val_fraction", "test_fraction"):
            if not 0.0 <= getattr(self, key) < 1.0:
                raise FieldError(key, f"must be in [0, 1), got {getattr(self, key)}")
        if self.max_length is not None and self.max_length < 1:
            raise FieldError("max_length", f"must be >= 1 or none, got {self.max_length}")
        if self.labels is not None and len(set(self.labels)) != len(self.labels):
            raise FieldError("labels", f"has duplicates: {self.labels}")
        if self.text_column == self.label_column:
            raise FieldError("text_column", f"equals data.label_column ({self.text_column!r}); the texts and the "
                             "labels must be two different columns")


def prepare_splits(cfg: ClassifyDataConfig) -> tuple[Splits, list[str]]:
    """Read, validate and split the data of ``cfg``: (splits, class names in class-id order).

    Every file is fully validated here, before a model is built or a run folder created.
    """
    declared = cfg.labels

    def read(path: str) -> list[LabelledText]:
        return read_labelled_file(path, text_column=cfg.text_column, label_column=cfg.label_column,
                                  labels=declared, fmt=cfg.format)

    if cfg.train_file:
        train = read(cfg.train_file)
        test = read(cfg.test_file) if cfg.test_file else []
        if cfg.val_file:
            splits = Splits(train, read(cfg.val_file), test)
        else:
            carved = stratified_split(train, val_fraction=cfg.val_fraction, test_fraction=0.0, seed=cfg.split_seed)
            splits = Splits(carved.train, carved.val, test)
    else:
        if cfg.path:
            rows = read(cfg.path)
        elif cfg.dataset != "sms-spam":
            raise DataError(f"data.dataset: {cfg.dataset!r} is not a classification dataset (known: "
                            "sms-spam); use data.path or data.train_file for your own files")
        else:
            rows = read_sms_spam(fetch("sms-spam", cfg.data_dir, cfg.cache_dir,
                                       data_dir_option="--data.data_dir"))
            declared = list(SPAM_LABELS) if declared is None else declared
        if cfg.split == "reference":
            splits = reference_split(rows, seed=cfg.split_seed)
        else:
            splits = stratified_split(rows, val_fraction=cfg.val_fraction, test_fraction=cfg.test_fraction,
                                      seed=cfg.split_seed)
    if not splits.train:
        raise DataError("the training split is empty")
    if not splits.val:
        raise DataError("the validation split is empty: raise data.val_fraction or give data.val_file")
    return splits, resolve_labels(splits, declared)


def length_bucketed_batches(
    lengths: Sequence[int], batch_size: int, *, generator: torch.Generator, bucket_batches: int = 50,
    drop_last: bool = True,
) -> list[list[int]]:
    """One epoch of batches (lists of indices) with little padding: shuffle, cut into pools of
    ``bucket_batches`` batches, sort each pool by length, batch it, then shuffle the batches.

    Every example appears once (minus the remainder with ``drop_last``); the order is random
    but texts of similar length share a batch, so right padding wastes little compute.
    """
    order = torch.randperm(len(lengths), generator=generator).tolist()
    if drop_last:
        order = order[: len(order) - len(order) % batch_size]
    pool = batch_size * bucket_batches
    batches: list[list[int]] = []
    for start in range(0, len(order), pool):
        chunk = sorted(order[start:start + pool], key=lambda i: lengths[i])
        batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    return [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]
