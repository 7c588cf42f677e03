"""Labelled text for classification: reading, validating, splitting, tokenizing, batching.

Two sources:

* the **SMS Spam Collection** (registry name ``sms-spam``), read exactly as the reference
  literature reads it (``pandas.read_csv(path, sep="\\t", header=None)``: 5,572 rows from
  5,574 lines, because a field that starts with a quote runs to its closing quote, across
  line ends), and split the reference way (:func:`reference_split`);
* any **CSV / TSV / JSONL** file with a text column and a label column (names configurable),
  any number of classes. Every row is validated before any training starts; the error names
  the file and the line number of every bad row (up to a limit).

Batches are right-padded: the causal mask already keeps pad positions out of every real
token's computation, so the classifier pools the last real token (or the mean over real
tokens) using the attention mask, and the pad id never matters.
"""

from __future__ import annotations

import csv
import io
import json
import random
import zipfile
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from customgpt.constants import EOT_ID
from customgpt.errors import DataError
from customgpt.sections import FieldError, Section

#: Most bad rows listed in one error message (the total is always given).
MAX_REPORTED_ERRORS = 20
#: The SMS Spam Collection's class names, in class-id order (ham = 0, spam = 1).
SPAM_LABELS = ("ham", "spam")
FORMATS = ("csv", "tsv", "jsonl")


@dataclass(frozen=True)
class LabelledText:
    """One example: the text, its label name, and where it came from (file and 1-based line)."""

    text: str
    label: str
    source: str = ""
    line: int = 0


@dataclass
class Splits:
    """Train / validation / test examples (``test`` may be empty when no test set is given)."""

    train: list[LabelledText]
    val: list[LabelledText]
    test: list[LabelledText] = field(default_factory=list)

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test)}


