"""``customgpt generate`` end to end, on a random preset model."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys

import pytest

from customgpt.checkpoints import load_model
from customgpt.cli import main
from customgpt.generate import SamplingParams, generate_text
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


def test_stop_escapes_are_understood():
    from customgpt.cli.generate import unescape

    assert unescape(r"\n\nUser:") == "\n\nUser:"
    assert unescape(r"a\tb\\n") == "a\tb\\n"
    assert unescape("plain \\x") == "plain \\x"


# --------------------------------------------------------------------------- hostile input (issue 17)


def cli_process(args: list[str], stdin: bytes = b"", timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONIOENCODING": "utf-8", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "customgpt", *args], input=stdin, capture_output=True,
                          timeout=timeout, env=env)


def test_invalid_utf8_on_stdin_is_an_error_naming_the_byte():
    proc = cli_process(["generate", "--model", MODEL, "--prompt", "-"], stdin=b"caf\xe9 \xff\xfe ok")
    err = proc.stderr.decode()
    assert proc.returncode == 2 and "Traceback" not in err
    assert err.strip().splitlines()[-1] == "error: standard input: not UTF-8 text (byte 3, 0xe9): invalid continuation byte"
    assert proc.stdout == b""


def test_invalid_utf8_elsewhere_in_the_prompt(capsys, monkeypatch):
    """Variants: a stray byte after valid text on stdin, and a --prompt argument that the
    shell passed as bytes that are not UTF-8 (Python hands them over as lone surrogates)."""
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO("héllo ".encode() + b"\xff")))
    code, out, err = run_cli(capsys, "generate", "--model", MODEL, "--prompt", "-", "--json")
    assert (code, out) == (2, "")
    assert err == "error: standard input: not UTF-8 text (byte 7, 0xff): invalid start byte\n"
    code, out, err = run_cli(capsys, "generate", "--model", MODEL, "--prompt", "ok \udcff", "--json")
    assert code == 2 and err == "error: --prompt: not UTF-8 text (byte 3, 0xff): invalid start byte\n"


@pytest.mark.parametrize("seed", ["1180591620717411303424", "18446744073709551616", "-1"])
def test_seed_outside_what_torch_accepts_is_one_line(capsys, seed):
    code, out, err = run_cli(capsys, *BASE, "--seed", seed)
    assert code == 2 and out == ""
    assert err == (f"error: seed must be an integer in [0, 18446744073709551615] (a 64-bit seed, what torch "
                   f"accepts) or None, got {int(seed)}\n")


def test_the_largest_seed_works(capsys):
    result = run_json(capsys, "--max-new-tokens", "3", "--seed", "18446744073709551615")
    assert result["completion_tokens"] == 3


def test_a_huge_token_budget_streams_instead_of_allocating():
    """--max-new-tokens 1000000000000 once tried to allocate 8 TB: now it streams until stopped."""
    env = {**os.environ, "PYTHONIOENCODING": "utf-8", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "customgpt", *BASE, "--max-new-tokens", "1000000000000", "--no-stop-at-eot"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
    )
    try:
        assert proc.stdout.read(20)  # text is streaming
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=120)
        err = proc.stderr.read().decode()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert code == 130 and "Traceback" not in err and "finish: interrupted" in err


def test_text_in_a_prompt_style_is_plain_text_and_a_raw_prompt_keeps_the_separator(capsys):
    text = "what is <|endoftext|> in GPT-2?"
    tok = get_tokenizer()
    styled = run_json(capsys, "--prompt", text, "--prompt-style", "alpaca", "--max-new-tokens", "1")
    wrapped = get_prompt_style("alpaca").format_instruction(text)
    assert styled["prompt_tokens"] == len(tok.encode(wrapped, allowed_special="none"))
    assert styled["prompt_tokens"] != len(tok.encode(wrapped))  # the marker's text is 7 tokens, not 1
    raw = run_json(capsys, "--prompt", text, "--max-new-tokens", "1")
    assert raw["prompt_tokens"] == len(tok.encode(text)) and tok.eot_id in tok.encode(text)


def test_a_padded_model_vocabulary_never_yields_undecodable_ids(tmp_path, capsys):
    """A Hugging Face GPT-2 folder with vocab_size 50,304 (nanoGPT's padding) whose padded ids
    have the highest logits: generation runs to the end with ids the tokenizer knows."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    hf = GPT2LMHeadModel(GPT2Config(vocab_size=50304, n_positions=64, n_embd=32, n_layer=1, n_head=2))
    with torch.no_grad():
        hf.transformer.wte.weight[50257:] = hf.transformer.wte.weight[:47] * 100  # the tied head too
    hf.save_pretrained(tmp_path / "padded")
    for extra in (["--temperature", "0"], ["--temperature", "1.5", "--seed", "4"]):
        code, out, err = run_cli(capsys, "generate", "--model", str(tmp_path / "padded"), "--prompt", "Hello",
                                 "--json", "--max-new-tokens", "20", "--no-stop-at-eot", *extra)
        assert code == 0, err
        result = json.loads(out)
        assert result["completion_tokens"] == 20 and max(result["token_ids"]) < 50257
