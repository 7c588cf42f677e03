"""The ``customgpt`` command line: a table from subcommand to the module that runs it.

Each command module defines ``build_parser(parser)`` and ``run(args) -> int`` and imports
its heavy dependencies inside ``run``, so ``customgpt --help`` stays instant. Option mistakes,
user mistakes (:class:`~customgpt.errors.CustomGPTError`), operating-system errors (``error: cannot write
PATH: No space left on device``) and network failures print one line, ``error: ...``, and
exit 2; a closed output pipe (``| head -1``) ends the command quietly.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from customgpt import __version__

#: subcommand -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "info": ("customgpt.cli.info", "show a model's shapes and parameter count"),
    "convert": ("customgpt.cli.convert", "convert weights between Hugging Face and customgpt formats"),
    "push": ("customgpt.cli.push", "upload an exported Hugging Face folder to the hub"),
    "generate": ("customgpt.cli.generate", "generate text from a prompt (streams to the terminal)"),
    "chat": ("customgpt.cli.chat", "interactive chat with an instruction-tuned model"),
    "serve": ("customgpt.cli.serve", "OpenAI-compatible HTTP server with batched decoding"),
    "pretrain": ("customgpt.cli.pretrain", "next-token pretraining on text files"),
    "finetune": ("customgpt.cli.finetune", "fine-tune a model (classify, instruct, dpo)"),
    "eval": ("customgpt.cli.eval", "evaluate instruction responses: responses, perplexity, rouge, judge"),
    "classify": ("customgpt.cli.classify", "classify text with a fine-tuned classifier"),
    "ui": ("customgpt.cli.ui", "web app: chat, compare two models, classify (Chainlit)"),
    "merge": ("customgpt.cli.merge", "merge LoRA adapters into a full model"),
    "data": ("customgpt.cli.data", "list and fetch the public datasets"),
    "tokenizer": ("customgpt.cli.tokenizer", "encode, decode, or train a BPE vocabulary"),
}


def _usage() -> str:
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
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        return _print(_usage())
    if argv[0] in ("-V", "--version"):
        return _print(f"customgpt {__version__}")
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"error: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    parser = _Parser(prog=f"customgpt {name}", description=COMMANDS[name][1])
    module.build_parser(parser)
    args = parser.parse_args(rest)
    stdout = sys.stdout
    sys.stdout = _NamedStdout(stdout)
    try:
        status = int(module.run(args) or 0)
        sys.stdout.flush()  # a closed pipe or a full disk shows here, not at the interpreter's exit
        return status
    except BrokenPipeError:
        return _closed_pipe()
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        message = _error_message(exc)
        if message is None:
            raise
        if getattr(exc, "filename", None) == "standard output":
            _closed_pipe()  # the interpreter's exit must not fail on it again
        print(f"error: {message}", file=sys.stderr)
        return 2
    finally:
        sys.stdout = stdout


def _print(text: str) -> int:
    """Print ``text`` (the usage or the version) and flush it; a closed pipe ends quietly, a
    failed write (``> /dev/full``) is one line, as in :func:`main`."""
    try:
        print(text)
        sys.stdout.flush()
    except BrokenPipeError:
        return _closed_pipe()
    except OSError as exc:
        _closed_pipe()  # the interpreter's exit must not fail on it again
        print(f"error: cannot write standard output: {exc.strerror}", file=sys.stderr)
        return 2
    return 0


class _Parser(argparse.ArgumentParser):
    """Option errors in one line (``error: ...``, exit 2), like the commands' other errors; a
    command's subcommands (``customgpt eval rouge``) are parsers of this class too."""

    def error(self, message: str) -> NoReturn:
        print(f"error: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(2)


def _closed_pipe() -> int:
    """The reader of standard output closed it (``| head -1``): stop quietly, with status 141
    (as a program killed by SIGPIPE). Standard output is pointed at /dev/null so the
    interpreter's final flush does not fail again."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    return 141


class _NamedStdout:
    """Standard output whose write errors name it (``cannot write standard output: No space
    left on device`` for ``> /dev/full``); everything else is the wrapped stream's."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        return self._named(self._stream.write, text)

    def flush(self) -> None:
        self._named(self._stream.flush)

    @staticmethod
    def _named(call: Any, *args: Any) -> Any:
        try:
            return call(*args)
        except BrokenPipeError:
            raise
        except OSError as exc:
            raise OSError(exc.errno, exc.strerror or str(exc), "standard output") from exc

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def _error_message(exc: Exception) -> str | None:
    """The one line for a user mistake, a network failure or an operating-system error; None
    for anything else (a bug: its traceback is shown)."""
    from customgpt.errors import CustomGPTError
    from customgpt.hub import first_line, is_network_error
    from customgpt.io import os_error_message

    if isinstance(exc, CustomGPTError):
        return str(exc)
    if is_network_error(exc, ("httpx", "httpcore", "requests", "urllib3", "huggingface_hub", "aiohttp")):
        try:  # httpx raises when an error without a request is asked for it
            host = exc.request.url.host  # type: ignore[attr-defined]
        except Exception:
            host = None
        where = f" {host}" if isinstance(host, str) and host else " the server"
        return f"network error: cannot reach{where}: {first_line(exc)} ({type(exc).__name__})"
    if isinstance(exc, OSError):
        return os_error_message(exc)
    return None


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
