"""Atomic file writes: a file is either the complete new version or the old one, never half.

Every file the project writes goes through here: write a hidden temporary sibling (same file
system), ``fsync`` it, give it the permissions a plain ``open()`` would (0o666 less the umask;
safetensors makes 0600 files), then ``os.replace`` it over the target. If anything fails before
the rename, ``KeyboardInterrupt`` included, the temporary file is removed and the target is
untouched. :func:`atomic_open` yields a file object, :func:`atomic_path` a path for writers
that take a file name, :func:`staged_files` renames several files of a folder once all are
complete, and :func:`atomic_folder` swaps a whole new folder in.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import secrets
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from customgpt.errors import CheckpointError, DataError

# --------------------------------------------------------------------------- building blocks


_TEMP_ATTEMPTS = 100


def _make_temp(path: Path, suffix: str = ".tmp") -> tuple[Path, int]:
    """Create a hidden, uniquely named, empty sibling of ``path``.

    Returns (temp path, its permission bits). The file is created with mode 0o666 so the
    kernel applies the umask, exactly as for a plain ``open()``; the mode is recorded so it
    can be restored after writers that recreate the file as 0600 (safetensors does). Reading
    the umask with ``os.umask`` would briefly change it for every thread of the process.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    for _ in range(_TEMP_ATTEMPTS):
        tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}{suffix}"
        try:
            fd = os.open(tmp, flags, 0o666)
        except FileExistsError:
            continue
        except OSError as exc:  # name the file asked for, not the hidden temporary one
            raise OSError(exc.errno, exc.strerror, str(path)) from exc
        mode = os.fstat(fd).st_mode & 0o777
        os.close(fd)
        return tmp, mode
    raise FileExistsError(f"no free temporary name for {path} after {_TEMP_ATTEMPTS} tries")


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as fh:  # write access: Windows refuses fsync on a read-only handle
        os.fsync(fh.fileno())


def _discard(tmp: Path) -> None:
    with contextlib.suppress(OSError):
        os.unlink(tmp)


_OS_ERROR_CODE = re.compile(r"os error (\d+)")


@contextlib.contextmanager
def _naming(target: Path, tmp: Path | None) -> Iterator[None]:
    """Re-raise a writer's I/O failure as an :class:`OSError` naming ``target`` (the file the
    user asked for, not the hidden temporary file ``tmp``).

    Writers report a full disk in their own ways: Python's files raise ``OSError`` (often
    without a file name), safetensors raises ``SafetensorError("... (os error 28) ...")``,
    torch's zip writer raises ``RuntimeError("... file write failed")`` with no reason (the
    reason is then ``ENOSPC`` when the target's file system has no space left, else ``EIO``).
    """
    try:
        yield
    except OSError as exc:
        if exc.errno is None or (exc.filename is not None and str(exc.filename) != str(tmp)):
            raise  # it names another path already, or carries no error code to restate
        raise OSError(exc.errno, exc.strerror or os.strerror(exc.errno), str(target)) from exc
    except Exception as exc:
        match = _OS_ERROR_CODE.search(str(exc))
        if match and type(exc).__name__ == "SafetensorError":
            code = int(match.group(1))
        elif isinstance(exc, RuntimeError) and "file write failed" in str(exc):
            try:
                full = shutil.disk_usage(target.parent).free == 0
            except OSError:
                full = False
            code = errno.ENOSPC if full else errno.EIO
        else:
            raise
        raise OSError(code, os.strerror(code), str(target)) from exc


