"""``customgpt generate`` and ``customgpt chat`` end to end, on a random preset model."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from customgpt.checkpoints import load_model
from customgpt.cli import main
from customgpt.generate import ChatSession, SamplingParams, generate_text
from customgpt.prompts import get_prompt_style
from customgpt.tokenizer import get_tokenizer

MODEL = "cpu-tiny"  # 2 layers, 64 wide, GPT-2 vocabulary, random weights
BASE = ["generate", "--model", MODEL, "--device", "cpu", "--prompt", "Hello there"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    """Run the CLI in this process; argparse's errors exit through SystemExit."""
    try:
        code = main(list(argv))
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def run_json(capsys, *extra: str) -> dict:
    code, out, err = run_cli(capsys, *BASE, "--json", *extra)
    assert code == 0, err
    return json.loads(out)


def test_json_output_has_text_counts_reason_and_speed(capsys):
    result = run_json(capsys, "--max-new-tokens", "7", "--seed", "3", "--no-stop-at-eot")
    assert result["model"] == MODEL
    assert result["prompt_tokens"] == len(get_tokenizer().encode("Hello there"))
    assert result["completion_tokens"] == 7 and len(result["token_ids"]) == 7
    assert result["finish_reason"] == "length"
    assert result["tokens_per_second"] > 0
    assert result["text"] == get_tokenizer().decode(result["token_ids"])


def test_streamed_text_equals_the_library_result(capsys):
    code, out, err = run_cli(capsys, *BASE, "--max-new-tokens", "9", "--temperature", "0", "--no-stop-at-eot")
    assert code == 0
    model = load_model(MODEL, seed=0)
    want = generate_text(model, get_tokenizer(), "Hello there", SamplingParams(temperature=0, max_new_tokens=9, stop_at_eot=False))
    assert out == want.text + "\n"
    assert "random and untrained" in err  # a preset: the user is told the weights are random
    assert "[9 tokens," in err and "finish: length]" in err


def test_no_cache_gives_the_same_greedy_text(capsys):
    args = ("--max-new-tokens", "12", "--temperature", "0", "--no-stop-at-eot")
    assert run_json(capsys, *args)["token_ids"] == run_json(capsys, *args, "--no-cache")["token_ids"]


def test_same_seed_same_text(capsys):
    a = run_json(capsys, "--max-new-tokens", "8", "--seed", "5", "--top-k", "40", "--top-p", "0.9")
    b = run_json(capsys, "--max-new-tokens", "8", "--seed", "5", "--top-k", "40", "--top-p", "0.9")
    assert a["token_ids"] == b["token_ids"]


def test_stop_option_ends_the_output_before_the_stop_string(capsys):
    args = ("--max-new-tokens", "12", "--temperature", "0", "--no-stop-at-eot")
    full = run_json(capsys, *args)["text"]
    stop = full[5:8]
    code, out, _ = run_cli(capsys, *BASE, *args, "--stop", "zzz-never", "--stop", stop)
    assert code == 0 and out == full[: full.find(stop)] + "\n"
    assert run_json(capsys, *args, "--stop", stop)["finish_reason"] == "stop"


def test_prompt_style_wraps_the_prompt(capsys):
    result = run_json(capsys, "--prompt-style", "alpaca", "--input", "some input", "--max-new-tokens", "2")
    wrapped = get_prompt_style("alpaca").format_instruction("Hello there", "some input")
    assert result["prompt_tokens"] == len(get_tokenizer().encode(wrapped))


def test_prompt_from_stdin(capsys, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO("Read from stdin"))
    code, out, err = run_cli(capsys, "generate", "--model", MODEL, "--prompt", "-", "--json", "--max-new-tokens", "1")
    assert code == 0 and json.loads(out)["prompt_tokens"] == len(get_tokenizer().encode("Read from stdin"))


def test_context_full_notice(capsys):
    # cpu-tiny has a 256-token window: 2 + 260 tokens must crop from the left.
    code, _, err = run_cli(capsys, *BASE, "--max-new-tokens", "260", "--temperature", "0", "--no-stop-at-eot")
    assert code == 0 and "context full (256 tokens): cropping from the left" in err


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--temperature", "-1"], "error: temperature must be a number >= 0"),
        (["--top-p", "1.5"], "error: top_p must be a number in (0, 1]"),
        (["--top-k", "-2"], "error: top_k must be an integer >= 0"),
        (["--min-p", "1"], "error: min_p must be a number in [0, 1)"),
        (["--repetition-penalty", "0"], "error: repetition_penalty must be a number > 0"),
        (["--max-new-tokens", "-5"], "error: max_new_tokens must be an integer >= 0"),
        (["--stop", ""], "error: every stop string must be a non-empty string"),
        (["--temperature", "warm"], "error: argument --temperature: invalid float value: 'warm'"),
        (["--input", "x"], "error: --input needs --prompt-style"),
        (["--prompt-style", "chatml"], "error: argument --prompt-style: invalid choice: 'chatml'"),
    ],
)
def test_malformed_options_exit_2_with_one_line(capsys, extra, message):
    code, out, err = run_cli(capsys, *BASE, *extra)
    assert code == 2
    assert err.startswith(message), err
    assert len(err.strip().splitlines()) == 1, err


def test_unknown_model_is_one_line(capsys):
    code, _, err = run_cli(capsys, "generate", "--model", "no-such-model", "--prompt", "x")
    assert code == 2 and err.startswith("error: unknown model 'no-such-model'") and len(err.splitlines()) == 1


# --------------------------------------------------------------------------- chat (a real process)


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


def test_stop_escapes_are_understood():
    from customgpt.cli.generate import unescape

    assert unescape(r"\n\nUser:") == "\n\nUser:"
    assert unescape(r"a\tb\\n") == "a\tb\\n"
    assert unescape("plain \\x") == "plain \\x"
