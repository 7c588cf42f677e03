"""GPT-2's byte-level BPE tokenizer, fully offline, with two interchangeable engines:
``tiktoken`` (:class:`TiktokenTokenizer`: Rust, fast, the default) and ``bpe``
(:class:`BPETokenizer`: the same algorithm written out in Python, which can also train new
vocabularies with :func:`train_bpe`). Both give the same ids (tested on every text of the
shared datasets) from GPT-2's vendored rank table (:func:`gpt2_ranks`); ``<|endoftext|>`` is
id 50,256, for 50,257 ids in all.

    >>> tok = get_tokenizer()
    >>> tok.encode("Hello, world")
    [15496, 11, 995]
    >>> tok.decode([15496, 11, 995])
    'Hello, world'

Special tokens (``allowed_special`` of :meth:`Tokenizer.encode`):

* a set of names (default ``{"<|endoftext|>"}``): those strings in the text become their
  special ids; names the tokenizer does not define are ignored (as in tiktoken);
* ``"all"``: every special token of the tokenizer;
* ``"none"``: no special ids at all; ``"<|endoftext|>"`` in the text is encoded as the
  ordinary characters it is made of (use this for untrusted user text).

Unlike tiktoken, disallowed special text never raises: it is simply treated as text.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import hashlib
import json
import operator
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from functools import cache, cached_property, lru_cache
from importlib import resources
from pathlib import Path
from typing import Literal

from customgpt import bpe
from customgpt.constants import EOT_ID, EOT_TEXT
from customgpt.errors import ConfigError, DataError
from customgpt.io import atomic_write_bytes, read_text_strict

#: The engines :func:`get_tokenizer` accepts.
ENGINES = ("tiktoken", "bpe")

#: sha256 of ``assets/gpt2.tiktoken``: the same file tiktoken's ``r50k_base`` expects.
GPT2_TIKTOKEN_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"

#: GPT-2's pattern in the equivalent form tiktoken uses for ``r50k_base`` (possessive
#: quantifiers, so the Rust regex does not backtrack); the tiktoken engine runs this one.
R50K_PAT_STR = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""

AllowedSpecial = AbstractSet[str] | Literal["all", "none"]
_DEFAULT_ALLOWED: AbstractSet[str] = frozenset({EOT_TEXT})


# --------------------------------------------------------------------------- Rank files (tiktoken's text format)


def load_tiktoken_ranks(path: str | os.PathLike[str], expected_sha256: str | None = None) -> dict[bytes, int]:
    """Read a rank table in tiktoken's text format (``base64(token) rank`` per line).

    The ranks must be 0..n-1 with no token or rank repeated, and every single byte must be
    a token (so any text can be encoded).

    Raises:
        DataError: the file's hash differs from ``expected_sha256`` or a line is malformed
            (the message names the file and line).
    """
    path = Path(path)
    data = path.read_bytes()
    if expected_sha256 is not None:
        digest = hashlib.sha256(data).hexdigest()
        if digest != expected_sha256:
            raise DataError(f"{path}: sha256 is {digest}, expected {expected_sha256} (corrupt or wrong file)")
    ranks: dict[bytes, int] = {}
    for lineno, line in enumerate(data.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            token_b64, rank_text = line.split()
            token, rank = base64.b64decode(token_b64, validate=True), int(rank_text)
        except (binascii.Error, ValueError) as exc:
            raise DataError(f"{path}:{lineno}: expected 'base64-token rank', got {line[:80]!r} ({exc})") from None
        if not token or token in ranks:
            raise DataError(f"{path}:{lineno}: token {token!r} is empty or repeated")
        ranks[token] = rank
    missing = set(range(len(ranks))) - set(ranks.values())
    if missing:  # n distinct tokens need ranks 0..n-1: a missing one also means a repeat or a stray
        raise DataError(f"{path}: ranks must be 0..{len(ranks) - 1} without gaps or repeats; {min(missing)} is missing")
    missing_bytes = [b for b in range(256) if bytes([b]) not in ranks]
    if missing_bytes:
        raise DataError(f"{path}: not a byte-level vocabulary: byte {missing_bytes[0]} has no token")
    return ranks


def save_tiktoken_ranks(ranks: Mapping[bytes, int], path: str | os.PathLike[str]) -> Path:
    """Write a rank table in tiktoken's text format (atomically); returns the path."""
    lines = [
        base64.b64encode(token) + b" " + str(rank).encode()
        for token, rank in sorted(ranks.items(), key=lambda item: item[1])
    ]
    path = Path(path)
    atomic_write_bytes(path, b"\n".join(lines) + b"\n")
    return path


