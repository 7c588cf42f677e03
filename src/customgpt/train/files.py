"""Atomic file writes for the training code: re-exported from :mod:`customgpt.io`.

Every file the training code writes (configs, metrics rewrites, checkpoint parts, token
caches) goes through these helpers; see :mod:`customgpt.io` for the guarantees.
"""

from __future__ import annotations

from customgpt.io import atomic_open, atomic_path, atomic_write_bytes, atomic_write_text, fsync_dir

__all__ = ["atomic_open", "atomic_path", "atomic_write_bytes", "atomic_write_text", "fsync_dir"]
