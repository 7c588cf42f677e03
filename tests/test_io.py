"""customgpt.io: the one atomic-write implementation every module uses."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

import customgpt.io as aio
from customgpt.io import (
    atomic_open,
    atomic_path,
    atomic_write_bytes,
    atomic_write_text,
    fsync_dir,
    read_json_object,
    staged_files,
)


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def _plain_mode(folder: Path) -> int:
    """The permissions an ordinary open() gives a new file here."""
    probe = folder / "probe-mode"
    probe.write_text("x")
    mode = probe.stat().st_mode & 0o777
    probe.unlink()
    return mode


class Boom(Exception):
    pass


# --------------------------------------------------------------------------- success


def test_write_text_replaces_content(tmp_path):
    target = tmp_path / "a.txt"
    atomic_write_text(target, "first")
    atomic_write_text(target, "second, longer than the first")
    assert target.read_text(encoding="utf-8") == "second, longer than the first"
    assert _names(tmp_path) == ["a.txt"]


def test_write_text_encoding(tmp_path):
    target = tmp_path / "t.txt"
    atomic_write_text(target, "naïve € ✓")
    assert target.read_bytes() == "naïve € ✓".encode()  # UTF-8 by default, whatever the locale
    atomic_write_text(target, "café", encoding="latin-1")
    assert target.read_bytes() == b"caf\xe9"
    with pytest.raises(UnicodeEncodeError):
        atomic_write_text(target, "€", encoding="latin-1")
    assert target.read_bytes() == b"caf\xe9" and _names(tmp_path) == ["t.txt"]


def test_write_bytes_and_parent_folders(tmp_path):
    target = tmp_path / "deep" / "er" / "b.bin"
    atomic_write_bytes(target, b"\x00\x01\xff")
    assert target.read_bytes() == b"\x00\x01\xff"


def test_atomic_open_text_and_binary(tmp_path):
    with atomic_open(tmp_path / "t", "w", encoding="utf-8") as fh:
        fh.write("line\n")
    with atomic_open(tmp_path / "b") as fh:  # binary by default
        fh.write(b"raw")
    assert (tmp_path / "t").read_text() == "line\n" and (tmp_path / "b").read_bytes() == b"raw"


def test_atomic_path_for_writers_that_take_a_name(tmp_path):
    target = tmp_path / "w.pt"
    with atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp != target and tmp.exists()
        torch.save({"x": torch.arange(3)}, tmp)
        assert not target.exists()  # nothing under the final name before the end
    assert torch.equal(torch.load(target, weights_only=True)["x"], torch.arange(3))
    assert _names(tmp_path) == ["w.pt"]


def test_new_files_get_ordinary_permissions(tmp_path):
    """Not the private 0600 that mkstemp (or the safetensors writer) starts a file with."""
    expected = _plain_mode(tmp_path)
    atomic_write_text(tmp_path / "a", "x")
    with atomic_path(tmp_path / "b") as tmp:
        tmp.write_text("x")
        os.chmod(tmp, 0o600)
    with staged_files(tmp_path / "c") as stage:
        stage.write_text("one", "x")
        two = stage.path("two")
        two.unlink()  # a writer that recreates the file privately, as safetensors does
        os.close(os.open(two, os.O_WRONLY | os.O_CREAT, 0o600))
    for path in (tmp_path / "a", tmp_path / "b", tmp_path / "c" / "one", tmp_path / "c" / "two"):
        assert path.stat().st_mode & 0o777 == expected, path


def test_permissions_follow_the_umask_without_touching_it(tmp_path, monkeypatch):
    old = os.umask(0o027)
    try:
        def no_umask(mask):  # changing the umask, even briefly, races with other threads
            raise AssertionError("os.umask called during an atomic write")

        monkeypatch.setattr(aio.os, "umask", no_umask)
        atomic_write_bytes(tmp_path / "a", b"x")
        with atomic_path(tmp_path / "b") as tmp:
            tmp.unlink()  # a writer that recreates the file privately
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT, 0o600)
            os.close(fd)
        monkeypatch.undo()
    finally:
        os.umask(old)
    assert (tmp_path / "a").stat().st_mode & 0o777 == 0o640
    assert (tmp_path / "b").stat().st_mode & 0o777 == 0o640


def test_fsync_before_replace(tmp_path, monkeypatch):
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(aio.os, "fsync", lambda fd: (events.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(aio.os, "replace", lambda a, b: (events.append("replace"), real_replace(a, b))[1])
    atomic_write_text(tmp_path / "a", "x")
    assert events == ["fsync", "replace"]
    events.clear()
    with atomic_path(tmp_path / "b") as tmp:
        tmp.write_bytes(b"x")
    assert events == ["fsync", "replace"]
    events.clear()
    with staged_files(tmp_path) as stage:
        stage.write_text("c", "x")
        stage.write_text("d", "y")
    assert events == ["fsync", "fsync", "replace", "replace"]


# --------------------------------------------------------------------------- failures


@pytest.mark.parametrize("exc", [Boom, KeyboardInterrupt])
def test_raise_inside_atomic_open_keeps_old_file(tmp_path, exc):
    target = tmp_path / "metrics.json"
    atomic_write_text(target, "old")
    with pytest.raises(exc):
        with atomic_open(target, "w", encoding="utf-8") as fh:
            fh.write("new but incomplete")
            fh.flush()
            raise exc()
    assert target.read_text() == "old"
    assert _names(tmp_path) == ["metrics.json"]  # no temp file left behind


def test_raise_inside_atomic_open_on_a_new_file_leaves_nothing(tmp_path):
    with pytest.raises(Boom):
        with atomic_open(tmp_path / "new.bin") as fh:
            fh.write(b"half")
            raise Boom()
    assert _names(tmp_path) == []


@pytest.mark.parametrize("exc", [Boom, KeyboardInterrupt])
def test_writer_raising_midway_in_atomic_path_keeps_old_file(tmp_path, exc):
    target = tmp_path / "w.bin"
    atomic_write_bytes(target, b"old content")

    def writer(path: Path) -> None:
        path.write_bytes(b"half of the new")
        raise exc()

    with pytest.raises(exc):
        with atomic_path(target) as tmp:
            writer(tmp)
    assert target.read_bytes() == b"old content"
    assert _names(tmp_path) == ["w.bin"]


@pytest.mark.parametrize("step", ["fsync", "replace"])
def test_failure_while_committing_keeps_old_file(tmp_path, monkeypatch, step):
    target = tmp_path / "f.txt"
    atomic_write_text(target, "old")

    def broken(*args):
        raise OSError(f"{step} failed (simulated)")

    monkeypatch.setattr(aio.os, step, broken)
    with pytest.raises(OSError, match="simulated"):
        atomic_write_text(target, "new")
    with pytest.raises(OSError, match="simulated"):
        with atomic_path(target) as tmp:
            tmp.write_text("new")
    monkeypatch.undo()
    assert target.read_text() == "old" and _names(tmp_path) == ["f.txt"]


def test_bad_arguments_are_clear_errors(tmp_path):
    for mode in ("a", "r", "r+", "w+", "ab"):
        with pytest.raises(ValueError, match="mode"):
            with atomic_open(tmp_path / "x", mode):
                pass
    (tmp_path / "folder").mkdir()
    with pytest.raises(IsADirectoryError, match="folder"):
        atomic_write_text(tmp_path / "folder", "x")
    with pytest.raises(ValueError, match="file path"):
        atomic_write_text(Path(""), "x")
    with pytest.raises(ValueError, match="plain file name"):
        with staged_files(tmp_path) as stage:
            stage.path("sub/x")
    assert _names(tmp_path) == ["folder"]


# --------------------------------------------------------------------------- several files


def test_staged_files_all_or_nothing(tmp_path):
    with staged_files(tmp_path) as stage:
        stage.write_text("a.txt", "a1")
        stage.path("b.bin").write_bytes(b"b1")
        stage.write_json("c.json", {"k": "é"})
    assert (tmp_path / "c.json").read_text(encoding="utf-8") == '{\n  "k": "é"\n}\n'
    before = {n: (tmp_path / n).read_bytes() for n in _names(tmp_path)}

    with pytest.raises(KeyboardInterrupt):
        with staged_files(tmp_path) as stage:
            stage.write_text("a.txt", "a2")
            stage.path("b.bin").write_bytes(b"b2")
            raise KeyboardInterrupt
    assert {n: (tmp_path / n).read_bytes() for n in _names(tmp_path)} == before


def test_staged_files_failure_during_commit_cleans_up(tmp_path, monkeypatch):
    atomic_write_text(tmp_path / "a.txt", "old")
    monkeypatch.setattr(aio, "_fsync_file", lambda p: (_ for _ in ()).throw(OSError("fsync (simulated)")))
    with pytest.raises(OSError, match="simulated"):
        with staged_files(tmp_path) as stage:
            stage.write_text("a.txt", "new")
            stage.write_text("b.txt", "new")
    assert _names(tmp_path) == ["a.txt"] and (tmp_path / "a.txt").read_text() == "old"


def test_fsync_dir_tolerates_anything(tmp_path):
    fsync_dir(tmp_path)
    fsync_dir(tmp_path / "missing")  # best effort: never raises


# --------------------------------------------------------------------------- former call sites


def _fail_fsync(monkeypatch):
    def broken(fd):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(aio.os, "fsync", broken)


def test_tokenizer_ranks_write_is_atomic(tmp_path, monkeypatch):
    from customgpt.tokenizer import load_tiktoken_ranks, save_tiktoken_ranks

    ranks = {bytes([i]): i for i in range(256)}
    path = save_tiktoken_ranks(ranks, tmp_path / "r.tiktoken")
    before = path.read_bytes()
    _fail_fsync(monkeypatch)
    with pytest.raises(OSError, match="simulated"):
        save_tiktoken_ranks({**ranks, b"ab": 256}, path)
    monkeypatch.undo()
    assert path.read_bytes() == before and _names(tmp_path) == ["r.tiktoken"]
    assert load_tiktoken_ranks(path) == ranks


def test_lora_files_are_atomic(tmp_path, monkeypatch):
    from safetensors.torch import load_file

    from customgpt import lora

    model = torch.nn.Module()
    model.c_attn = torch.nn.Linear(4, 4)
    lora.inject_lora(model, lora.LoRAConfig(r=2))
    lora.save_adapter(model, tmp_path)
    assert (tmp_path / lora.ADAPTER_WEIGHTS).stat().st_mode & 0o777 == _plain_mode(tmp_path)
    before = {n: (tmp_path / n).read_bytes() for n in _names(tmp_path)}
    with torch.no_grad():
        model.c_attn.lora_B.fill_(1.0)
    real_fsync = aio.os.fsync
    for good in (0, 1):  # fsync fails in the weights file, then in the config written after it
        calls = iter(range(good))

        def fsync(fd, calls=calls):
            if next(calls, None) is None:
                raise OSError("disk full (simulated)")
            real_fsync(fd)

        monkeypatch.setattr(aio.os, "fsync", fsync)
        with pytest.raises(OSError, match="simulated"):
            lora.save_adapter(model, tmp_path)
        monkeypatch.undo()
        assert _names(tmp_path) == sorted(before)
        assert (tmp_path / lora.ADAPTER_CONFIG).read_bytes() == before[lora.ADAPTER_CONFIG]
        if good == 0:
            assert (tmp_path / lora.ADAPTER_WEIGHTS).read_bytes() == before[lora.ADAPTER_WEIGHTS]
            assert torch.equal(load_file(tmp_path / lora.ADAPTER_WEIGHTS)["c_attn.lora_B"], torch.zeros(4, 2))


def test_checkpoint_weights_file_is_atomic(tmp_path, monkeypatch):
    from customgpt import checkpoints as ckpt

    path = tmp_path / "w.safetensors"
    ckpt.save_weights({"w": torch.ones(2)}, path)
    before = path.read_bytes()
    _fail_fsync(monkeypatch)
    with pytest.raises(OSError, match="simulated"):
        ckpt.save_weights({"w": torch.zeros(5)}, path)
    monkeypatch.undo()
    assert path.read_bytes() == before and _names(tmp_path) == ["w.safetensors"]


# --------------------------------------------------------------------------- whole folders


def test_atomic_folder_swaps_a_complete_folder_in(tmp_path):
    from customgpt.io import atomic_folder

    final = tmp_path / "best"
    with atomic_folder(final) as tmp:
        assert tmp == tmp_path / "best.tmp" and tmp.is_dir() and not final.exists()
        (tmp / "a.txt").write_text("one")
    assert _names(tmp_path) == ["best"] and (final / "a.txt").read_text() == "one"
    with atomic_folder(final) as tmp:
        (tmp / "b.txt").write_text("two")
    assert _names(tmp_path) == ["best"] and _names(final) == ["b.txt"]  # replaced whole, no .prev left


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_atomic_folder_failure_keeps_the_old_folder(tmp_path, error):
    from customgpt.io import atomic_folder

    final = tmp_path / "best"
    final.mkdir()
    (final / "old.txt").write_text("old")
    (tmp_path / "best.tmp").mkdir()  # left by an interrupted earlier write: discarded
    (tmp_path / "best.tmp" / "junk").write_text("junk")
    with pytest.raises(error):
        with atomic_folder(final) as tmp:
            assert _names(tmp) == []
            (tmp / "half.txt").write_text("half")
            raise error()
    assert _names(tmp_path) == ["best"] and _names(final) == ["old.txt"]


def test_swap_keeps_prev_from_a_crash_until_a_new_folder_is_in_place(tmp_path, monkeypatch):
    from customgpt.io import atomic_folder

    prev = tmp_path / "last.prev"  # a crash between the two renames left only this complete copy
    prev.mkdir()
    (prev / "w").write_text("old")
    renames = []
    real_replace = Path.replace

    def spy(self, target):
        renames.append((self.name, Path(target).name, prev.exists()))
        return real_replace(self, target)

    monkeypatch.setattr(Path, "replace", spy)
    with atomic_folder(tmp_path / "last") as new:
        (new / "w").write_text("new")
    assert renames == [("last.tmp", "last", True)]  # .prev still there when the new folder lands
    assert _names(tmp_path) == ["last"] and (tmp_path / "last" / "w").read_text() == "new"


def test_read_json_object_names_the_file_and_the_problem(tmp_path):
    from customgpt.errors import CheckpointError

    good = tmp_path / "good.json"
    good.write_text('{"a": 1}', encoding="utf-8")
    assert read_json_object(good) == {"a": 1}
    (tmp_path / "list.json").write_text("[1, 2]", encoding="utf-8")
    (tmp_path / "bad.json").write_text("{oops", encoding="utf-8")
    for name, problem in (("missing.json", "not found"), ("bad.json", "cannot read"),
                          ("list.json", "expected a JSON object, got list")):
        with pytest.raises(CheckpointError, match=problem) as info:
            read_json_object(tmp_path / name)
        assert name in str(info.value)


# --------------------------------------------------------------------------- writers' I/O failures name the target


def test_torch_zip_writer_failure_on_a_full_disk_names_the_target(tmp_path, monkeypatch):
    import collections
    import errno

    path = tmp_path / "state.pt"

    def zip_writer_fails(obj, f, *args, **kwargs):
        raise RuntimeError(
            "[enforce fail at inline_container.cc:626] . PytorchStreamWriter failed writing file data/0: "
            "file write failed"
        )

    monkeypatch.setattr(torch, "save", zip_writer_fails)
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(aio.shutil, "disk_usage", lambda p: usage(100, 100, 0))
    with pytest.raises(OSError) as info, aio.atomic_path(path) as tmp:
        torch.save({"w": torch.ones(2)}, tmp)
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(path)
    assert aio.os_error_message(info.value) == f"cannot write {path}: No space left on device"
    assert _names(tmp_path) == []


def test_file_write_without_a_name_gets_the_target_named(tmp_path, monkeypatch):
    import errno

    path = tmp_path / "metrics.json"
    with pytest.raises(OSError) as info, aio.atomic_open(path, "w") as fh:
        fh.write("{}")
        raise OSError(errno.EFBIG, os.strerror(errno.EFBIG))  # as a full file system reports it
    assert info.value.filename == str(path)
    assert aio.os_error_message(info.value) == f"cannot write {path}: {os.strerror(errno.EFBIG)}"
    assert _names(tmp_path) == []


# --------------------------------------------------------------------------- strict text


def test_read_text_strict_names_the_byte_offset(tmp_path, monkeypatch):
    import io

    from customgpt.errors import DataError

    good = tmp_path / "good.txt"
    good.write_bytes("\ufeffcafé\r\nok".encode())
    assert aio.read_text_strict(good) == "café\r\nok"  # BOM dropped, newlines kept
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"ok \xc3\x28 then")
    with pytest.raises(DataError) as info:
        aio.read_text_strict(bad)
    assert str(info.value) == f"{bad}: not UTF-8 text (byte 3, 0xc3): invalid continuation byte"
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"\xff prompt")))
    with pytest.raises(DataError) as info:
        aio.read_text_strict("-")
    assert str(info.value) == "standard input: not UTF-8 text (byte 0, 0xff): invalid start byte"
