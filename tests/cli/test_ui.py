"""``customgpt ui``'s options: mistakes are one line and exit 2, before anything starts."""

from __future__ import annotations

import pytest

from customgpt.cli import main


def run_cli(capsys, *argv: str) -> tuple[int, str]:
    try:
        code = main(list(argv))
    except SystemExit as exc:
        code = exc.code
    return code, capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "give a chat model (--chat MODEL) or a classifier"),
        (["--classifier", "c", "--compare", "b"], "--compare needs --chat"),
        (["--chat", "cpu-tiny", "--port", "70000"], "--port must be in 1..65535"),
        (["--chat", "cpu-tiny", "--prompt-style", "nope"], "invalid choice: 'nope'"),
    ],
)
def test_mistakes_are_one_line_errors(capsys, argv, message):
    code, err = run_cli(capsys, "ui", *argv)
    assert code == 2 and message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_listed_in_the_command_table(capsys):
    assert main(["--help"]) == 0
    assert "  ui " in capsys.readouterr().out


def test_a_port_in_use_is_reported_before_loading_anything(capsys):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code, err = run_cli(capsys, "ui", "--chat", "no-such-model", "--port", str(port))
    assert code == 2 and f"cannot listen on 127.0.0.1:{port}" in err and "in use" in err


def test_a_style_the_model_folder_records_that_cannot_be_rebuilt_is_one_line(capsys, tmp_path):
    from customgpt.checkpoints import random_model, save_model
    from customgpt.config import GPTConfig

    model = random_model(GPTConfig.from_preset("cpu-tiny"), seed=0)
    bad = save_model(model, tmp_path / "bad", metadata={"prompt_style": {"name": "nope"}})
    code, err = run_cli(capsys, "ui", "--chat", str(bad), "--port", "1")
    assert code == 2 and "unknown prompt style 'nope'" in err
    assert len(err.strip().splitlines()) == 1
