"""Datasets: the registry of public datasets, and per-task datasets and collate functions.

This module holds what the task readers share: the config keys that say where a task's
records come from, the splits of a run's records and the one error that lists a file's bad records.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from customgpt.errors import DataError
from customgpt.sections import FieldError, Section

#: At most this many bad records are listed in one error (the count says how many in all).
MAX_REPORTED = 20

R = TypeVar("R")


@dataclass
class SourceConfig(Section):
    """The keys of a task's ``data`` section that say where its records come from: exactly one
    of a registered dataset, one file to split, or explicit split files."""

    dataset: str | None = None
    """A registered dataset, fetched through the registry (mirror data_dir or $CUSTOMGPT_DATA_DIR, else cache, else download)."""
    path: str | None = None
    """One file of records, split by data.split (instead of dataset)."""
    train_file: str | None = None
    """Explicit splits: the training file (instead of dataset or path)."""
    val_file: str | None = None
    """Explicit splits: the validation file."""
    test_file: str | None = None
    """Explicit splits: the test file (optional)."""
    data_dir: str | None = None
    """Registry mirror folder (default $CUSTOMGPT_DATA_DIR)."""
    cache_dir: str | None = None
    """Registry download folder."""

    def validate(self) -> None:
        sources = [k for k in ("dataset", "path", "train_file") if getattr(self, k)]
        if len(sources) != 1:
            raise FieldError("dataset", "give exactly one data source: data.dataset (a registered name), data.path "
                             "(one file to split) or data.train_file (explicit splits); got "
                             f"{', '.join('data.' + s for s in sources) or 'none'}")
        if (self.val_file or self.test_file) and not self.train_file:
            raise FieldError("val_file", "data.val_file / data.test_file go with data.train_file")


@dataclass
class Splits(Generic[R]):
    """The train / validation / test records of a run (``test`` may be empty)."""

    train: list[R]
    val: list[R]
    test: list[R] = field(default_factory=list)

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test)}

    def get(self, name: str) -> list[R]:
        """One split by name, or ``all`` of them (train, test, then val: the file order of the reference split)."""
        return self.train + self.test + self.val if name == "all" else getattr(self, name)


def raise_problems(source: object, what: str, problems: Sequence[str]) -> None:
    """Raise one DataError naming ``source`` and listing the first :data:`MAX_REPORTED`
    ``problems`` (then their count), e.g. ``f: 3 bad row(s): line 2: ...``; nothing without problems."""
    if not problems:
        return
    more = len(problems) - MAX_REPORTED
    tail = f"; ... and {more} more" if more > 0 else ""
    raise DataError(f"{source}: {len(problems)} {what}: " + "; ".join(problems[:MAX_REPORTED]) + tail)