# --------------------------------------------------------------------------- one file


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], *, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary sibling of ``path`` for a writer that takes a file name.

    The temporary file exists (empty) when the body starts; the body writes it by name. On
    success it is fsynced and replaces ``path``; if the body raises (anything,
    ``KeyboardInterrupt`` included), it is removed and ``path`` is left untouched. ``suffix``
    names the temporary file (``.<name>.XXXX<suffix>``).
    """
    path = Path(path)
    if path.name in ("", ".", ".."):
        raise ValueError(f"atomic write needs a file path, got {str(path)!r}")
    if path.is_dir():
        raise IsADirectoryError(f"cannot write {path} atomically: it is a folder")
    tmp, file_mode = _make_temp(path, suffix)
    try:
        with _naming(path, tmp):
            yield tmp
            _fsync_file(tmp)
        os.chmod(tmp, file_mode)  # the writer may have recreated it as 0600
        os.replace(tmp, path)
    except BaseException:
        _discard(tmp)
        raise


@contextlib.contextmanager
def atomic_open(
    path: str | os.PathLike[str], mode: str = "wb", encoding: str | None = None, *, suffix: str = ".tmp"
) -> Iterator[IO[Any]]:
    """:func:`atomic_path`, with the temporary file opened for writing: on success it replaces
    ``path``. ``mode`` is a write mode (``"w"``, ``"wb"``, ``"wt"``); ``encoding`` applies to
    text modes."""
    if not mode.startswith("w") or "+" in mode:
        raise ValueError(f"atomic_open writes a whole new file: mode must be 'w', 'wb' or 'wt', got {mode!r}")
    with atomic_path(path, suffix=suffix) as tmp, open(tmp, mode, encoding=encoding) as fh:
        yield fh


def atomic_write_text(path: str | os.PathLike[str], text: str, encoding: str = "utf-8") -> None:
    """Write ``text`` to ``path`` atomically (UTF-8 unless told otherwise)."""
    with atomic_open(path, "w", encoding=encoding) as fh:
        fh.write(text)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_open(path, "wb") as fh:
        fh.write(data)


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Flush a folder's entries (renames) to disk where the platform allows it."""
    with contextlib.suppress(OSError, AttributeError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# --------------------------------------------------------------------------- several files


class StagedFiles:
    """Write several files of one folder so that none appears half-written.

    Each file goes to a hidden temporary name in the same folder; only when all are complete
    (and fsynced) are they renamed, in order. On an exception every temporary file is removed
    and the previous files stay untouched. Each rename is atomic, the set of renames is not: a
    power cut between two renames (a window of microseconds, after every byte is on disk) could
    pair a new file with an old one.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.staged: list[tuple[Path, Path, int]] = []

    def path(self, name: str) -> Path:
        """A temporary path to write ``name`` to (by name); it becomes ``folder/name`` when the
        :func:`staged_files` block ends."""
        if not name or Path(name).name != name or name in (".", ".."):
            raise ValueError(f"staged file name must be a plain file name, got {name!r}")
        final = self.folder / name
        tmp, mode = _make_temp(final)
        self.staged.append((tmp, final, mode))
        return tmp

    def write_text(self, name: str, text: str, encoding: str = "utf-8") -> None:
        self.path(name).write_text(text, encoding=encoding)

    def write_json(self, name: str, data: Any) -> None:
        self.write_text(name, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


@contextlib.contextmanager
def staged_files(folder: str | os.PathLike[str]) -> Iterator[StagedFiles]:
    """Context manager for atomic multi-file writes into ``folder`` (created if needed)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    stage = StagedFiles(folder)
    try:
        yield stage
        for tmp, _, mode in stage.staged:
            _fsync_file(tmp)  # on disk before the rename makes it visible
            os.chmod(tmp, mode)  # the writer may have recreated it as 0600
        for tmp, final, _ in stage.staged:
            os.replace(tmp, final)
    except BaseException as exc:
        # Name the file that failed: the one its temporary name belongs to, else the last staged.
        failed = [(tmp, final) for tmp, final, _ in stage.staged if str(tmp) == str(getattr(exc, "filename", ""))]
        tmp, final = failed[0] if failed else (None, stage.staged[-1][1] if stage.staged else folder)
        for leftover, _, _ in stage.staged:
            _discard(leftover)  # the final names are not touched
        with _naming(final, tmp):
            raise


# --------------------------------------------------------------------------- whole folders


@contextlib.contextmanager
def atomic_folder(final: str | os.PathLike[str]) -> Iterator[Path]:
    """Context manager that yields an empty ``<final>.tmp/`` to fill. When the block ends
    without an error, the complete folder replaces ``final``: the old ``final`` moves to
    ``<final>.prev``, the new one takes its name, then ``.prev`` is deleted. On any error
    (``KeyboardInterrupt`` too) the temporary folder is removed and ``final`` is untouched;
    a ``.tmp`` folder left by an interrupted earlier write is discarded first.

    A crash at any point leaves a complete ``final`` or, between the two renames, a complete
    ``<final>.prev`` (readers may fall back to it). A ``.prev`` left by such a crash is kept
    until a complete ``final`` exists again."""
    final = Path(final)
    tmp = final.with_name(final.name + ".tmp")
    prev = final.with_name(final.name + ".prev")
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        tmp.mkdir(parents=True)
        yield tmp
        fsync_dir(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if prev.exists() and final.exists():
        shutil.rmtree(prev)  # a complete ``final`` exists: the older copy is not needed
    if final.exists():
        final.replace(prev)
    tmp.replace(final)
    fsync_dir(final.parent)
    if prev.exists():
        shutil.rmtree(prev, ignore_errors=True)


# --------------------------------------------------------------------------- reading


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_json_object(path: str | Path) -> dict[str, Any]:
    """The JSON object stored at ``path``; a missing, unreadable or non-object file is a
    :class:`~customgpt.errors.CheckpointError` that names it."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise CheckpointError(f"{path}: not found") from exc
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"cannot read {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


# --------------------------------------------------------------------------- user text and errors


def read_text_strict(source: str | os.PathLike[str]) -> str:
    """A user's text, decoded as strict UTF-8: ``"-"`` reads standard input, anything else
    is a file path.

    Invalid bytes are an error naming their byte offset, never silently replaced by U+FFFD
    (which would feed the model text the user did not write). A UTF-8 byte-order mark is
    dropped. Newlines are kept as they are (no universal-newline translation).

    Raises:
        DataError: invalid UTF-8 (``<file>: not UTF-8 text (byte N, 0x..): reason``), the
            format of the dataset and tokenizer-training readers.
        OSError: the file cannot be read (the CLI prints ``error: cannot read PATH: reason``).
    """
    if str(source) == "-":
        stream = sys.stdin.buffer if hasattr(sys.stdin, "buffer") else None
        data = stream.read() if stream is not None else sys.stdin.read().encode("utf-8")
        name = "standard input"
    else:
        data = Path(source).read_bytes()
        name = str(source)
    return decode_utf8_strict(data, name).removeprefix("\ufeff")


def decode_utf8_strict(data: bytes | str, name: str) -> str:
    """``data`` decoded as strict UTF-8; a ``str`` (an argument or a line Python decoded with
    ``surrogateescape``, where bytes that are not UTF-8 became lone surrogates) is checked.

    Raises:
        DataError: ``<name>: not UTF-8 text (byte N, 0x..): reason``.
    """
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogateescape")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        bad = data[exc.start : exc.end]
        raise DataError(f"{name}: not UTF-8 text (byte {exc.start}, 0x{bad.hex()}): {exc.reason}") from None


_WRITE_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.EFBIG, errno.EEXIST, errno.ETXTBSY}


def os_error_message(exc: OSError) -> str:
    """One line for an operating-system error: ``cannot write PATH: reason`` (full disk,
    read-only file system, no permission to create) or ``cannot read PATH: reason``
    (missing file, no permission to read), ``cannot reach the network: reason`` for a
    connection error, else the reason alone."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    if isinstance(exc, ConnectionError) and exc.filename is None:
        return f"cannot reach the network: {reason}"
    if exc.filename is None:
        return reason
    path = os.fsdecode(exc.filename)
    if exc.filename2 is not None:
        return f"cannot move {path} to {os.fsdecode(exc.filename2)}: {reason}"
    if exc.errno in _WRITE_ERRNOS:
        verb = "write"
    elif exc.errno in (errno.EACCES, errno.EPERM):
        verb = "read" if os.path.exists(path) and not os.access(path, os.R_OK) else "write"
    else:
        verb = "read"
    return f"cannot {verb} {path}: {reason}"