class _Problems:
    """Collects bad rows of one file and raises a single DataError listing them."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self.items: list[str] = []

    def add(self, line: int, what: str) -> None:
        self.items.append(f"line {line}: {what}")

    def raise_if_any(self) -> None:
        if not self.items:
            return
        shown = self.items[:MAX_REPORTED_ERRORS]
        more = len(self.items) - len(shown)
        tail = f"; ... and {more} more" if more else ""
        raise DataError(f"{self.path}: {len(self.items)} bad row(s): " + "; ".join(shown) + tail)


# --------------------------------------------------------------------------- decoding


def decode_utf8(data: bytes, source: str | Path) -> str:
    """Decode UTF-8 (a leading BOM is dropped); a DataError lists every line with invalid bytes."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        problems = _Problems(source)
        for number, raw in enumerate(data.split(b"\n"), start=1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                problems.add(number, f"invalid UTF-8 byte {raw[exc.start]:#04x} at column {exc.start + 1}")
        problems.raise_if_any()
        raise  # unreachable: some line failed to decode


# --------------------------------------------------------------------------- SMS Spam Collection


def split_tsv_like_pandas(text: str) -> list[tuple[int, list[str]]]:
    """Split tab-separated text into records exactly as pandas' default C parser does.

    Returns ``(first line number, fields)`` per record. Rules (pandas ``read_csv`` with
    ``sep="\\t"``, ``quotechar='"'``, ``doublequote=True``): a field that *starts* with a
    quote is quoted: it runs to the closing quote, across tabs and line ends, ``""`` inside it
    is one quote, and characters after the closing quote up to the next tab or line end are
    appended; a quote elsewhere is an ordinary character; blank lines are skipped.
    """
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    n, pos, line = len(text), 0, 1
    records: list[tuple[int, list[str]]] = []

    def field_end(start: int) -> int:
        ends = [i for i in (text.find("\t", start), text.find("\n", start)) if i != -1]
        return min(ends) if ends else n

    while pos < n:
        if text[pos] == "\n":  # blank line
            pos += 1
            line += 1
            continue
        first_line = line
        fields: list[str] = []
        while True:
            if pos < n and text[pos] == '"':
                pos += 1
                parts = []
                while True:
                    close = text.find('"', pos)
                    if close == -1:
                        raise DataError(f"line {first_line}: a quoted field is never closed")
                    parts.append(text[pos:close])
                    line += text.count("\n", pos, close)
                    pos = close + 1
                    if pos < n and text[pos] == '"':  # "" inside quotes is a literal quote
                        parts.append('"')
                        pos += 1
                        continue
                    break
                end = field_end(pos)
                parts.append(text[pos:end])
                fields.append("".join(parts))
            else:
                end = field_end(pos)
                fields.append(text[pos:end])
            pos = end
            if pos < n and text[pos] == "\t":
                pos += 1
                continue
            pos += 1  # past the line end
            line += 1
            break
        records.append((first_line, fields))
    return records


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
    text = decode_utf8(data, source)
    try:
        records = split_tsv_like_pandas(text)
    except DataError as exc:
        raise DataError(f"{source}: {exc}") from None
    problems = _Problems(source)
    rows = []
    for line, fields in records:
        if len(fields) != 2:
            problems.add(line, f"expected 2 tab-separated fields (label, text), got {len(fields)}")
        elif fields[0] not in SPAM_LABELS:
            problems.add(line, f"unknown label {fields[0]!r} (expected ham or spam)")
        elif not fields[1].strip():
            problems.add(line, "empty text")
        else:
            rows.append(LabelledText(fields[1], fields[0], source, line))
    if not records:
        raise DataError(f"{source}: the file is empty")
    problems.raise_if_any()
    return rows


def reference_split(
    rows: Sequence[LabelledText],
    *,
    seed: int = 123,
    train_fraction: float = 0.7,
    val_fraction: float = 0.1,
    balance: bool = True,
    majority: str = "ham",
    minority: str = "spam",
) -> Splits:
    """The reference spam split: undersample ``majority`` to the size of ``minority``, shuffle,
    then 70% / 10% / rest (on the spam data: 1,045 / 149 / 300).

    Reproduces, without pandas, exactly the rows and order of::

        ham = df[df.Label == "ham"].sample(n_spam, random_state=123)
        df = pd.concat([ham, df[df.Label == "spam"]]).sample(frac=1, random_state=123)

    ``DataFrame.sample(n, random_state=s)`` draws ``RandomState(s).choice(len, n, replace=False)``,
    which is ``RandomState(s).permutation(len)[:n]``; numpy's legacy ``RandomState`` is kept
    bit-for-bit stable by numpy for exactly this kind of reproducibility.
    """
    major = [r for r in rows if r.label == majority]
    minor = [r for r in rows if r.label == minority]
    if balance:
        if len(major) < len(minor):
            raise DataError(f"cannot undersample {majority!r} ({len(major)} rows) to {len(minor)} rows")
        pick = np.random.RandomState(seed).permutation(len(major))[: len(minor)]
        major = [major[i] for i in pick]
    combined = major + minor
    order = np.random.RandomState(seed).permutation(len(combined))
    shuffled = [combined[i] for i in order]
    train_end = int(len(shuffled) * train_fraction)
    val_end = train_end + int(len(shuffled) * val_fraction)
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


def detect_format(path: str | Path, fmt: str | None = None) -> str:
    """``csv``, ``tsv`` or ``jsonl``: ``fmt`` if given, else from the file extension."""
    if fmt not in (None, "auto"):
        if fmt not in FORMATS:
            raise DataError(f"unknown data format {fmt!r}; use one of {', '.join(FORMATS)}")
        return fmt
    suffix = Path(path).suffix.lower()
    guess = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl"}.get(suffix)
    if guess is None:
        raise DataError(f"{path}: cannot tell the format from the extension {suffix!r}; set data.format (csv, tsv, jsonl)")
    return guess


def read_labelled_file(
    path: str | Path,
    *,
    text_column: str = "text",
    label_column: str = "label",
    labels: Sequence[str] | None = None,
    fmt: str | None = None,
) -> list[LabelledText]:
    """Read and validate a CSV/TSV (with a header row) or JSONL file of labelled texts.

    Every problem is collected first: non-UTF-8 bytes, a missing column, an empty text or
    label, a label not in ``labels`` (when declared), a malformed row. One DataError then
    names the file and the line of each bad row.
    """
    path = Path(path)
    fmt = detect_format(path, fmt)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if not data.strip():
        raise DataError(f"{path}: the file is empty")
    text = decode_utf8(data, path)
    problems = _Problems(path)
    declared = set(labels) if labels is not None else None
    rows: list[LabelledText] = []

    def check(line: int, raw_text: object, raw_label: object) -> None:
        if not isinstance(raw_text, str):
            problems.add(line, f"{text_column!r} must be a string, got {type(raw_text).__name__}")
            return
        if isinstance(raw_label, bool) or not isinstance(raw_label, (str, int)):
            problems.add(line, f"{label_column!r} must be a string or an integer, got {raw_label!r}")
            return
        label = str(raw_label).strip()
        if not raw_text.strip():
            problems.add(line, f"empty text in column {text_column!r}")
        elif not label:
            problems.add(line, f"empty label in column {label_column!r}")
        elif declared is not None and label not in declared:
            problems.add(line, f"unknown label {label!r} (declared labels: {', '.join(labels or ())})")
        else:
            rows.append(LabelledText(raw_text, label, str(path), line))

    if fmt == "jsonl":
        for number, raw in enumerate(text.split("\n"), start=1):
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw)
            except json.JSONDecodeError as exc:
                problems.add(number, f"invalid JSON ({exc.msg})")
                continue
            if not isinstance(obj, dict):
                problems.add(number, "expected a JSON object")
                continue
            missing = [c for c in (text_column, label_column) if c not in obj]
            if missing:
                problems.add(number, f"missing key(s) {', '.join(map(repr, missing))} (keys: {', '.join(obj)})")
                continue
            check(number, obj[text_column], obj[label_column])
    else:
        reader = csv.reader(io.StringIO(text, newline=""), delimiter="," if fmt == "csv" else "\t")
        try:
            header = next(reader)
        except csv.Error as exc:
            raise DataError(f"{path}: line 1: {exc}") from None
        missing = [c for c in (text_column, label_column) if c not in header]
        if missing:
            raise DataError(
                f"{path}: line 1 (header): missing column(s) {', '.join(map(repr, missing))}; "
                f"columns are {', '.join(map(repr, header))} (set data.text_column / data.label_column)"
            )
        t_idx, l_idx = header.index(text_column), header.index(label_column)
        previous_end = reader.line_num
        while True:
            start = previous_end + 1
            try:
                record = next(reader)
            except StopIteration:
                break
            except csv.Error as exc:
                problems.add(start, str(exc))
                break
            previous_end = reader.line_num
            if not record:
                continue  # a blank line
            if len(record) != len(header):
                problems.add(start, f"expected {len(header)} fields, got {len(record)}")
                continue
            check(start, record[t_idx], record[l_idx])
    if not rows and not problems.items:
        raise DataError(f"{path}: no rows after the header" if fmt != "jsonl" else f"{path}: the file is empty")
    problems.raise_if_any()
    return rows


