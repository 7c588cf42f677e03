"""train/files.py re-exports the atomic writers of customgpt.io (tested in tests/test_io.py)."""

from __future__ import annotations

from customgpt.io import atomic_open, atomic_path, atomic_write_bytes, atomic_write_text, fsync_dir


def test_train_files_reexports_the_same_helpers():
    from customgpt.train import files

    assert files.atomic_open is atomic_open and files.atomic_write_text is atomic_write_text
    assert files.atomic_write_bytes is atomic_write_bytes and files.fsync_dir is fsync_dir


def test_train_files_exports_every_writer_and_nothing_else():
    from customgpt.train import files

    assert files.atomic_path is atomic_path
    assert sorted(files.__all__) == ["atomic_open", "atomic_path", "atomic_write_bytes", "atomic_write_text", "fsync_dir"]
