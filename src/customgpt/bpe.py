"""Byte-level BPE from scratch (Sennrich et al. 2016; GPT-2, Radford et al. 2019): the
algorithms behind the ``bpe`` tokenizer engine of :mod:`customgpt.tokenizer`.

Everything works on a *rank table* (tiktoken's format): token bytes -> rank, which is also
the id; a lower rank was learned earlier. :data:`GPT2_PATTERN` splits text into pre-tokens
(merges never cross them), :func:`bpe_merge` merges one pre-token by rank,
:func:`train_bpe_ranks` learns a table, :func:`to_hf_vocab_and_merges` writes it as GPT-2's
``vocab.json`` + ``merges.txt``.
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from functools import lru_cache

import regex

from customgpt.errors import DataError

#: GPT-2's pre-tokenization pattern, as published with the original model: English
#: contractions, an optional space followed by letters / numbers / other symbols, then
#: whitespace. ``\s+(?!\S)`` leaves the last space of a run for the next word, so
#: "a   b" splits as "a", "  ", " b".
GPT2_PAT_STR = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

GPT2_PATTERN = regex.compile(GPT2_PAT_STR)


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from the 256 byte values to printable unicode characters.

    ``vocab.json`` and ``merges.txt`` are text files, so GPT-2 writes each token's bytes as
    a string of printable characters: the 188 printable latin-1 bytes map to themselves,
    the other 68 (control characters, space, ...) to code points 256 and up, in byte order.
    Bytes 0..32 are all unprintable, so space (32) becomes ``chr(256 + 32)`` = ``Ġ``: that is
    why a leading space shows as ``Ġ`` in GPT-2's vocabulary.
    """
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    mapping = {b: chr(b) for b in printable}
    next_code_point = 256
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(next_code_point)
            next_code_point += 1
    return mapping


def bpe_merge(piece: bytes, ranks: Mapping[bytes, int], max_rank: int | None = None) -> list[bytes]:
    """Split one pre-token's bytes into tokens by applying merges in rank order.

    Start from single bytes; while some adjacent pair concatenates to a token in ``ranks``,
    merge the pair with the lowest rank (the leftmost one on ties). With ``max_rank`` only
    tokens of rank < ``max_rank`` may be formed (used to recover GPT-2's merge list).

    O(n log n) in the piece's length n (rescanning after each merge is quadratic): the parts
    form a linked list and each adjacent pair sits in a heap as ``rank * (n + 1) + left
    position``, so the first pair popped is the lowest-ranked, leftmost one. A popped entry
    whose pair has changed since it was pushed is stale and skipped.
    """
    n = len(piece)
    parts: list[bytes] = [piece[i : i + 1] for i in range(n)]
    if n < 2:
        return parts
    get = ranks.get
    limit = float("inf") if max_rank is None else max_rank
    stride = n + 1
    nxt = list(range(1, n + 1))  # n: no right neighbour
    prv = list(range(-1, n - 1))  # -1: no left neighbour
    heap: list[int] = []
    for i in range(n - 1):
        rank = get(parts[i] + parts[i + 1])
        if rank is not None and rank < limit:
            heap.append(rank * stride + i)
    heapq.heapify(heap)
    pop, push = heapq.heappop, heapq.heappush
    while heap:
        rank, i = divmod(pop(heap), stride)
        j = nxt[i]
        if j >= n or not parts[i] or get(parts[i] + parts[j]) != rank:
            continue  # stale: this pair has changed since it was pushed
        merged = parts[i] + parts[j]
        parts[i] = merged
        parts[j] = b""  # gone
        k = nxt[j]
        nxt[i] = k
        if k < n:
            prv[k] = i
            rank = get(merged + parts[k])
            if rank is not None and rank < limit:
                push(heap, rank * stride + i)
        p = prv[i]
        if p >= 0:
            rank = get(parts[p] + merged)
            if rank is not None and rank < limit:
                push(heap, rank * stride + p)
    return [part for part in parts if part]  # merged-away parts are empty


