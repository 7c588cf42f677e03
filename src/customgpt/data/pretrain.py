"""Pretraining data: text files → one cached token array → sliding windows of (input, target).

Sources (:func:`resolve_sources`) are text files, folders or registered dataset names. Each
file is one document; documents are joined with ``<|endoftext|>`` and tokenized once into a
``uint16`` memmap keyed by the tokenizer and every file's sha256 (:func:`load_tokens`), split by
token position (:func:`split_tokens`) and cut into windows (:class:`TokenWindows`).
docs/training.md gives the options.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from customgpt.constants import EOT_TEXT
from customgpt.data import registry
from customgpt.errors import ConfigError, DataError
from customgpt.io import atomic_open, atomic_write_text, sha256_file
from customgpt.sections import FieldError, Section


@dataclass
class PretrainDataConfig(Section):
    """Where the text comes from and how it is cut into training examples."""

    source: list[str] = field(default_factory=lambda: ["the-verdict"])
    """Text files, folders, or registered dataset names (a string or a list)."""
    val_fraction: float = 0.1
    """The last fraction of the tokens held out for validation (0: none)."""
    context_length: int | None = None
    """Tokens per example; none: the model's context length."""
    stride: int | None = None
    """Step between window starts; none: ``context_length`` (no overlap)."""
    shuffle: bool = True
    """Shuffle the training windows each epoch (seeded by ``train.seed`` and the epoch)."""
    pattern: str = "*.txt"
    """Which files of a folder to read."""
    cache_dir: str | None = None
    """Folder of the token caches; none: ``$CUSTOMGPT_CACHE_DIR/tokens`` or ``~/.cache/customgpt/tokens``."""
    data_dir: str | None = None
    """Mirror folder of the registered datasets; none: ``$CUSTOMGPT_DATA_DIR``."""

    def validate(self) -> None:
        if not self.source:
            raise FieldError("source", "needs at least one file, folder or dataset name")
        if not 0.0 <= self.val_fraction < 1.0:
            raise FieldError("val_fraction", f"must be in [0, 1), got {self.val_fraction}")
        for key in ("context_length", "stride"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise FieldError(key, f"must be >= 1 or none, got {value}")


# --------------------------------------------------------------------------- sources


def resolve_sources(sources: Sequence[str], *, pattern: str = "*.txt", data_dir: str | None = None) -> list[Path]:
    """Files to read, in order: each source is a file, a folder, or a registered dataset name.

    Raises:
        DataError: a source that is none of these, or a folder without matching files.
    """
    files: list[Path] = []
    for source in sources:
        path = Path(source).expanduser()
        if path.is_file():
            files.append(path)
        elif path.is_dir():
            found = sorted(p for p in path.rglob(pattern) if p.is_file())
            if not found:
                raise DataError(f"data.source: folder {path} has no files matching {pattern!r}")
            files.extend(found)
        elif source in registry.DATASETS:
            files.append(registry.fetch(source, data_dir=data_dir, progress=False,
                                         data_dir_option="--data.data_dir"))
        else:
            raise DataError(f"data.source: {source!r} is not a file, a folder, or a registered dataset "
                            f"({', '.join(registry.DATASETS)})")
    return files


def cache_path(files: Sequence[Path], tokenizer, cache_dir: str | Path | None = None) -> Path:
    """The token cache file for ``files`` under ``tokenizer`` (it may not exist yet)."""
    vocab = hashlib.sha256()  # what decides the ids: the merge ranks and the special tokens
    for token, rank in sorted(tokenizer.mergeable_ranks.items(), key=lambda kv: kv[1]):
        vocab.update(rank.to_bytes(4, "little") + len(token).to_bytes(2, "little") + token)
    vocab.update(json.dumps(sorted(tokenizer.special_tokens.items())).encode())
    digest = hashlib.sha256(b"customgpt-pretrain-tokens-v1\n" + vocab.hexdigest().encode())
    for path in files:
        digest.update(b"\n" + sha256_file(path).encode())
    folder = Path(cache_dir).expanduser() if cache_dir is not None else registry.cache_root() / "tokens"
    return folder / f"{digest.hexdigest()}.memmap"


#: a temporary cache file (``.NAME.XXXX.tmp``) untouched for this long belongs to a run that
#: was killed (a live build writes as it goes): the next build deletes it
STALE_TEMP_SECONDS = 3600.0


def load_tokens(files: Sequence[Path], tokenizer, cache_dir: str | Path | None = None,
                *, build: bool = True) -> np.memmap:
    """The token ids of ``files`` joined by ``<|endoftext|>``, from the cache (built if missing).

    Args:
        build: tokenize when there is no cache entry; with False a missing entry is an error
            (other processes of a distributed run wait for rank 0 to build it).
    """
    path = cache_path(files, tokenizer, cache_dir)
    if not path.is_file():
        if not build:
            raise DataError(f"token cache {path} is missing")
        for tmp in path.parent.glob(".*.tmp"):
            with contextlib.suppress(OSError):  # another process removed it first, or it is not ours
                if time.time() - tmp.stat().st_mtime > STALE_TEMP_SECONDS:
                    tmp.unlink()
        if tokenizer.vocab_size > np.iinfo(np.uint16).max + 1:
            raise ConfigError(f"the tokenizer has {tokenizer.vocab_size} ids; the uint16 token cache holds 65,536")
        eot = np.array([tokenizer.eot_id], dtype=np.uint16)
        n_tokens = 0
        with atomic_open(path, "wb") as fh:  # a crash leaves no half cache under the final name
            for i, file in enumerate(files):
                try:
                    text = file.read_text(encoding="utf-8")
                except UnicodeDecodeError as exc:
                    raise DataError(f"{file}: not UTF-8 text (byte {exc.start}): {exc.reason}") from exc
                ids = np.asarray(tokenizer.encode(text, allowed_special={EOT_TEXT}), dtype=np.uint16)
                if i > 0:
                    fh.write(eot.tobytes())
                    n_tokens += 1
                fh.write(ids.tobytes())
                n_tokens += len(ids)
        meta = {"tokens": n_tokens, "tokenizer": tokenizer.name, "files": [str(f) for f in files]}
        atomic_write_text(path.with_suffix(".json"), json.dumps(meta, indent=2) + "\n")
    if path.stat().st_size == 0:
        raise DataError(f"data.source: no text in {', '.join(str(f) for f in files)}")
    return np.memmap(path, dtype=np.uint16, mode="r")


# --------------------------------------------------------------------------- split and windows


def split_tokens(tokens: np.ndarray, val_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation): the first ``1 - val_fraction`` of the tokens, then the rest."""
    cut = int(round(len(tokens) * (1.0 - val_fraction)))
    return tokens[:cut], tokens[cut:]


class TokenWindows(torch.utils.data.Dataset):
    """(input, target) windows over a token array: ``ids[i:i+T]`` and ``ids[i+1:i+T+1]``."""

    def __init__(self, tokens: np.ndarray, context_length: int, stride: int | None = None) -> None:
        self.tokens = tokens
        self.context_length = context_length
        self.stride = stride or context_length
        # window starts i with i + T + 1 <= len(tokens), every ``stride`` tokens
        self.starts = range(0, max(len(tokens) - context_length, 0), self.stride)

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        i = self.starts[index]
        chunk = torch.from_numpy(np.asarray(self.tokens[i:i + self.context_length + 1], dtype=np.int64))
        return chunk[:-1], chunk[1:]

    def batch(self, indices: Sequence[int]) -> tuple[Tensor, Tensor]:
        """Stacked (inputs, targets) of shape (len(indices), T)."""
        inputs, targets = zip(*(self[i] for i in indices))
        return torch.stack(inputs), torch.stack(targets)


def epoch_order(n: int, *, seed: int, epoch: int, shuffle: bool) -> list[int]:
    """The order of the ``n`` training windows in ``epoch``: the same on every process and
    after a resume, because it depends only on (seed, epoch)."""
    if not shuffle:
        return list(range(n))
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=generator).tolist()


