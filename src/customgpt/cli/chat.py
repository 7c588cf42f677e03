"""``customgpt chat``: talk to an instruction-tuned model on the terminal.

    customgpt chat --model runs/alpaca/final --prompt-style alpaca --temperature 0.7

Type a message and press Enter; the reply streams back. The history is kept within the
model's context window (the oldest turns are dropped first). Commands: ``/reset`` forgets the
history, ``/exit`` (or end of input, Ctrl-D) quits. Ctrl-C during a reply stops that reply
and returns to the prompt; the part already shown stays in the history.

Messages are plain text: ``<|endoftext|>`` typed in one is text, never the control token; a
line that is not UTF-8 is reported (with its byte offset) and skipped. Replies go to standard
output, everything else (banner, notices) to standard error, so the chat can be scripted:
``printf 'Hi\\n/exit\\n' | customgpt chat --model M``.
"""

from __future__ import annotations

import argparse
import sys

from customgpt.cli._common import add_model_arguments
from customgpt.cli.generate import (
    add_sampling_arguments,
    context_full_notice,
    load_for_generation,
    sampling_params_from_args,
    write_stream,
)
from customgpt.io import decode_utf8_strict
from customgpt.prompts import PROMPT_STYLES

HELP = "commands: /reset clears the history, /exit quits (or Ctrl-D); Ctrl-C stops a reply"


def build_parser(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser, no_cache=True)
    parser.add_argument(
        "--prompt-style", choices=PROMPT_STYLES, default=None,
        help="the chat template the model was fine-tuned with (default: the one its folder records, else alpaca)",
    )
    parser.add_argument("--system", default=None, help="a system message put before the conversation")
    add_sampling_arguments(parser, max_new_tokens=256)


def run(args: argparse.Namespace) -> int:
    from customgpt.errors import DataError
    from customgpt.generate import ChatSession
    from customgpt.prompts import style_for_model

    params = sampling_params_from_args(args)
    model, tokenizer = load_for_generation(args)
    style = style_for_model(args.prompt_style, args.model, "alpaca")
    session = ChatSession(model, tokenizer, style, params, system=args.system, use_cache=args.use_cache)
    interactive = sys.stdin.isatty()
    if hasattr(sys.stdin, "reconfigure"):
        sys.stdin.reconfigure(errors="surrogateescape")  # invalid UTF-8 is reported per line
    err = sys.stderr
    print(f"chat with {args.model} (prompt style {session.style.name}); {HELP}", file=err)

    number = 0
    while True:
        try:
            line = input("> " if interactive else "")
        except EOFError:
            break
        except KeyboardInterrupt:
            print("\n(use /exit or Ctrl-D to quit)", file=err)
            continue
        number += 1
        try:
            line = decode_utf8_strict(line, f"standard input, line {number}")
        except DataError as exc:
            print(f"error: {exc} (message skipped)", file=err, flush=True)
            continue
        text = line.strip()
        if not text:
            continue
        if text in ("/exit", "/quit"):
            break
        if text == "/reset":
            session.reset()
            print("[history cleared]", file=err)
            continue
        if text in ("/help", "/?"):
            print(HELP, file=err)
            continue
        stream = session.send(line, on_context_full=context_full_notice(model))
        if write_stream(stream):
            print("[reply interrupted]", file=err, flush=True)
    return 0
