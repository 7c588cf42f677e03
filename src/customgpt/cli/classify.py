"""``customgpt classify``: label texts with a classifier trained by ``customgpt finetune classify``.

    customgpt classify --model runs/spam-small/best "You won a FREE prize! Call now"
    customgpt classify --model runs/spam-small/best --file messages.txt     # one text per line

Prints one line per text: ``LABEL<TAB>PROBABILITY<TAB>TEXT``.
"""

from __future__ import annotations

import argparse

from customgpt.cli._common import add_device_argument


def build_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("texts", nargs="*", metavar="TEXT", help="texts to classify")
    parser.add_argument("--model", "-m", required=True, help="a classifier folder (a run's best/)")
    parser.add_argument("--file", "-f", help="classify every non-empty line of this UTF-8 file ('-': stdin)")
    parser.add_argument("--batch-size", type=int, default=32, help="texts per forward pass (default: %(default)s)")
    add_device_argument(parser, default="cpu")


def run(args: argparse.Namespace) -> int:
    from customgpt.classifier import load_classifier, predict_texts
    from customgpt.device import resolve_device
    from customgpt.errors import CustomGPTError
    from customgpt.io import read_text_strict
    from customgpt.tokenizer import get_tokenizer

    texts = list(args.texts)
    if args.file:
        texts += [line for line in read_text_strict(args.file).splitlines() if line.strip()]
    if not texts:
        raise CustomGPTError("nothing to classify: give TEXT arguments or --file")
    if args.batch_size < 1:
        raise CustomGPTError(f"--batch-size must be >= 1, got {args.batch_size}")
    model, info = load_classifier(args.model, device=resolve_device(args.device))
    probs = predict_texts(model, texts, get_tokenizer().encode, max_length=info["max_length"],
                          batch_size=args.batch_size)
    labels = info["labels"]
    for text, p in zip(texts, probs):
        k = int(p.argmax())
        print(f"{labels[k]}\t{float(p[k]):.4f}\t{text}")
    return 0
