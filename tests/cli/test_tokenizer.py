"""``customgpt tokenizer`` (customgpt.cli.tokenizer): encode, decode, train; strict UTF-8
input, outputs that never replace an input, a closed pipe."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from customgpt.cli import main as cli_main
from customgpt.tokenizer import load_bpe, train_bpe

EOT = "<|endoftext|>"
SRC = Path(__file__).resolve().parents[2] / "src"


def _customgpt(*argv: str, stdin: bytes = b"", cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run the real command in a fresh process (what a user sees, tracebacks included)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run(
        [sys.executable, "-m", "customgpt", *argv], input=stdin, capture_output=True, timeout=120, env=env, cwd=cwd
    )


def test_cli_encode_decode(capsys):
    assert cli_main(["tokenizer", "encode", "Hello, world"]) == 0
    assert capsys.readouterr().out == "15496 11 995\n"
    assert cli_main(["tokenizer", "encode", f"Hi{EOT}", "--engine", "bpe"]) == 0
    assert capsys.readouterr().out == "17250 50256\n"
    assert cli_main(["tokenizer", "encode", f"Hi{EOT}", "--allowed-special", "none"]) == 0
    assert capsys.readouterr().out == "17250 27 91 437 1659 5239 91 29\n"
    assert cli_main(["tokenizer", "decode", "15496", "11", "995"]) == 0
    assert capsys.readouterr().out == "Hello, world\n"
    assert cli_main(["tokenizer", "decode", "15496,11,995", "--engine", "bpe"]) == 0
    assert capsys.readouterr().out == "Hello, world\n"
    assert cli_main(["tokenizer", "decode", "15496", "99999"]) == 2
    assert "token id 99999 is not in the vocabulary" in capsys.readouterr().err
    assert cli_main(["tokenizer", "decode", "abc"]) == 2
    assert "not a token id: 'abc'" in capsys.readouterr().err


def test_cli_train(tmp_path, shared_datasets, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text((shared_datasets / "the-verdict.txt").read_text(encoding="utf-8"), encoding="utf-8")
    out = tmp_path / "verdict.tiktoken"
    args = ["tokenizer", "train", str(corpus), "--vocab-size", "400", "--out", str(out)]
    assert cli_main([*args, "--hf-dir", str(tmp_path / "hf")]) == 0
    captured = capsys.readouterr()
    assert "trained 400 ids (143 merges, 1 special)" in captured.out
    assert "merge" in captured.err  # progress bar
    assert (tmp_path / "hf" / "merges.txt").is_file()
    assert load_bpe(out).mergeable_ranks == train_bpe(corpus, 400).mergeable_ranks
    text = "I had always thought Jack Gisburn"
    assert cli_main(["tokenizer", "encode", text, "--vocab", str(out)]) == 0
    ids = capsys.readouterr().out.split()
    assert list(map(int, ids)) == load_bpe(out).encode(text)
    assert cli_main(["tokenizer", "decode", *ids, "--vocab", str(out)]) == 0
    assert capsys.readouterr().out == text + "\n"
    assert cli_main(["tokenizer", "train", str(corpus), "--vocab-size", "100", "--out", str(out), "--force"]) == 2
    assert "at least 257" in capsys.readouterr().err
    assert (
        cli_main(["tokenizer", "train", str(tmp_path / "missing.txt"), "--vocab-size", "300", "--out", "x"])
        == 2
    )
    assert "not found" in capsys.readouterr().err


# --------------------------------------------------------------------------- invalid UTF-8 (17.5)


def test_invalid_utf8_on_stdin_names_the_byte_offset():
    proc = _customgpt("tokenizer", "encode", "--show", "-", stdin=b"caf\xe9 \xff\xfe ok")
    assert proc.returncode == 2
    assert proc.stdout == b""
    assert proc.stderr.decode() == (
        "error: standard input: not UTF-8 text (byte 3, 0xe9): invalid continuation byte\n"
    )


def test_truncated_utf8_sequence_at_the_end_is_refused_too():
    proc = _customgpt("tokenizer", "encode", "-", stdin="naïve ".encode() + "€".encode()[:2])
    assert proc.returncode == 2
    assert proc.stderr.decode() == (
        "error: standard input: not UTF-8 text (byte 7, 0xe282): unexpected end of data\n"
    )


def test_training_file_with_invalid_utf8_is_refused(tmp_path, capsys):
    corpus = tmp_path / "latin1.txt"
    corpus.write_bytes(b"plain text then caf" + b"\xe9\n" * 3)
    rc = cli_main(["tokenizer", "train", str(corpus), "--vocab-size", "260", "--out", str(tmp_path / "v.tiktoken")])
    err = capsys.readouterr().err
    assert rc == 2 and err == f"error: {corpus}: not UTF-8 text (byte 19, 0xe9): invalid continuation byte\n"
    assert not (tmp_path / "v.tiktoken").exists()


# --------------------------------------------------------------------------- outputs (17.9)


def test_train_never_writes_over_its_input(tmp_path):
    data = tmp_path / "data.csv"
    data.write_text("text,label\nhello there,ham\n" * 20, encoding="utf-8")
    before = data.read_bytes()
    proc = _customgpt("tokenizer", "train", "data.csv", "--vocab-size", "260", "--out", "data.csv", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.decode() == (
        "error: data.csv is the training file: choose another output (the input is never overwritten)\n"
    )
    assert data.read_bytes() == before


def test_train_refuses_its_input_under_another_name_even_with_force(tmp_path, capsys):
    (tmp_path / "sub").mkdir()
    data = tmp_path / "corpus.txt"
    data.write_text("hello there\n" * 50, encoding="utf-8")
    before = data.read_bytes()
    other_spelling = tmp_path / "sub" / ".." / "corpus.txt"
    argv = ["tokenizer", "train", str(data), "--vocab-size", "260", "--out", str(other_spelling), "--force"]
    assert cli_main(argv) == 2
    assert capsys.readouterr().err == (
        f"error: {other_spelling} is the training file: choose another output (the input is never overwritten)\n"
    )
    # the input inside --hf-dir (as vocab.json) is protected as well
    vocab_json = tmp_path / "hf" / "vocab.json"
    vocab_json.parent.mkdir()
    vocab_json.write_text("some text to train on\n" * 20, encoding="utf-8")
    argv = ["tokenizer", "train", str(vocab_json), "--vocab-size", "260", "--out", str(tmp_path / "v.tiktoken")]
    assert cli_main([*argv, "--hf-dir", str(tmp_path / "hf"), "--force"]) == 2
    assert "is the training file" in capsys.readouterr().err
    assert data.read_bytes() == before


def test_train_asks_force_for_an_existing_output(tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("hello there, general kenobi\n" * 50, encoding="utf-8")
    out = tmp_path / "vocab.tiktoken"
    out.write_text("precious\n", encoding="utf-8")
    argv = ["tokenizer", "train", str(corpus), "--vocab-size", "260", "--out", str(out), "--no-progress"]
    assert cli_main(argv) == 2
    assert capsys.readouterr().err == f"error: {out} already exists; pass --force to overwrite it\n"
    assert out.read_text(encoding="utf-8") == "precious\n"
    assert cli_main([*argv, "--force"]) == 0
    assert load_bpe(out).vocab_size == 260


# --------------------------------------------------------------------------- closed pipe (17.7)


def _pipe_into_head(tmp_path: Path, head: str, *argv: str) -> tuple[int, bytes, bytes]:
    big = tmp_path / "big.txt"
    big.write_text("hello world, this is a line of text\n" * 20000, encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    command = (
        f'"{sys.executable}" -m customgpt {" ".join(argv)} < "{big}" 2> "{tmp_path / "err.txt"}" | {head}; '
        'exit "${PIPESTATUS[0]}"'
    )
    proc = subprocess.run(["bash", "-c", command], capture_output=True, timeout=300, env=env)
    return proc.returncode, proc.stdout, (tmp_path / "err.txt").read_bytes()


def test_closed_pipe_ends_quietly(tmp_path):
    status, out, err = _pipe_into_head(tmp_path, "head -1", "tokenizer", "encode", "--show", "-")
    assert out == b"31373\t'hello'\n"
    assert err == b""
    assert status == 141  # as a program that SIGPIPE ended


def test_closed_pipe_after_one_byte_ends_quietly(tmp_path):
    status, out, err = _pipe_into_head(tmp_path, "head -c 1", "tokenizer", "encode", "--show", "-", "--engine", "bpe")
    assert out == b"3"
    assert err == b""
    assert status == 141