def resolve_labels(splits: Splits, declared: Sequence[str] | None) -> list[str]:
    """Class names in class-id order: ``declared``, else the sorted labels of the training set.

    Every validation/test label must be a known class (a DataError names its file and line).
    """
    names = list(declared) if declared is not None else sorted({r.label for r in splits.train})
    if len(set(names)) != len(names):
        raise DataError(f"data.labels has duplicates: {names}")
    if len(names) < 2:
        raise DataError(f"classification needs at least 2 classes, found {names}")
    known = set(names)
    bad = [r for part in (splits.train, splits.val, splits.test) for r in part if r.label not in known]
    if bad:
        shown = "; ".join(f"{r.source}: line {r.line}: label {r.label!r}" for r in bad[:MAX_REPORTED_ERRORS])
        raise DataError(f"{len(bad)} row(s) have a label absent from the training set ({', '.join(names)}): {shown}")
    return names


def class_counts(rows: Iterable[LabelledText], labels: Sequence[str]) -> list[int]:
    counts = Counter(r.label for r in rows)
    return [counts.get(name, 0) for name in labels]


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
        self.rows = list(rows)
        self.labels = [index[r.label] for r in self.rows]
        encoded = [list(encode(r.text)) for r in self.rows]
        for row, ids in zip(self.rows, encoded):
            if not ids:
                raise DataError(f"{row.source}: line {row.line}: the text encodes to no tokens")
        self.longest = max((len(ids) for ids in encoded), default=0)
        self.max_length = max_length if max_length is not None else self.longest
        self.num_truncated = sum(len(ids) > self.max_length for ids in encoded)
        self.ids = [ids[: self.max_length] for ids in encoded]

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> tuple[list[int], int]:
        return self.ids[i], self.labels[i]