@lru_cache(maxsize=64)
def special_pattern(specials: frozenset[str]) -> regex.Pattern[str]:
    """A pattern matching any of ``specials`` (not empty), longest first, so a special token
    that extends another one wins."""
    return regex.compile("|".join(regex.escape(s) for s in sorted(specials, key=len, reverse=True)))


# --------------------------------------------------------------------------- Training


def count_pretokens(texts: Iterable[str], special_tokens: Iterable[str] = ()) -> Counter[bytes]:
    """Count each distinct pre-token (as UTF-8 bytes) over ``texts``.

    Special-token strings are cut out first, so they neither become part of a pre-token
    nor teach the vocabulary merges (they get their own ids after training).
    """
    specials = frozenset(special_tokens)
    counts: Counter[str] = Counter()
    for text in texts:
        chunks = special_pattern(specials).split(text) if specials else [text]
        for chunk in chunks:
            counts.update(GPT2_PATTERN.findall(chunk))
    # Lone surrogates cannot be UTF-8 encoded; "replace" keeps training from crashing on
    # text that came from a lossy decode.
    result: Counter[bytes] = Counter()
    for piece, n in counts.items():
        result[piece.encode("utf-8", errors="replace")] += n
    return result


def _merge_word(word: tuple[int, ...], left: int, right: int, new_id: int) -> tuple[int, ...]:
    """Replace every non-overlapping ``(left, right)`` in ``word``, scanning left to right."""
    out: list[int] = []
    i = 0
    n = len(word)
    while i < n:
        if i + 1 < n and word[i] == left and word[i + 1] == right:
            out.append(new_id)
            i += 2
        else:
            out.append(word[i])
            i += 1
    return tuple(out)


