"""Datasets: the registry of public datasets, and per-task datasets and collate functions.

This module holds what the task readers share: the splits of a run's records and the one
error that lists a file's bad records.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from customgpt.errors import DataError

#: At most this many bad records are listed in one error (the count says how many in all).
MAX_REPORTED = 20

R = TypeVar("R")


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