class SubwordRegularized(Dataset):
    """A :class:`ClassificationDataset` whose texts are tokenized afresh every time an example
    is drawn: with BPE-dropout (subword regularization: Provilkov et al., 2020) and/or, with
    probability ``case_flip``, the whole text upper-cased or lower-cased (half each).

    Each draw is a random segmentation of the (possibly re-cased) text into GPT-2 tokens that
    decodes to that text, truncated to the dataset's ``max_length``. The random generator is
    seeded, and a DataLoader without workers draws examples in a seeded order, so a run is
    reproducible. ``ids`` keeps the ordinary tokens (length bucketing reads their lengths).
    """

    def __init__(self, data: ClassificationDataset, dropout: float, seed: int, tokenizer=None,
                 case_flip: float = 0.0) -> None:
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        if not 0.0 <= case_flip <= 1.0:
            raise ValueError(f"case_flip must be in [0, 1], got {case_flip}")
        from customgpt.tokenizer import get_tokenizer

        self.data = data
        self.dropout = dropout
        self.case_flip = case_flip
        self.tokenizer = tokenizer if tokenizer is not None else get_tokenizer("bpe")
        self.rng = random.Random(seed)
        self.ids, self.labels, self.pad_id = data.ids, data.labels, data.pad_id
        self.max_length = data.max_length

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> tuple[list[int], int]:
        text = self.data.rows[i].text
        if self.case_flip and self.rng.random() < self.case_flip:
            text = text.upper() if self.rng.random() < 0.5 else text.lower()
        elif not self.dropout:
            return self.data.ids[i], self.data.labels[i]  # unchanged: the ordinary tokens
        ids = (self.tokenizer.encode_with_dropout(text, self.dropout, self.rng) if self.dropout
               else self.tokenizer.encode(text))
        return (ids or self.data.ids[i])[: self.max_length], self.data.labels[i]


def collate_classification(batch: Sequence[tuple[list[int], int]], pad_id: int = EOT_ID) -> dict[str, Tensor]:
    """Right-pad a batch to its longest row: ``input_ids`` (B, T), ``attention_mask`` (B, T) with 1
    for real tokens, ``labels`` (B,)."""
    longest = max(len(ids) for ids, _ in batch)
    input_ids = torch.full((len(batch), longest), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), longest), dtype=torch.long)
    for i, (ids, _) in enumerate(batch):
        input_ids[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        mask[i, : len(ids)] = 1
    labels = torch.tensor([label for _, label in batch], dtype=torch.long)
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}


# --------------------------------------------------------------------------- config → splits


