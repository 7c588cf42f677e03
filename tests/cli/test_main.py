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
