"""``customgpt push`` (customgpt.cli.push)."""

from __future__ import annotations

import subprocess
import sys

from helpers import tiny_model

from customgpt.cli import main


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_push_without_token(tmp_path, capsys, monkeypatch):
    import huggingface_hub

    from customgpt.checkpoints import export_hf

    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    export_hf(tiny_model(), tmp_path)
    rc, _, err = _run(capsys, "push", str(tmp_path), "me/tiny")
    assert rc == 2 and "HF_TOKEN" in err and err.count("\n") == 1


def test_push_with_a_token_but_no_network_is_one_line(tmp_path):
    """A real connection failure (a closed local port stands for the hub), not a mock."""
    import os
    from pathlib import Path

    from customgpt.checkpoints import export_hf

    export_hf(tiny_model(), tmp_path / "export")
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    src = Path(__file__).resolve().parents[2] / "src"
    env.update(HF_TOKEN="hf_not_a_real_token", HF_ENDPOINT="http://127.0.0.1:9", PYTHONPATH=str(src))
    proc = subprocess.run(
        [sys.executable, "-m", "customgpt", "push", str(tmp_path / "export"), "me/tiny"],
        capture_output=True, text=True, timeout=120, env=env,
    )
    assert proc.returncode == 2
    assert proc.stderr == (
        "error: cannot reach the Hugging Face hub to push 'me/tiny': [Errno 111] Connection refused (ConnectError)\n"
    )
    assert proc.stdout == ""


def test_hub_http_error_is_one_line(tmp_path, capsys, monkeypatch):
    import importlib

    import huggingface_hub
    from huggingface_hub.errors import HfHubHTTPError

    from customgpt.checkpoints import export_hf

    # The hub client's HTTP library (httpx, vendored under another name by some versions).
    http = importlib.import_module(HfHubHTTPError.__mro__[1].__module__.split(".")[0])
    response = http.Response(403, request=http.Request("POST", "https://huggingface.co/api/repos/create"))

    class Refusing:
        def __init__(self, token=None):
            pass

        def create_repo(self, *args, **kwargs):
            message = "403 Forbidden: you cannot create a repository under 'someone'\nmore detail\n"
            raise HfHubHTTPError(message, response=response)

    monkeypatch.setattr(huggingface_hub, "HfApi", Refusing)
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE")
    export_hf(tiny_model(), tmp_path)
    rc, out, err = _run(capsys, "push", str(tmp_path), "someone/tiny")
    assert rc == 2 and out == ""
    assert err == (
        "error: hub refused the upload to 'someone/tiny': 403 Forbidden: you cannot create a repository "
        "under 'someone'\n"
    )
