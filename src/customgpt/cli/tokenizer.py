"""``customgpt tokenizer``: encode text, decode ids, train a BPE vocabulary.

Usage::

    customgpt tokenizer encode "Hello, world"            # 15496 11 995
    customgpt tokenizer encode - < file.txt --engine bpe
    customgpt tokenizer decode 15496 11 995              # Hello, world
    customgpt tokenizer train corpus.txt --vocab-size 500 --out my.tiktoken [--hf-dir DIR]
    customgpt tokenizer encode "Hello" --vocab my.tiktoken
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from customgpt.constants import EOT_TEXT
from customgpt.errors import CustomGPTError
from customgpt.io import read_text_strict


def _add_special_token(parser: argparse.ArgumentParser, help_: str) -> None:
    parser.add_argument(
        "--special-token", action="append", default=None, metavar="TEXT", help=f"{help_} (default: {EOT_TEXT})"
    )


def _add_vocab_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--engine",
        choices=("tiktoken", "bpe"),
        default="tiktoken",
        help="GPT-2 tokenizer engine: tiktoken (Rust) or bpe (pure Python); same ids (default: %(default)s)",
    )
    parser.add_argument(
        "--vocab",
        metavar="PATH",
        help="use a vocabulary trained with 'customgpt tokenizer train' instead of GPT-2's",
    )
    _add_special_token(parser, "with --vocab: the special tokens it was trained with, in order")


def build_parser(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")

    p_enc = sub.add_parser("encode", help="print the token ids of a text")
    p_enc.add_argument("text", help="the text; '-' reads standard input")
    _add_vocab_options(p_enc)
    p_enc.add_argument(
        "--allowed-special",
        choices=("all", "none"),
        default="all",
        help=f"all: {EOT_TEXT} in the text becomes its special id; none: it is encoded as plain text "
        "(default: %(default)s)",
    )
    p_enc.add_argument("--show", action="store_true", help="print one token per line: id and its text")

    p_dec = sub.add_parser("decode", help="print the text of token ids")
    p_dec.add_argument("ids", nargs="+", metavar="ID", help="token ids, separated by spaces or commas")
    _add_vocab_options(p_dec)

    p_train = sub.add_parser("train", help="train a byte-level BPE vocabulary on a UTF-8 text file")
    p_train.add_argument("file", help="training text (UTF-8)")
    p_train.add_argument(
        "--vocab-size", type=int, required=True, help="total ids, special tokens included (>= 257)"
    )
    p_train.add_argument("--out", required=True, help="where to write the vocabulary (tiktoken text format)")
    _add_special_token(p_train, "special token(s) given the last ids; repeat for several")
    p_train.add_argument(
        "--hf-dir", default=None, help="also write Hugging Face vocab.json/merges.txt/... to this folder"
    )
    p_train.add_argument("--no-progress", action="store_true", help="do not show a progress bar")
    p_train.add_argument(
        "--force", action="store_true", help="replace an existing --out file (and --hf-dir files); never the input"
    )


def _parse_ids(values: list[str]) -> list[int]:
    ids = []
    for value in values:
        for part in value.replace(",", " ").split():
            try:
                ids.append(int(part))
            except ValueError:
                raise CustomGPTError(f"not a token id: {part!r}") from None
    return ids


def run(args: argparse.Namespace) -> int:
    if args.action == "train":
        return _train(args)
    from customgpt.tokenizer import get_tokenizer, load_bpe

    if args.vocab is not None:
        tok = load_bpe(args.vocab, special_tokens=args.special_token or [EOT_TEXT])
    elif args.special_token:
        raise CustomGPTError("--special-token only applies with --vocab (GPT-2's special token is fixed)")
    else:
        tok = get_tokenizer(args.engine)
    if args.action == "encode":
        text = read_text_strict("-") if args.text == "-" else args.text
        ids = tok.encode(text, allowed_special=args.allowed_special)
        if args.show:
            for i in ids:
                # A token can be part of a character (emoji, CJK): show its bytes then.
                raw = tok.token_bytes(i)
                try:
                    shown = repr(raw.decode("utf-8"))
                except UnicodeDecodeError:
                    shown = repr(raw)
                print(f"{i}\t{shown}")
        else:
            print(" ".join(map(str, ids)))
        return 0

    print(tok.decode(_parse_ids(args.ids)))
    return 0


#: The files ``--hf-dir`` receives (see :func:`customgpt.tokenizer.save_hf_tokenizer_files`).
HF_TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json")


def _check_outputs(source: Path, out: Path, hf_dir: Path | None, *, force: bool) -> None:
    """Refuse, before training, to write over the input (even with ``--force``) or over an
    existing output without ``--force``."""
    outputs = [out] + ([hf_dir / name for name in HF_TOKENIZER_FILES] if hf_dir is not None else [])
    for target in outputs:
        if target.exists() and target.samefile(source):
            raise CustomGPTError(f"{target} is the training file: choose another output (the input is never overwritten)")
    if out.is_dir():
        raise CustomGPTError(f"--out {out} is a folder; give a file name such as {out / 'vocab.tiktoken'}")
    if force:
        return
    existing = [p for p in outputs if p.exists()]
    if existing:
        raise CustomGPTError(f"{existing[0]} already exists; pass --force to overwrite it")


def _train(args: argparse.Namespace) -> int:
    import time

    from customgpt.tokenizer import save_hf_tokenizer_files, train_bpe

    path = Path(args.file)
    if not path.is_file():
        raise CustomGPTError(f"training file not found: {path}")
    _check_outputs(path, Path(args.out), None if args.hf_dir is None else Path(args.hf_dir), force=args.force)
    specials = args.special_token or [EOT_TEXT]

    bar = None

    def callback(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:  # created on the first merge, once the arguments have been checked
            from tqdm import tqdm

            bar = tqdm(total=total, unit="merge", file=sys.stderr)
        bar.update(done - bar.n)

    start = time.perf_counter()
    try:
        tok = train_bpe(
            path, args.vocab_size, special_tokens=specials, progress=None if args.no_progress else callback
        )
    finally:
        if bar is not None:
            bar.close()
    seconds = time.perf_counter() - start
    out = tok.save(args.out)
    n_ids = len(tok.encode(read_text_strict(path), allowed_special="all"))
    print(
        f"trained {tok.vocab_size} ids ({len(tok.mergeable_ranks) - 256} merges, "
        f"{len(specials)} special) in {seconds:.2f} s -> {out}"
    )
    print(f"{path.name}: {path.stat().st_size:,} bytes -> {n_ids:,} tokens")
    if specials != [EOT_TEXT]:
        print(f"special tokens (pass them again with --special-token when loading): {', '.join(specials)}")
    if args.hf_dir is not None:
        written = save_hf_tokenizer_files(args.hf_dir, tok)
        print(f"Hugging Face files: {', '.join(str(p) for p in written)}")
    return 0
