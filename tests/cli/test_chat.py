"""``customgpt chat`` end to end (a real process), on a random preset model."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from customgpt.checkpoints import load_model
from customgpt.generate import ChatSession, SamplingParams
from customgpt.tokenizer import get_tokenizer

MODEL = "cpu-tiny"  # 2 layers, 64 wide, GPT-2 vocabulary, random weights


CHAT = [sys.executable, "-m", "customgpt", "chat", "--model", MODEL, "--device", "cpu", "--seed", "0", "--temperature", "0"]


def chat_process(stdin: str, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONIOENCODING": "utf-8", "OMP_NUM_THREADS": "1"}
    return subprocess.run(CHAT + list(extra), input=stdin, capture_output=True, text=True, timeout=300, env=env)


def test_chat_two_turns_reset_and_eof():
    proc = chat_process("Hi\n/reset\nHi\nHow are you?\n", "--max-new-tokens", "6")
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr and "[history cleared]" in proc.stderr
    # The same replies from the library: a reset forgets everything, the third turn sees the second.
    session = ChatSession(load_model(MODEL, seed=0), get_tokenizer(), "alpaca", SamplingParams(temperature=0, max_new_tokens=6))
    first = "".join(session.send("Hi"))
    session.reset()
    again = "".join(session.send("Hi"))
    third = "".join(session.send("How are you?"))
    assert first == again
    assert proc.stdout == f"{first}\n{again}\n{third}\n"


def test_ctrl_c_stops_the_reply_but_not_the_chat_and_exit_quits():
    env = {**os.environ, "PYTHONIOENCODING": "utf-8", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        CHAT + ["--max-new-tokens", "100000", "--no-stop-at-eot"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
    )
    try:
        proc.stdin.write(b"Tell me a long story\n")
        proc.stdin.flush()
        assert proc.stdout.read(1)  # the reply is streaming
        proc.send_signal(signal.SIGINT)
        time.sleep(0.5)
        # After /exit nothing is read: "Hi" would otherwise start another endless reply.
        proc.stdin.write(b"/exit\nHi\n")
        proc.stdin.close()
        code = proc.wait(timeout=120)
        err = proc.stderr.read().decode()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert code == 0, err
    assert "[reply interrupted]" in err and "Traceback" not in err




def test_a_line_that_is_not_utf8_is_reported_and_skipped():
    env = {**os.environ, "PYTHONIOENCODING": "utf-8", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(CHAT + ["--max-new-tokens", "3"], input=b"caf\xe9 ok\nHi\n", capture_output=True,
                          timeout=300, env=env)
    err = proc.stderr.decode()
    assert proc.returncode == 0 and "Traceback" not in err
    assert "error: standard input, line 1: not UTF-8 text (byte 3, 0xe9): invalid continuation byte (message skipped)" in err
    session = ChatSession(load_model(MODEL, seed=0), get_tokenizer(), "alpaca", SamplingParams(temperature=0, max_new_tokens=3))
    assert proc.stdout.decode() == "".join(session.send("Hi")) + "\n"  # only "Hi" was answered


def test_a_seed_torch_cannot_take_is_one_line():
    proc = chat_process("Hi\n", "--seed", "1180591620717411303424")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: seed must be an integer in [0, 18446744073709551615]")


def test_chat_uses_the_prompt_style_the_model_folder_records(tmp_path):
    import json

    from customgpt.checkpoints import save_model

    folder = tmp_path / "tuned"
    save_model(load_model(MODEL, seed=0), folder, metadata={"prompt_style": {"name": "phi3"}})
    assert json.loads((folder / "metadata.json").read_text())["prompt_style"] == {"name": "phi3"}
    env = {**os.environ, "PYTHONIOENCODING": "utf-8", "OMP_NUM_THREADS": "1"}
    base = [sys.executable, "-m", "customgpt", "chat", "--model", str(folder), "--device", "cpu", "--max-new-tokens", "2"]
    proc = subprocess.run(base, input="Hi\n", capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0 and "(prompt style phi3)" in proc.stderr, proc.stderr
    proc = subprocess.run(base + ["--prompt-style", "alpaca"], input="Hi\n", capture_output=True, text=True,
                          timeout=300, env=env)
    assert proc.returncode == 0 and "(prompt style alpaca)" in proc.stderr, proc.stderr
