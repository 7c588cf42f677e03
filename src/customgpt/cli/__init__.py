"""The ``customgpt`` command line: a table from subcommand to the module that runs it.

Each command module defines ``build_parser(parser)`` and ``run(args) -> int`` and imports
its heavy dependencies inside ``run``, so ``customgpt --help`` stays instant. User mistakes
(:class:`~customgpt.errors.CustomGPTError`) print one line, ``error: ...``, and exit 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

#: subcommand -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "info": ("customgpt.cli.info", "show a model's shapes and parameter count"),
    "convert": ("customgpt.cli.convert", "convert weights between Hugging Face and customgpt formats"),
    "push": ("customgpt.cli.push", "upload an exported Hugging Face folder to the hub"),
    "generate": ("customgpt.cli.generate", "generate text from a prompt (streams to the terminal)"),
    "chat": ("customgpt.cli.chat", "interactive chat with an instruction-tuned model"),
    "pretrain": ("customgpt.cli.pretrain", "next-token pretraining on text files"),
    "finetune": ("customgpt.cli.finetune", "fine-tune a model (classify, instruct, dpo)"),
    "eval": ("customgpt.cli.eval", "evaluate instruction responses: responses, perplexity, rouge, judge"),
    "classify": ("customgpt.cli.classify", "classify text with a fine-tuned classifier"),
    "merge": ("customgpt.cli.merge", "merge LoRA adapters into a full model"),
    "data": ("customgpt.cli.data", "list and fetch the public datasets"),
    "tokenizer": ("customgpt.cli.tokenizer", "encode, decode, or train a BPE vocabulary"),
}


def _usage() -> str:
    from customgpt import __version__

    width = max(len(name) for name in COMMANDS)
    lines = [
        f"customgpt {__version__}: GPT-2 from scratch in PyTorch",
        "",
        "usage: customgpt COMMAND [options]   (customgpt COMMAND --help for a command's options)",
        "",
        "commands:",
    ]
    lines += [f"  {name.ljust(width)}  {help_}" for name, (_, help_) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``customgpt`` console script."""
    from customgpt.errors import CustomGPTError

    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if argv[0] in ("-V", "--version"):
        from customgpt import __version__

        print(f"customgpt {__version__}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"error: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    parser = argparse.ArgumentParser(prog=f"customgpt {name}", description=COMMANDS[name][1])
    module.build_parser(parser)
    args = parser.parse_args(rest)
    try:
        return int(module.run(args) or 0)
    except CustomGPTError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
