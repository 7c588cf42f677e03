"""The pure-Python BPE engine (customgpt.bpe): merge order and its cost on adversarial input."""

from __future__ import annotations

import random
import string
import time

import pytest

from customgpt.bpe import bpe_merge
from customgpt.tokenizer import gpt2_ranks


def _plain_merge(piece: bytes, ranks: dict[bytes, int], max_rank: int | None = None) -> list[bytes]:
    """The rule as stated (quadratic): merge the lowest-ranked adjacent pair, leftmost first."""
    parts = [piece[i : i + 1] for i in range(len(piece))]
    while len(parts) > 1:
        best = None
        for i in range(len(parts) - 1):
            rank = ranks.get(parts[i] + parts[i + 1])
            if rank is None or (max_rank is not None and rank >= max_rank):
                continue
            if best is None or rank < best[0]:
                best = (rank, i)
        if best is None:
            break
        i = best[1]
        parts[i : i + 2] = [parts[i] + parts[i + 1]]
    return parts


@pytest.fixture(scope="module")
def ranks() -> dict[bytes, int]:
    return gpt2_ranks()


def test_heap_merge_equals_the_plain_rule(ranks):
    rng = random.Random(0)
    alphabets = [string.ascii_letters, "ab", "a", " \n\t", string.printable, "éà€🎉中"]
    for _ in range(300):
        alphabet = rng.choice(alphabets)
        piece = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 80))).encode("utf-8")
        max_rank = rng.choice([None, 300, 5000])
        assert bpe_merge(piece, ranks, max_rank) == _plain_merge(piece, ranks, max_rank), piece


def test_ties_merge_leftmost_first():
    ranks = {bytes([b]): b for b in range(256)} | {b"aa": 256, b"aaa": 257}
    assert bpe_merge(b"aaa", ranks) == [b"aaa"]
    assert bpe_merge(b"aaaaa", ranks) == _plain_merge(b"aaaaa", ranks) == [b"aa", b"aaa"]


def test_merging_cost_grows_near_linearly_with_the_pre_token(ranks):
    """One run of letters without spaces, 8x longer: the plain rule costs 64x the time, the
    heap ~8-11x (n log n and the memory hierarchy). Bound: under 16x. Both sizes are past a
    CPU's L2 cache (at 4k letters the whole state fits in it, which alone makes 32k cost
    30x more per letter on a busy 2-core machine, heap or not). Min over repeats."""
    rng = random.Random(0)

    def best_time(n: int, repeats: int = 3) -> float:
        piece = "".join(rng.choice(string.ascii_letters) for _ in range(n)).encode()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            bpe_merge(piece, ranks)
            times.append(time.perf_counter() - start)
        return min(times)

    short, long = best_time(16384), best_time(131072)
    assert long < 16 * short, f"16k letters: {short:.4f} s, 128k letters: {long:.4f} s"
