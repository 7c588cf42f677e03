"""``customgpt generate``: continue a prompt, streaming the text to the terminal.

    customgpt generate --model runs/sms/final --prompt "Once upon a time" --max-new-tokens 64
    customgpt generate --model gpt2 --prompt "Hello" --temperature 0.8 --top-k 50 --seed 1
    customgpt generate --model ft/ --prompt-style alpaca --prompt "Name three colours." --stop "###"
    customgpt generate --model cpu-tiny --prompt "Hi" --json     # one JSON object, no streaming
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any

from customgpt.cli._common import add_model_arguments
from customgpt.io import decode_utf8_strict, read_text_strict
from customgpt.prompts import PROMPT_STYLES

if TYPE_CHECKING:
    from customgpt.generate import SamplingParams
    from customgpt.model import GPT
    from customgpt.tokenizer import Tokenizer

def add_sampling_arguments(parser: argparse.ArgumentParser, *, max_new_tokens: int = 128) -> None:
    """The options that build :class:`~customgpt.generate.SamplingParams` (validated there)."""
    g = parser.add_argument_group("sampling")
    g.add_argument("--max-new-tokens", type=int, default=max_new_tokens, help="most tokens to generate (default: %(default)s)")
    g.add_argument("--temperature", type=float, default=1.0, help="0 = greedy (default: %(default)s)")
    g.add_argument("--top-k", type=int, default=0, help="keep the k most likely tokens; 0 = off (default)")
    g.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass in (0, 1]; 1 = off (default)")
    g.add_argument("--min-p", type=float, default=0.0, help="drop tokens below min-p x the top probability; 0 = off")
    g.add_argument("--repetition-penalty", type=float, default=1.0, help="> 1 discourages repeats; 1 = off")
    g.add_argument("--presence-penalty", type=float, default=0.0, help="subtracted from tokens already in the output")
    g.add_argument("--frequency-penalty", type=float, default=0.0, help="subtracted per occurrence in the output")
    g.add_argument(
        "--stop", action="append", default=[], metavar="TEXT",
        help="stop before TEXT (repeatable; \\n and \\t mean newline and tab)",
    )
    g.add_argument(
        "--no-stop-at-eot", dest="stop_at_eot", action="store_false",
        help="keep going past the <|endoftext|> token",
    )
    g.add_argument("--seed", type=int, default=None, help="random seed (also seeds a preset's random weights)")


def unescape(text: str) -> str:
    """``\\n`` and ``\\t`` typed on a command line become a newline and a tab (``\\\\`` a backslash)."""
    return re.sub(r"\\([nt\\])", lambda m: {"n": "\n", "t": "\t", "\\": "\\"}[m.group(1)], text)


def sampling_params_from_args(args: argparse.Namespace, extra_stop: tuple[str, ...] = ()) -> SamplingParams:
    """The options of :func:`add_sampling_arguments` (named as the fields) as parameters."""
    from customgpt.generate import SamplingParams

    options = {f.name: getattr(args, f.name) for f in dataclasses.fields(SamplingParams) if f.name != "stop"}
    stop = tuple(dict.fromkeys([*(unescape(s) for s in args.stop), *extra_stop]))
    return SamplingParams(**options, stop=stop)


def load_for_generation(args: argparse.Namespace) -> tuple[GPT, Tokenizer]:
    """Load the model (warning when its weights are random) and the GPT-2 tokenizer."""
    from customgpt.checkpoints import load_model, resolve_model_spec
    from customgpt.device import resolve_device, resolve_dtype
    from customgpt.tokenizer import get_tokenizer

    device, dtype = resolve_device(args.device), resolve_dtype(args.dtype)
    source = resolve_model_spec(args.model, config=args.config)
    if source.kind == "preset":
        print(
            f"warning: {args.model!r} is a preset: its weights are random and untrained, so the text "
            "will be gibberish (give a checkpoint folder or a hub id for a trained model)",
            file=sys.stderr,
        )
    seed = 0 if args.seed is None else args.seed
    model = load_model(args.model, device=device, dtype=dtype, config=args.config, seed=seed)
    return model, get_tokenizer()


def build_parser(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser, no_cache=True)
    parser.add_argument(
        "--prompt", required=True,
        help="the prompt (UTF-8); '-' reads it from standard input. Without --prompt-style the text "
        "<|endoftext|> in it is GPT-2's document separator; with a style it is plain text",
    )
    parser.add_argument(
        "--prompt-style", choices=PROMPT_STYLES, default=None,
        help="wrap the prompt as an instruction in this template (and stop at its markers)",
    )
    parser.add_argument("--input", default=None, help="optional input for the instruction (with --prompt-style)")
    add_sampling_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object (text, counts, finish reason, speed)")


def write_stream(stream: Any) -> bool:
    """Write a text stream to standard output piece by piece, then a newline (a character the
    terminal cannot show is replaced, never fatal); Ctrl-C closes the stream (the generation
    stops) instead of ending the program. Returns True when interrupted."""
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(errors="replace")
    interrupted = False
    try:
        for piece in stream:
            print(piece, end="", flush=True)
    except KeyboardInterrupt:
        stream.close()
        interrupted = True
    print(flush=True)
    return interrupted


def context_full_notice(model: GPT) -> Callable[[], None]:
    """What to call when prompt + output outgrow the window: a note on standard error."""
    note = f"\n[context full ({model.config.context_length} tokens): cropping from the left]"
    return partial(print, note, file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    from customgpt.errors import ConfigError
    from customgpt.generate import stream_text
    from customgpt.prompts import get_prompt_style

    style = get_prompt_style(args.prompt_style) if args.prompt_style else None
    if args.input is not None and style is None:
        raise ConfigError("--input needs --prompt-style (it is the instruction's input section)")
    params = sampling_params_from_args(args, style.stop_strings if style else ())  # before reading stdin
    prompt = read_text_strict("-") if args.prompt == "-" else decode_utf8_strict(args.prompt, "--prompt")
    if style is not None:
        prompt = style.format_instruction(prompt, decode_utf8_strict(args.input, "--input") if args.input else args.input)
    model, tokenizer = load_for_generation(args)
    # A user's text inside a prompt template is plain text; a raw prompt keeps GPT-2's
    # convention that the <|endoftext|> marker separates documents.
    stream = stream_text(
        model, tokenizer, prompt, params, use_cache=args.use_cache,
        on_context_full=None if args.json else context_full_notice(model),
        allowed_special="none" if style is not None else {tokenizer.eot_text},
    )
    if args.json:
        result = dataclasses.asdict(stream.collect())
        print(json.dumps({"model": args.model, **result}, indent=2, ensure_ascii=False))
        return 0
    write_stream(stream)
    result = stream.result
    assert result is not None
    print(
        f"[{result.completion_tokens} tokens, {result.tokens_per_second:.1f} tokens/s, "
        f"finish: {result.finish_reason}]",
        file=sys.stderr,
    )
    return 130 if result.finish_reason == "interrupted" else 0