@lru_cache(maxsize=1)
def gpt2_ranks() -> dict[bytes, int]:
    """GPT-2's 50,256 merge ranks from the vendored asset (hash checked once per process).

    The dict is shared by every GPT-2 tokenizer: treat it as read-only.
    """
    asset = resources.files("customgpt") / "assets" / "gpt2.tiktoken"
    with resources.as_file(asset) as path:
        return load_tiktoken_ranks(path, expected_sha256=GPT2_TIKTOKEN_SHA256)


# --------------------------------------------------------------------------- The tokenizer interface


class Tokenizer(ABC):
    """What every tokenizer offers: text <-> ids, special tokens, the rank table.

    Attributes:
        name: a short name (``"gpt2"`` for GPT-2's vocabulary).
        mergeable_ranks: token bytes -> id for the ordinary (BPE) tokens.
        special_tokens: special token text -> id; ids follow the ordinary ones.
    """

    def __init__(self, mergeable_ranks: dict[bytes, int], special_tokens: Mapping[str, int], name: str):
        self.name = name
        self.mergeable_ranks = mergeable_ranks
        self.special_tokens = dict(special_tokens)
        # id -> bytes, for decoding (ranks are 0..n-1, specials come after).
        self._id_to_bytes: dict[int, bytes] = {rank: token for token, rank in mergeable_ranks.items()}
        for text, token_id in self.special_tokens.items():
            if token_id < len(mergeable_ranks):
                raise ConfigError(f"special token {text!r} has id {token_id}, which an ordinary token uses")
            self._id_to_bytes[token_id] = text.encode("utf-8")
        #: Number of ids (GPT-2: 50,257): the model's embedding must have this many rows.
        self.vocab_size = max(self._id_to_bytes) + 1

    #: The end-of-text marker, ``<|endoftext|>``.
    eot_text = EOT_TEXT

    @property
    def eot_id(self) -> int:
        """Id of ``<|endoftext|>`` (GPT-2: 50,256)."""
        try:
            return self.special_tokens[EOT_TEXT]
        except KeyError:
            raise ConfigError(f"tokenizer {self.name!r} has no {EOT_TEXT} special token") from None

    def _resolve_allowed(self, allowed_special: AllowedSpecial) -> frozenset[str]:
        """Turn an ``allowed_special`` argument into the set of special strings to match."""
        if allowed_special == "all":
            return frozenset(self.special_tokens)
        if allowed_special == "none":
            return frozenset()
        if isinstance(allowed_special, str):
            raise ConfigError(
                f"allowed_special must be 'all', 'none' or a set of token strings, got {allowed_special!r}"
            )
        return frozenset(s for s in allowed_special if s in self.special_tokens)

    # -- encoding ----------------------------------------------------------------------

    @abstractmethod
    def encode(self, text: str, allowed_special: AllowedSpecial = _DEFAULT_ALLOWED) -> list[int]:
        """Token ids of ``text``; see the module docstring for ``allowed_special``."""

    # -- decoding ----------------------------------------------------------------------

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes of one token (a special token's bytes are its UTF-8 text); numpy and 0-d
        torch integers are accepted (``__index__``), an id outside the vocabulary is a
        :class:`DataError`."""
        try:
            return self._id_to_bytes[operator.index(token_id)]
        except (KeyError, TypeError):
            raise DataError(f"token id {token_id!r} is not in the vocabulary (ids are 0..{self.vocab_size - 1})") from None

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """The concatenated bytes of ``ids`` (may end inside a multi-byte character)."""
        table = self._id_to_bytes
        ids = ids if isinstance(ids, (list, tuple)) else list(ids)
        try:
            return b"".join([table[i] for i in ids])  # the fast path: plain ints
        except (KeyError, TypeError):
            return b"".join([self.token_bytes(i) for i in ids])  # converts, or names the bad id

    def decode(self, ids: Iterable[int], errors: str = "replace") -> str:
        """Text of ``ids``; invalid UTF-8 (e.g. a cut-off character) becomes U+FFFD."""
        return self.decode_bytes(ids).decode("utf-8", errors=errors)

    @cached_property
    def hf_vocab_and_merges(self) -> tuple[dict[str, int], list[tuple[str, str]]]:
        """This vocabulary as GPT-2's ``vocab.json`` dict and ``merges.txt`` pairs (see
        :func:`customgpt.bpe.to_hf_vocab_and_merges`), derived once (GPT-2's take a second) and
        shared by every caller: treat them as read-only."""
        return bpe.to_hf_vocab_and_merges(self.mergeable_ranks, self.special_tokens)

    def incremental_decoder(self) -> IncrementalDecoder:
        """A fresh :class:`IncrementalDecoder` over this tokenizer."""
        return IncrementalDecoder(self)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, vocab_size={self.vocab_size})"


class IncrementalDecoder:
    """Turn a stream of token ids into text, one piece at a time, for streaming output.

    GPT-2 tokens are bytes, and one character can be split over several tokens (most emoji
    and CJK characters are). :meth:`feed` returns only complete characters and holds back
    the bytes of an unfinished one until the tokens that complete it arrive, so the
    concatenated pieces (plus :meth:`flush`) always equal ``tokenizer.decode(all_ids)``.

        >>> dec = get_tokenizer().incremental_decoder()
        >>> [dec.feed(i) for i in get_tokenizer().encode("héllo 🎉")] + [dec.flush()]
        ['h', 'é', 'llo', ' ', '', '🎉', '']
    """

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        # Python's incremental UTF-8 decoder keeps an incomplete trailing sequence buffered
        # and, with errors="replace", replaces bad bytes exactly as a one-shot decode would.
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, token_id: int) -> str:
        """Add one token; return the text it completes (possibly ``""``)."""
        return self._decoder.decode(self.tokenizer.token_bytes(token_id))

    def flush(self) -> str:
        """End of stream: return what is held back (an unfinished character becomes U+FFFD)."""
        text = self._decoder.decode(b"", final=True)
        self._decoder.reset()
        return text


# --------------------------------------------------------------------------- Engine 1: tiktoken


class TiktokenTokenizer(Tokenizer):
    """GPT-2 BPE through ``tiktoken.Encoding`` (Rust), built offline from a rank table."""

    def __init__(self, mergeable_ranks: dict[bytes, int], special_tokens: Mapping[str, int], name: str = "gpt2"):
        import tiktoken  # imported here so `import customgpt.tokenizer` stays light

        super().__init__(mergeable_ranks, special_tokens, name)
        self.encoding = tiktoken.Encoding(
            name=name,
            pat_str=R50K_PAT_STR,
            mergeable_ranks=mergeable_ranks,
            special_tokens=self.special_tokens,
            explicit_n_vocab=self.vocab_size,
        )

    def encode(self, text: str, allowed_special: AllowedSpecial = _DEFAULT_ALLOWED) -> list[int]:
        # disallowed_special=() : special text outside `allowed` is plain text, never an error.
        return self.encoding.encode(
            text, allowed_special=self._resolve_allowed(allowed_special), disallowed_special=()
        )


# --------------------------------------------------------------------------- Engine 2: BPE written out in Python


class BPETokenizer(Tokenizer):
    """Byte-level BPE in plain Python: regex pre-tokenization, then rank-ordered merges.

    Encoding ``text``:

    1. cut out the allowed special tokens (they map straight to their ids);
    2. split the rest into pre-tokens with GPT-2's regex;
    3. UTF-8 encode each pre-token and merge its bytes by rank (:func:`customgpt.bpe.bpe_merge`);
       the ids of a pre-token are cached (LRU), since words repeat a lot in real text.

    ``mergeable_ranks`` must hold all 256 single bytes (:func:`load_tiktoken_ranks` checks
    that); ``cache_size`` is how many distinct pre-tokens to remember.
    """

    def __init__(
        self,
        mergeable_ranks: dict[bytes, int],
        special_tokens: Mapping[str, int],
        name: str = "bpe",
        cache_size: int = 1 << 16,
    ):
        super().__init__(mergeable_ranks, special_tokens, name)
        # functools' LRU cache: bounded, C-implemented and thread-safe.
        self._encode_piece = lru_cache(maxsize=cache_size)(self._bpe_piece)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Save the ranks in tiktoken's text format (atomically); special tokens are not in the
        file: pass the same ``special_tokens`` to :func:`load_bpe`."""
        return save_tiktoken_ranks(self.mergeable_ranks, path)

    def _bpe_piece(self, piece: str) -> tuple[int, ...]:
        """Ids of one pre-token (uncached; :attr:`_encode_piece` is the cached version)."""
        ranks = self.mergeable_ranks
        return tuple(ranks[part] for part in bpe.bpe_merge(piece.encode("utf-8"), ranks))

    def encode_ordinary(self, text: str) -> list[int]:
        """Ids of ``text`` with no special-token handling at all."""
        out: list[int] = []
        encode_piece = self._encode_piece
        for piece in bpe.GPT2_PATTERN.findall(text):
            out.extend(encode_piece(piece))
        return out

    def encode(self, text: str, allowed_special: AllowedSpecial = _DEFAULT_ALLOWED) -> list[int]:
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            # Lone surrogates cannot be UTF-8 encoded: like tiktoken, re-read the text via
            # UTF-16 so valid surrogate pairs join and lone ones become U+FFFD.
            text = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
        allowed = self._resolve_allowed(allowed_special)
        if not allowed:
            return self.encode_ordinary(text)
        out: list[int] = []
        start = 0
        for match in bpe.special_pattern(allowed).finditer(text):
            out.extend(self.encode_ordinary(text[start : match.start()]))
            out.append(self.special_tokens[match.group()])
            start = match.end()
        out.extend(self.encode_ordinary(text[start:]))
        return out


# --------------------------------------------------------------------------- Entry points


def get_tokenizer(engine: str = "tiktoken") -> Tokenizer:
    """GPT-2's tokenizer (50,257 ids), one shared instance per engine; needs no network.

    Args:
        engine: ``"tiktoken"`` (Rust, fast) or ``"bpe"`` (the Python implementation).
    """
    if engine not in ENGINES:
        raise ConfigError(f"unknown tokenizer engine {engine!r}; choose one of {', '.join(ENGINES)}")
    return _gpt2_tokenizer(engine)


@cache  # keyed on the engine alone: get_tokenizer() and get_tokenizer("tiktoken") share one
def _gpt2_tokenizer(engine: str) -> Tokenizer:
    cls = TiktokenTokenizer if engine == "tiktoken" else BPETokenizer
    return cls(gpt2_ranks(), {EOT_TEXT: EOT_ID}, name="gpt2")


def load_bpe(path: str | os.PathLike[str], special_tokens: Sequence[str] = (EOT_TEXT,)) -> BPETokenizer:
    """Load a vocabulary saved by :func:`train_bpe` / :meth:`BPETokenizer.save`;
    ``special_tokens`` get the ids after its ranks, in order."""
    ranks = load_tiktoken_ranks(path)
    return BPETokenizer(ranks, {text: len(ranks) + i for i, text in enumerate(special_tokens)}, name=Path(path).stem)


def train_bpe(
    texts_or_file: os.PathLike[str] | Iterable[str],
    vocab_size: int,
    special_tokens: Sequence[str] = (EOT_TEXT,),
    progress: Callable[[int, int], None] | None = None,
) -> BPETokenizer:
    """Train a byte-level BPE vocabulary with GPT-2's pre-tokenization.

    Args:
        texts_or_file: a path (``pathlib.Path``) to a UTF-8 text file, or an iterable of texts.
        vocab_size: total ids, special tokens included (so ``vocab_size - len(special_tokens)``
            BPE tokens: 256 bytes plus learned merges).
        special_tokens: strings that get the last ids; they are cut out of the training text.
        progress: called as ``progress(merges_done, merges_total)`` after each new token.

    Returns:
        A :class:`BPETokenizer` with exactly ``vocab_size`` ids.

    Raises:
        ConfigError: ``vocab_size`` too small, or repeated special tokens.
        DataError: the text is too small for that many tokens.
    """
    special_tokens = list(special_tokens)
    if len(set(special_tokens)) != len(special_tokens):
        raise ConfigError(f"special_tokens has repeats: {special_tokens}")
    n_ranks = vocab_size - len(special_tokens)
    if n_ranks < 256:
        raise ConfigError(
            f"vocab_size must be at least {256 + len(special_tokens)} "
            f"(256 bytes + {len(special_tokens)} special tokens), got {vocab_size}"
        )
    if isinstance(texts_or_file, str):
        raise ConfigError("train_bpe: pass a pathlib.Path for a file, or a list of texts (a bare str is ambiguous)")
    texts = [read_text_strict(texts_or_file)] if isinstance(texts_or_file, os.PathLike) else texts_or_file
    counts = bpe.count_pretokens(texts, special_tokens)
    ranks = bpe.train_bpe_ranks(counts, n_ranks, progress=progress)
    specials = {text: n_ranks + i for i, text in enumerate(special_tokens)}
    return BPETokenizer(ranks, specials, name=f"bpe-{vocab_size}")


# --------------------------------------------------------------------------- Hugging Face files


def save_hf_tokenizer_files(
    folder: str | os.PathLike[str],
    tokenizer: Tokenizer | None = None,
    model_max_length: int = 1024,
) -> list[Path]:
    """Write ``vocab.json``, ``merges.txt``, ``tokenizer_config.json`` and
    ``special_tokens_map.json`` so ``transformers.GPT2Tokenizer.from_pretrained(folder)``
    (and ``GPT2TokenizerFast``) load this vocabulary and give the same ids as ``tokenizer``.

    Args:
        folder: where to write (created if needed); existing files are replaced atomically.
        tokenizer: any :class:`Tokenizer`; GPT-2's by default.
        model_max_length: the model's context length, recorded for Hugging Face.

    Returns:
        The paths written.
    """
    tokenizer = tokenizer if tokenizer is not None else get_tokenizer("tiktoken")
    vocab, merges = tokenizer.hf_vocab_and_merges
    folder = Path(folder)

    eot = EOT_TEXT if EOT_TEXT in tokenizer.special_tokens else None
    # Without <|endoftext|>, the roles are written as null: left out, Hugging Face would
    # add <|endoftext|> as a new token (its GPT-2 default) and change the vocabulary.
    roles: dict[str, object] = {"bos_token": eot, "eos_token": eot, "unk_token": eot}
    others = [s for s in tokenizer.special_tokens if s != eot]
    if others:
        roles["additional_special_tokens"] = others
    special_map = {k: v for k, v in roles.items() if v is not None}
    config = {
        "add_bos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": {
            str(token_id): {
                "content": text,
                "lstrip": False,
                "normalized": False,
                "rstrip": False,
                "single_word": False,
                "special": True,
            }
            for text, token_id in sorted(tokenizer.special_tokens.items(), key=lambda item: item[1])
        },
        # Decoding must give back the exact text (no " ." -> "." clean-up).
        "clean_up_tokenization_spaces": False,
        "errors": "replace",
        "model_max_length": model_max_length,
        "tokenizer_class": "GPT2Tokenizer",
        **roles,
    }

    files = {
        "vocab.json": json.dumps(vocab, ensure_ascii=False),
        "merges.txt": "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges),
        "tokenizer_config.json": json.dumps(config, ensure_ascii=False, indent=2) + "\n",
        "special_tokens_map.json": json.dumps(special_map, ensure_ascii=False, indent=2) + "\n",
    }
    for name, text in files.items():
        atomic_write_bytes(folder / name, text.encode("utf-8"))
    return [folder / name for name in files]

