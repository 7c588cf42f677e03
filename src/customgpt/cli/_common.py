"""Glue shared by the CLI commands: the model, ``--device`` and ``--dtype`` options (resolved by
:mod:`customgpt.device`) and the output-folder check. Nothing heavy is imported here."""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from pathlib import Path

from customgpt.errors import CustomGPTError


def add_device_argument(parser: argparse.ArgumentParser, default: str = "auto") -> None:
    parser.add_argument(
        "--device",
        default=default,
        help="where to run: auto (CUDA, else Apple MPS, else CPU), cpu, cuda, cuda:N or mps "
        "(default: %(default)s)",
    )


def add_dtype_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dtype",
        default="auto",
        help="weight dtype: auto (as stored), float32, bfloat16 or float16 (default: %(default)s)",
    )


def add_model_arguments(parser: argparse.ArgumentParser, *, no_cache: bool = False) -> None:
    """``--model``, ``--config``, ``--device``, ``--dtype`` (what
    :func:`customgpt.cli.generate.load_for_generation` reads) and, with ``no_cache``, ``--no-cache``."""
    parser.add_argument(
        "--model", required=True, metavar="MODEL",
        help="preset name (random weights), checkpoint folder, Hugging Face folder, weights file or hub id",
    )
    parser.add_argument("--config", default=None, help="config (preset name) for a lone weights file")
    add_device_argument(parser)
    add_dtype_argument(parser)
    if no_cache:
        parser.add_argument(
            "--no-cache", dest="use_cache", action="store_false",
            help="run the whole window every step instead of using the KV cache (slow; for checking)",
        )


def check_output_folder(out: Path, inputs: Iterable[Path], *, force: bool, what: str = "model") -> None:
    """Refuse an output that is a file, already holds a model (``config.json``) without
    ``--force``, or is the folder of one of ``inputs`` (never overwritten, even with ``--force``)."""
    if out.exists() and not out.is_dir():
        raise CustomGPTError(f"{out} exists and is not a folder")
    if (out / "config.json").exists() and not force:
        raise CustomGPTError(f"{out} already holds a model; pass --force to overwrite it")
    if out.is_dir() and any(p.is_dir() and p.resolve() == out.resolve() for p in inputs):
        raise CustomGPTError(f"{out} holds the {what}: choose another destination (an input is never overwritten)")
