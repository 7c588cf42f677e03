"""``customgpt serve`` end to end: the command starts a server on loopback that the official
client can use, and bad options are one-line errors."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from customgpt.cli import main

pytest.importorskip("uvicorn")
openai = pytest.importorskip("openai")

SRC = Path(__file__).resolve().parents[2] / "src"


def test_serve_command_answers_the_openai_client(capsys):
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "OMP_NUM_THREADS": "1", "CUSTOMGPT_API_KEY": "k"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "customgpt", "serve", "--model", "cpu-tiny", "--port", "0", "--max-batch", "2"],
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env,
    )
    try:
        url, lines, deadline = None, [], time.monotonic() + 120
        while url is None and time.monotonic() < deadline:
            line = proc.stderr.readline()
            if not line:
                break
            lines.append(line)
            found = re.search(r"serving 'cpu-tiny' on (http://127\.0\.0\.1:\d+)/v1", line)
            url = found.group(1) if found else None
        assert url is not None, "".join(lines)
        assert any("preset" in line for line in lines)  # the random-weights warning
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="k", max_retries=0, timeout=60)
        out = client.completions.create(model="cpu-tiny", prompt="Hello, my name is", max_tokens=12, temperature=0)
        # the same greedy text as `customgpt generate` (same preset, same seed 0)
        assert main(["generate", "--model", "cpu-tiny", "--prompt", "Hello, my name is", "--temperature", "0",
                     "--max-new-tokens", "12", "--json"]) == 0
        generated = json.loads(capsys.readouterr().out)
        assert out.choices[0].text == generated["text"]
        assert out.usage.completion_tokens == generated["completion_tokens"]
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"{url}/v1", api_key="wrong", max_retries=0).models.list()
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_serve_bad_options_are_one_line_errors(capsys):
    assert main(["serve", "--model", "cpu-tiny", "--port", "70000"]) == 2
    assert "error: --port must be in 0..65535" in capsys.readouterr().err
    assert main(["serve", "--model", "cpu-tiny", "--max-batch", "0"]) == 2
    assert "max_batch must be >= 1" in capsys.readouterr().err
    assert main(["serve", "--model", "cpu-tiny", "--prompt-style", "nope"]) == 2
    assert "unknown prompt style" in capsys.readouterr().err
    assert main(["serve", "--model", "cpu-tiny", "--threads", "0"]) == 2
    assert "--threads must be >= 1" in capsys.readouterr().err


def test_serve_port_in_use_is_a_one_line_error(capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", "--model", "cpu-tiny", "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert f"error: cannot listen on 127.0.0.1:{port}: Address already in use" in err
    assert "Traceback" not in err