def train_bpe_ranks(
    pretoken_counts: Mapping[bytes, int],
    n_ranks: int,
    progress: Callable[[int, int], None] | None = None,
) -> dict[bytes, int]:
    """Learn a byte-level rank table with ``n_ranks`` tokens (256 bytes + learned merges; at
    least 256, which :func:`customgpt.tokenizer.train_bpe` checks).

    Greedy BPE: repeatedly merge the most frequent adjacent pair of tokens, counting over
    distinct pre-tokens weighted by how often they occur. Ties go to the pair whose tokens
    were learned earliest (smallest left rank, then smallest right rank), so training is
    deterministic.

    Pair counts are updated incrementally (a merge revisits only the pre-tokens holding the
    pair) and a lazy heap finds the best pair. Single bytes get ranks equal to their value.
    A merge that spells an existing token reuses it; training goes on until ``n_ranks``
    distinct tokens exist.

    Raises:
        DataError: the text has too few distinct adjacent pairs to learn that many tokens.
    """
    vocab: list[bytes] = [bytes([b]) for b in range(256)]  # id -> bytes
    ids: dict[bytes, int] = {tok: i for i, tok in enumerate(vocab)}  # bytes -> id

    # Distinct pre-tokens as tuples of token ids, with their frequency. Sorted so that the
    # iteration order (and hence everything below) does not depend on input order.
    items = sorted(pretoken_counts.items())
    words: list[tuple[int, ...]] = [tuple(piece) for piece, _ in items]
    freqs: list[int] = [n for _, n in items]

    pair_counts: dict[tuple[int, int], int] = {}
    where: dict[tuple[int, int], set[int]] = {}
    for w, (word, freq) in enumerate(zip(words, freqs)):
        for pair in zip(word, word[1:]):
            pair_counts[pair] = pair_counts.get(pair, 0) + freq
            where.setdefault(pair, set()).add(w)

    # Max-heap by count via negation; ties pop the smallest (left, right) ids first.
    # Invariant: every pair in `pair_counts` has a heap entry with a count >= its current
    # count. Increases push a new entry; decreases push nothing, and an outdated entry is
    # re-pushed with the current count when it reaches the top. So the popped entry that
    # matches its pair's count is the true maximum, and the heap stays small.
    heap = [(-count, pair[0], pair[1]) for pair, count in pair_counts.items()]
    heapq.heapify(heap)

    while len(vocab) < n_ranks:
        while heap:
            neg_count, left, right = heapq.heappop(heap)
            current = pair_counts.get((left, right))
            if current == -neg_count:
                break
            if current is not None:  # count went down since this entry was pushed
                heapq.heappush(heap, (-current, left, right))
        else:
            raise DataError(
                f"the training text only supports a vocabulary of {len(vocab)} tokens "
                f"(before special tokens); asked for {n_ranks}: use more text or a smaller vocab size"
            )
        merged = vocab[left] + vocab[right]
        new_id = ids.get(merged)
        if new_id is None:
            new_id = len(vocab)
            vocab.append(merged)
            ids[merged] = new_id
            if progress is not None:
                progress(len(vocab) - 256, n_ranks - 256)

        # Rewrite every pre-token containing the pair and collect the count differences:
        # each pre-token loses its old pairs and gains its new ones, times its frequency.
        # (After a left-to-right merge the pair itself cannot occur in the word any more.)
        deltas: dict[tuple[int, int], int] = {}
        for w in where.pop((left, right), ()):
            word = words[w]
            new_word = _merge_word(word, left, right, new_id)
            if len(new_word) == len(word):
                continue  # stale entry: an earlier merge already consumed the pair here
            words[w] = new_word
            freq = freqs[w]
            for pair in zip(word, word[1:]):
                deltas[pair] = deltas.get(pair, 0) - freq
            for pair in zip(new_word, new_word[1:]):
                deltas[pair] = deltas.get(pair, 0) + freq
                # Pairs without the new token were already in the word (and in `where`).
                if new_id in pair:
                    where.setdefault(pair, set()).add(w)
        for pair, delta in deltas.items():
            count = pair_counts.get(pair, 0) + delta
            if count > 0:
                pair_counts[pair] = count
                if delta > 0:
                    heapq.heappush(heap, (-count, pair[0], pair[1]))
            else:
                pair_counts.pop(pair, None)
    return {tok: i for i, tok in enumerate(vocab)}


# --------------------------------------------------------------------------- GPT-2's vocab.json / merges.txt


def to_hf_vocab_and_merges(
    ranks: Mapping[bytes, int], special_tokens: Mapping[str, int] | None = None
) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Derive GPT-2's ``vocab.json`` and ``merges.txt`` contents from a rank table.

    ``vocab`` maps each token, written with :func:`bytes_to_unicode`, to its id; special
    tokens are added verbatim. ``merges`` lists one ``(left, right)`` pair per multi-byte
    token, in rank order.

    Recovering a token's merge: run BPE on the token's own bytes allowing only tokens of
    lower rank. Because merges were learned in rank order, this rebuilds the token up to
    its final step, leaving exactly the two parts that its merge joins.

    Raises:
        DataError: a multi-byte token cannot be built from two lower-rank tokens.
    """
    byte_encoder = bytes_to_unicode()

    def to_str(token: bytes) -> str:
        return "".join(byte_encoder[b] for b in token)

    vocab = {to_str(token): rank for token, rank in ranks.items()}
    merges: list[tuple[str, str]] = []
    for token, rank in sorted(ranks.items(), key=lambda item: item[1]):
        if len(token) == 1:
            continue
        parts = bpe_merge(token, ranks, max_rank=rank)
        if len(parts) != 2:
            raise DataError(
                f"token {token!r} (rank {rank}) is not the merge of two lower-rank tokens "
                f"(BPE below its rank leaves {len(parts)} parts), so it has no merges.txt line"
            )
        merges.append((to_str(parts[0]), to_str(parts[1])))
    for text, token_id in (special_tokens or {}).items():
        vocab[text] = token_id
    return vocab, merges
