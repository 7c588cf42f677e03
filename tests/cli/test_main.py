"""The ``customgpt`` entry point: the command table, one-line errors, no tracebacks (customgpt.cli)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from helpers import tiny_model

from customgpt.checkpoints import save_model
from customgpt.cli import main


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_help_lists_the_core_commands():
    proc = subprocess.run(
        [sys.executable, "-m", "customgpt", "--help"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    for command in ("info", "convert", "push"):
        assert f"  {command}" in proc.stdout




@pytest.mark.parametrize(
    "argv, needle",
    [
        (["info", "/nonexistent/model"], "no such local file or folder: /nonexistent/model"),
        (["info", "not-a-model"], "unknown model"),
        (["convert", "cpu-tiny", "OUT", "--to", "hf"], "is a preset"),
        (["push", "/nonexistent", "me/x"], "no such folder"),
    ],
)
def test_user_errors_are_one_line(argv, needle, capsys):
    rc, out, err = _run(capsys, *argv)
    assert rc == 2
    assert err.startswith("error: ") and needle in err
    assert err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["info"], "the following arguments are required: MODEL"),
        (["eval", "rouge"], "the following arguments are required: --responses/-r"),
        (["tokenizer", "encode", "x", "--engine", "rust"], "argument --engine: invalid choice: 'rust'"),
    ],
)
def test_option_errors_of_every_command_are_one_line(argv, needle, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    prog = " ".join(["customgpt", *argv[:2]]) if argv[0] != "info" else "customgpt info"
    assert err.startswith(f"error: {needle}") and err.endswith(f" (see {prog} --help)\n") and err.count("\n") == 1


def test_errors_have_no_traceback_in_a_real_process(tmp_path):
    save_model(tiny_model(), tmp_path / "ours")
    (tmp_path / "ours" / "model.safetensors").write_bytes(b"\x10\x00")
    proc = subprocess.run(
        [sys.executable, "-m", "customgpt", "info", str(tmp_path / "ours")],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: cannot read") and "model.safetensors" in proc.stderr
    assert "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1


# --------------------------------------------------------------------------- operating-system errors (17.7)


def _no_temp_files(folder) -> bool:
    return not any(p.name.startswith(".") for p in folder.rglob("*"))


def test_full_disk_in_the_safetensors_writer_is_one_line(tmp_path, monkeypatch, capsys):
    import safetensors.torch
    from safetensors import SafetensorError

    save_model(tiny_model(), tmp_path / "src")

    def full(tensors, filename, metadata=None):
        raise SafetensorError(
            f'Error while serializing: I/O error: No space left on device (os error 28) at path "{filename}"'
        )

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    dst = tmp_path / "dst"
    rc, out, err = _run(capsys, "convert", str(tmp_path / "src"), str(dst), "--to", "hf")
    assert rc == 2
    assert err == f"error: cannot write {dst / 'model.safetensors'}: No space left on device\n"
    assert not (dst / "model.safetensors").exists() and _no_temp_files(tmp_path)


def test_read_only_output_folder_is_one_line(tmp_path, monkeypatch, capsys):
    """As root, chmod does not stop a write: the file system's refusal is injected."""
    import errno
    import os

    import customgpt.io as aio

    ro = tmp_path / "ro"
    ro.mkdir()
    real_open = os.open

    def read_only(path, flags, mode=0o777, **kwargs):
        if str(path).startswith(str(ro)) and flags & os.O_CREAT:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, flags, mode, **kwargs)

    monkeypatch.setattr(aio.os, "open", read_only)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("hello there\n" * 30, encoding="utf-8")
    argv = ["tokenizer", "train", str(corpus), "--vocab-size", "260", "--out", str(ro / "v.tiktoken"), "--no-progress"]
    rc, out, err = _run(capsys, *argv)
    assert rc == 2
    assert err == f"error: cannot write {ro / 'v.tiktoken'}: Read-only file system\n"
    # the same kind from another command: a checkpoint folder on the read-only disk
    save_model(tiny_model(), tmp_path / "src")
    rc, out, err = _run(capsys, "convert", str(tmp_path / "src"), str(ro / "export"), "--to", "hf")
    assert rc == 2
    assert err == f"error: cannot write {ro / 'export' / 'model.safetensors'}: Read-only file system\n"
    assert list(ro.rglob("*.safetensors")) == []


def test_permission_denied_and_missing_file_say_read_or_write(tmp_path, monkeypatch, capsys):
    import errno
    import os

    from customgpt.io import os_error_message

    missing = tmp_path / "nope.txt"
    assert os_error_message(OSError(errno.ENOENT, os.strerror(errno.ENOENT), str(missing))) == (
        f"cannot read {missing}: No such file or directory"
    )
    assert os_error_message(OSError(errno.EACCES, os.strerror(errno.EACCES), str(missing))) == (
        f"cannot write {missing}: Permission denied"
    )
    assert os_error_message(OSError(errno.EDQUOT, os.strerror(errno.EDQUOT), "q")) == (
        f"cannot write q: {os.strerror(errno.EDQUOT)}"
    )

    from customgpt.cli import info

    def denied(args):
        raise PermissionError(errno.EACCES, "Permission denied", "/srv/models/x/config.json")

    monkeypatch.setattr(info, "run", denied)
    rc, _, err = _run(capsys, "info", "cpu-tiny")
    assert rc == 2 and err == "error: cannot write /srv/models/x/config.json: Permission denied\n"


def test_network_error_from_any_command_is_one_line(monkeypatch, capsys):
    import httpx

    from customgpt.cli import info

    def offline(args):
        raise httpx.ConnectError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(info, "run", offline)
    rc, out, err = _run(capsys, "info", "cpu-tiny")
    assert rc == 2 and out == ""
    assert err == (
        "error: network error: cannot reach the server: [Errno -3] Temporary failure in name resolution "
        "(ConnectError)\n"
    )


def test_full_disk_on_standard_output_is_one_line(tmp_path):
    """``> /dev/full``: every write to standard output fails with ENOSPC."""
    import os
    from pathlib import Path

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")}
    with open("/dev/full", "w") as full:
        proc = subprocess.run(
            [sys.executable, "-m", "customgpt", "tokenizer", "encode", "hello"],
            stdout=full, stderr=subprocess.PIPE, text=True, timeout=120, env=env,
        )
    assert proc.returncode == 2
    assert proc.stderr == "error: cannot write standard output: No space left on device\n"


@pytest.mark.parametrize("argv", [["--help"], ["--version"], []])
def test_usage_into_a_closed_pipe_ends_quietly(argv):
    """``customgpt --help | head -0``: the reader is gone before the usage is written."""
    import os
    from pathlib import Path

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")}
    read, write = os.pipe()
    os.close(read)
    with os.fdopen(write, "w") as closed:
        proc = subprocess.run([sys.executable, "-m", "customgpt", *argv], stdout=closed,
                              stderr=subprocess.PIPE, text=True, timeout=120, env=env)
    assert (proc.returncode, proc.stderr) == (141, "")


def test_usage_into_a_full_disk_is_one_line():
    import os
    from pathlib import Path

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")}
    with open("/dev/full", "w") as full:
        proc = subprocess.run([sys.executable, "-m", "customgpt", "--help"], stdout=full,
                              stderr=subprocess.PIPE, text=True, timeout=120, env=env)
    assert proc.returncode == 2
    assert proc.stderr == "error: cannot write standard output: No space left on device\n"
