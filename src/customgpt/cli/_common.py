"""Argparse glue shared by the CLI commands: the ``--device`` and ``--dtype`` options.

The names they take are resolved by :mod:`customgpt.device` (the library's one resolver).
Imported by every command's ``build_parser``, so nothing heavy is imported here.
"""

from __future__ import annotations

import argparse


def add_device_argument(parser: argparse.ArgumentParser, default: str = "auto") -> None:
    """``--device auto|cpu|cuda|mps`` (``cuda:N`` also accepted)."""
    parser.add_argument(
        "--device",
        default=default,
        help="where to run: auto (CUDA, else Apple MPS, else CPU), cpu, cuda, cuda:N or mps "
        f"(default: {default})",
    )


def add_dtype_argument(parser: argparse.ArgumentParser, default: str = "auto") -> None:
    """``--dtype auto|float32|bfloat16|float16``."""
    parser.add_argument(
        "--dtype",
        default=default,
        help="weight dtype: auto (as stored), float32, bfloat16 or float16 (default: %(default)s)",
    )