@dataclass
class ClassifyDataConfig(Section):
    """Where the labelled texts come from and how they are split.

    Attributes:
        dataset: a registered dataset (``sms-spam``), fetched through the registry
            (mirror ``data_dir`` / ``$CUSTOMGPT_DATA_DIR``, else cache, else download);
            none when the data comes from ``path`` or ``train_file``.
        path: one CSV / TSV / JSONL file, split by ``split``.
        train_file, val_file, test_file: explicit splits (``val_file`` absent: a stratified
            ``val_fraction`` of the training file; ``test_file`` absent: no test set).
        format: ``auto`` (from the extension), ``csv``, ``tsv`` or ``jsonl``.
        text_column, label_column: column (CSV/TSV header) or key (JSONL) names.
        labels: class names in class-id order; declared labels make any other label an error.
            None: the sorted labels of the training set (``sms-spam``: ham, spam).
        split: ``reference`` (``sms-spam`` only: balanced 747 + 747, seed 123, 70/10/20 →
            1,045 / 149 / 300) or ``stratified`` (class shares kept in every part).
        val_fraction, test_fraction: sizes of the stratified parts.
        split_seed: seed of the split (123: the reference split).
        max_length: tokens per text; longer texts are truncated (and counted). None: the
            longest training text, capped at the model's context length.
        pad_token_id: the id used for right padding (never seen by the pooled token).
        bucket_by_length: batch training texts of similar length together (less padding,
            faster on the CPU; the batches are still random, see :func:`length_bucketed_batches`).
        bpe_dropout: > 0: every time a training text is drawn it is tokenized afresh with
            BPE-dropout of this probability (subword regularization, see
            :class:`SubwordRegularized`); validation, test and inference use the ordinary tokens.
        case_flip: > 0: every time a training text is drawn, with this probability it is
            upper-cased or lower-cased as a whole (half each) before tokenizing (case
            augmentation: the label of a message does not depend on its case).
        data_dir, cache_dir: registry mirror and download folders.
    """

    dataset: str | None = "sms-spam"
    path: str | None = None
    train_file: str | None = None
    val_file: str | None = None
    test_file: str | None = None
    format: Literal["auto", "csv", "tsv", "jsonl"] = "auto"
    text_column: str = "text"
    label_column: str = "label"
    labels: list[str] | None = None
    split: Literal["reference", "stratified"] = "reference"
    val_fraction: float = 0.1
    test_fraction: float = 0.2
    split_seed: int = 123
    max_length: int | None = None
    pad_token_id: int = EOT_ID
    bucket_by_length: bool = False
    bpe_dropout: float = 0.0
    case_flip: float = 0.0
    data_dir: str | None = None
    cache_dir: str | None = None

    def validate(self) -> None:
        sources = [k for k in ("dataset", "path", "train_file") if getattr(self, k)]
        if len(sources) != 1:
            raise FieldError(
                "dataset",
                "give exactly one data source: data.dataset (a registered name), data.path (one file "
                f"to split) or data.train_file (explicit splits); got {', '.join(sources) or 'none'}",
            )
        if (self.val_file or self.test_file) and not self.train_file:
            raise FieldError("val_file", "data.val_file / data.test_file need data.train_file")
        if self.split == "reference" and not self.dataset and not self.train_file:
            raise FieldError("split", "the reference split is defined for data.dataset: sms-spam; use stratified")
        for key in ("val_fraction", "test_fraction"):
            if not 0.0 <= getattr(self, key) < 1.0:
                raise FieldError(key, f"must be in [0, 1), got {getattr(self, key)}")
        if self.max_length is not None and self.max_length < 1:
            raise FieldError("max_length", f"must be >= 1 or none, got {self.max_length}")
        if self.labels is not None and len(set(self.labels)) != len(self.labels):
            raise FieldError("labels", f"has duplicates: {self.labels}")
        if not 0.0 <= self.bpe_dropout < 1.0:
            raise FieldError("bpe_dropout", f"must be in [0, 1), got {self.bpe_dropout}")
        if not 0.0 <= self.case_flip <= 1.0:
            raise FieldError("case_flip", f"must be in [0, 1], got {self.case_flip}")


def prepare_splits(cfg: ClassifyDataConfig) -> tuple[Splits, list[str]]:
    """Read, validate and split the data of ``cfg``: (splits, class names in class-id order).

    Every file is fully validated here, before a model is built or a run folder created.
    """
    fmt = None if cfg.format == "auto" else cfg.format
    declared = cfg.labels

    def read(path: str) -> list[LabelledText]:
        return read_labelled_file(
            path, text_column=cfg.text_column, label_column=cfg.label_column, labels=declared, fmt=fmt
        )

    if cfg.dataset:
        if cfg.dataset != "sms-spam":
            raise DataError(f"data.dataset: {cfg.dataset!r} is not a classification dataset (known: sms-spam); "
                            "use data.path or data.train_file for your own files")
        from customgpt.data.registry import fetch

        rows = read_sms_spam(fetch("sms-spam", cfg.data_dir, cfg.cache_dir, data_dir_option="--data.data_dir"))
        declared = list(SPAM_LABELS) if declared is None else declared
        if cfg.split == "reference":
            splits = reference_split(rows, seed=cfg.split_seed)
        else:
            splits = stratified_split(rows, val_fraction=cfg.val_fraction, test_fraction=cfg.test_fraction,
                                      seed=cfg.split_seed)
    elif cfg.path:
        splits = stratified_split(read(cfg.path), val_fraction=cfg.val_fraction,
                                  test_fraction=cfg.test_fraction, seed=cfg.split_seed)
    else:
        assert cfg.train_file is not None
        train = read(cfg.train_file)
        test = read(cfg.test_file) if cfg.test_file else []
        if cfg.val_file:
            splits = Splits(train, read(cfg.val_file), test)
        else:
            carved = stratified_split(train, val_fraction=cfg.val_fraction, test_fraction=0.0, seed=cfg.split_seed)
            splits = Splits(carved.train, carved.val, test)
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
