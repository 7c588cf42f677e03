"""Character n-gram token embeddings: what a token is spelled like, shared across tokens.

GPT-2's tokenizer gives ``" FREE"``, ``" Free"``, ``" free"`` and ``"FREE"`` four unrelated
ids, and splits a rare word or a phone number into pieces that a model trained from scratch
on a thousand texts sees once or twice. With ``GPTConfig.token_ngram_buckets = B > 0`` the
token embedding becomes

    wte[id] + mean over g in ngrams(token) of E[hash(g) mod B]

where ``ngrams(token)`` are the character n-grams (:data:`NGRAM_MIN`..:data:`NGRAM_MAX`
characters) of the lower-cased token string between boundary marks, plus the whole
lower-cased token (as fastText builds word vectors from subwords; Bojanowski et al., 2017).
Tokens that are spelled alike then start alike and learn together; ``wte`` still tells
them apart (case included).

The n-gram table is a pure function of the tokenizer's vocabulary and ``B`` (CRC-32 hashes,
no randomness), built on first use and never saved: checkpoints hold ``wte`` and ``E``
(``transformer.wte.ngrams.weight``) only. ``B = 0`` is GPT-2 exactly.
"""

from __future__ import annotations

import functools
import zlib

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from customgpt.errors import ConfigError

NGRAM_MIN = 2
NGRAM_MAX = 4


def token_ngrams(token: str, n_min: int = NGRAM_MIN, n_max: int = NGRAM_MAX) -> list[str]:
    """The n-grams of one token string: its lower-cased form between ``<`` and ``>``, and
    every run of ``n_min``..``n_max`` characters of that (sorted, without repeats)."""
    word = "<" + token.lower() + ">"
    grams = {word}
    for n in range(n_min, n_max + 1):
        grams.update(word[i : i + n] for i in range(len(word) - n + 1))
    return sorted(grams)


def ngram_bucket(gram: str, buckets: int) -> int:
    """A stable hash bucket in ``[0, buckets)`` (CRC-32 of the UTF-8 bytes)."""
    return zlib.crc32(gram.encode("utf-8", "surrogatepass")) % buckets


def ngram_table(tokens: list[str], buckets: int) -> tuple[Tensor, Tensor]:
    """(ids (V, M), weights (V, M)) for the token strings ``tokens``: row v lists the buckets
    of token v's n-grams (padded with 0) and the weight 1/count of each (0 on padding), so
    that ``embedding_bag(ids, E, per_sample_weights=weights, mode="sum")`` is the mean."""
    if buckets < 1:
        raise ConfigError(f"token n-gram buckets must be >= 1, got {buckets}")
    rows = [[ngram_bucket(g, buckets) for g in token_ngrams(t)] for t in tokens]
    lengths = torch.tensor([len(r) for r in rows])
    width = int(lengths.max())
    filled = torch.arange(width).unsqueeze(0) < lengths.unsqueeze(1)  # (V, M): real entries, row by row
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    ids[filled] = torch.tensor([b for r in rows for b in r], dtype=torch.long)
    weights = filled / lengths.unsqueeze(1)
    return ids, weights


@functools.lru_cache(maxsize=4)
def gpt2_ngram_table(vocab_size: int, buckets: int) -> tuple[Tensor, Tensor]:
    """:func:`ngram_table` of the GPT-2 vocabulary (the bundled BPE), cached per process."""
    from customgpt.tokenizer import get_tokenizer

    tokenizer = get_tokenizer()
    if vocab_size != tokenizer.vocab_size:
        raise ConfigError(
            f"model.token_ngram_buckets needs the GPT-2 vocabulary ({tokenizer.vocab_size} tokens); "
            f"this model has vocab_size {vocab_size}")
    # bytes that are not whole UTF-8 characters keep a distinct spelling (\xNN), not U+FFFD
    return ngram_table([tokenizer.token_bytes(i).decode("utf-8", "backslashreplace") for i in range(vocab_size)],
                       buckets)


class TokenNgramEmbedding(nn.Embedding):
    """``nn.Embedding`` (its ``weight`` is ``wte``, tied to the LM head as usual) plus the
    mean of the token's hashed character n-gram embeddings ``ngrams.weight`` (B, C)."""

    def __init__(self, num_embeddings: int, embedding_dim: int, buckets: int) -> None:
        super().__init__(num_embeddings, embedding_dim)
        self.buckets = buckets
        self.ngrams = nn.Embedding(buckets, embedding_dim)
        self._table: tuple[Tensor, Tensor] | None = None  # on the weights' device, built on first use

    def table(self, device: torch.device) -> tuple[Tensor, Tensor]:
        if self._table is None or self._table[0].device != device:
            ids, weights = gpt2_ngram_table(self.num_embeddings, self.buckets)
            self._table = (ids.to(device), weights.to(device))
        return self._table

    def spelling(self, ids: Tensor) -> Tensor:
        """The n-gram part alone, (..., C) for token ids (...)."""
        table_ids, table_weights = self.table(ids.device)
        unique, inverse = torch.unique(ids, return_inverse=True)  # each distinct token once
        per_token = F.embedding_bag(table_ids[unique], self.ngrams.weight,
                                    per_sample_weights=table_weights[unique].to(self.ngrams.weight.dtype), mode="sum")
        return per_token[inverse]

    def forward(self, ids: Tensor) -> Tensor:
        return super().forward(ids) + self.spelling(ids)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, ngram_buckets={self.buckets}"
