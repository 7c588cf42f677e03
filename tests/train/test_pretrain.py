"""Pretraining: data windows and cache, the real CLI end to end, exact resume (also after SIGKILL)."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from customgpt.checkpoints import load_model
from customgpt.cli import main as cli_main
from customgpt.constants import EOT_ID
from customgpt.data.pretrain import TokenWindows, cache_path, epoch_order, load_tokens, split_tokens
from customgpt.errors import ConfigError
from customgpt.tokenizer import get_tokenizer
from customgpt.train.config import load_config
from customgpt.train.logging import read_metrics
from customgpt.train.pretrain import PretrainConfig, pretrain

REPO = Path(__file__).resolve().parents[2]


def tiny_args(verdict: Path, cache: Path, out: Path, *extra: str) -> list[str]:
    """A 2-layer, 32-wide model on 32-token windows of the-verdict: steps take milliseconds."""
    return [
        "--model.preset", "cpu-tiny", "--model.n_embd", "32", "--model.n_head", "2", "--model.context_length", "32",
        "--data.source", str(verdict), "--data.context_length", "32", "--data.cache_dir", str(cache),
        "--train.batch_size", "4", "--train.eval_iters", "2", "--train.lr", "2e-2", "--train.warmup_steps", "2",
        "--sample.max_new_tokens", "4", "--logging.progress", "false", "--logging.plots", "false",
        "--runtime.device", "cpu", "--logging.out_dir", str(out), *extra,
    ]


def losses(run_dir: Path, key: str = "loss") -> dict[int, float]:
    return {r["step"]: r[key] for r in read_metrics(run_dir) if key in r}


def run_cli(args: list[str], **kwargs) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "customgpt", "pretrain", *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def verdict(shared_datasets) -> Path:
    return shared_datasets / "the-verdict.txt"


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("token-cache")


# --------------------------------------------------------------------------- data


def test_verdict_windows_match_the_book(verdict, cache):
    tokens = load_tokens([verdict], get_tokenizer(), cache)
    assert len(tokens) == 5145 and tokens.dtype == np.uint16
    train, val = split_tokens(tokens, 0.1)
    train_w, val_w = TokenWindows(train, 256, 256), TokenWindows(val, 256, 256)
    assert (len(train_w) // 2, len(val_w)) == (9, 2)  # the book: 9 training batches of 2, 2 validation windows
    x, y = train_w[1]
    assert x.tolist() == tokens[256:512].tolist() and y.tolist() == tokens[257:513].tolist()
    assert len(TokenWindows(train, 256, 128)) == 35  # overlapping windows with a smaller stride
    assert sorted(epoch_order(18, seed=1, epoch=0, shuffle=True)) == list(range(18))
    assert epoch_order(18, seed=1, epoch=0, shuffle=True) != epoch_order(18, seed=1, epoch=1, shuffle=True)


def test_cache_is_keyed_by_content_and_documents_are_joined(tmp_path):
    tok = get_tokenizer()
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("Hello world.")
    b.write_text("Second document.")
    joined = load_tokens([a, b], tok, tmp_path / "cache")
    assert joined.tolist() == tok.encode("Hello world.") + [EOT_ID] + tok.encode("Second document.")
    first = cache_path([a, b], tok, tmp_path / "cache")
    assert first.is_file()
    a.write_text("Hello there.")  # an edited file gets a new cache entry
    assert cache_path([a, b], tok, tmp_path / "cache") != first
    assert load_tokens([a, b], tok, tmp_path / "cache")[:3].tolist() == tok.encode("Hello there.")[:3]


# --------------------------------------------------------------------------- errors before training


def test_config_and_data_errors_stop_before_training(verdict, cache, tmp_path, capsys):
    out = tmp_path / "run"
    assert cli_main(["pretrain", *tiny_args(tmp_path / "missing.txt", cache, out)]) == 2
    err = capsys.readouterr().err
    assert "data.source" in err and "missing.txt" in err
    assert not (out / "metrics.jsonl").exists() and not (out / "checkpoints").exists()

    assert cli_main(["pretrain", *tiny_args(verdict, cache, out, "--train.lrr", "1")]) == 2
    assert "unknown config key 'train.lrr'" in capsys.readouterr().err
    assert cli_main(["pretrain", *tiny_args(verdict, cache, out, "--logging.plots", "nope")]) == 2
    assert "logging.plots: expected true or false, got 'nope'" in capsys.readouterr().err
    assert cli_main(["pretrain", *tiny_args(verdict, cache, out, "--resume")]) == 2
    assert "no checkpoint to resume from" in capsys.readouterr().err
    assert not out.exists()


# --------------------------------------------------------------------------- end to end


def test_cli_end_to_end(verdict, cache, tmp_path, capsys):
    out = tmp_path / "run"
    args = tiny_args(verdict, cache, out, "--train.max_steps", "10", "--train.eval_every", "5",
                     "--logging.plots", "true", "--model.dropout", "0.0")
    proc = run_cli(args)
    stdout, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, stdout
    assert "trained 10 steps" in stdout

    for name in ("config.yaml", "metrics.jsonl", "loss.png", "lr.png", "final/model.safetensors",
                 "checkpoints/last/manifest.json", "checkpoints/best/manifest.json"):
        assert (out / name).is_file(), name
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert load_config(PretrainConfig, out / "config.yaml") == load_config(PretrainConfig, None, args)

    val = losses(out, "val_loss")
    assert sorted(val) == [0, 5, 10]
    assert val[0] == pytest.approx(math.log(50257), abs=0.15)  # an untrained model is ~uniform
    assert val[10] < val[5] < val[0] - 0.5  # validation loss went down
    train = losses(out)
    assert sorted(train) == list(range(1, 11)) and train[10] < train[1]
    record = next(r for r in read_metrics(out) if r["step"] == 3)
    assert {"loss", "lr", "grad_norm", "tokens_per_s", "elapsed", "tokens"} <= set(record)
    assert any("sample" in r and r["sample"].startswith("Every effort moves you") for r in read_metrics(out))

    final = load_model(out / "final")
    assert final.config.n_embd == 32 and final.config.context_length == 32
    assert json.loads((out / "checkpoints/best/metadata.json").read_text())["step"] == 10

    (out / "loss.png").unlink()
    assert cli_main(["pretrain", "--plot", str(out)]) == 0
    assert (out / "loss.png").is_file()
    capsys.readouterr()
    # the same folder again without --resume is refused rather than overwritten
    assert cli_main(["pretrain", *args]) == 2
    assert "already holds a run" in capsys.readouterr().err


# --------------------------------------------------------------------------- resume


def test_resume_is_exact(verdict, cache, tmp_path):
    """Stop after 3 of 7 steps, resume, and get exactly the uninterrupted losses (dropout on)."""
    extra = ("--train.max_steps", "7", "--train.eval_every", "3", "--model.dropout", "0.1",
             "--sample.max_new_tokens", "0", "--train.micro_batch_size", "2")
    full_dir, split_dir = tmp_path / "full", tmp_path / "split"
    pretrain(load_config(PretrainConfig, None, tiny_args(verdict, cache, full_dir, *extra)))
    cfg = load_config(PretrainConfig, None, tiny_args(verdict, cache, split_dir, *extra))
    first = pretrain(cfg, stop_after=3)
    assert first["steps"] == 3 and not (split_dir / "final").exists()
    assert pretrain(cfg, resume=True)["steps"] == 7

    full, split = losses(full_dir), losses(split_dir)
    assert sorted(split) == list(range(1, 8))
    for step in full:
        assert split[step] == pytest.approx(full[step], abs=1e-6), step
    for step, value in losses(full_dir, "val_loss").items():
        assert losses(split_dir, "val_loss")[step] == pytest.approx(value, abs=1e-6)


def test_resume_after_sigkill_matches_the_uninterrupted_run(verdict, cache, tmp_path):
    """SIGKILL the real CLI after a checkpoint was written, resume it, compare every step."""
    extra = ["--train.max_steps", "12", "--train.eval_every", "6", "--train.save_every", "3",
             "--model.dropout", "0.1", "--sample.max_new_tokens", "0"]
    ref_dir, run_dir = tmp_path / "reference", tmp_path / "killed"
    reference = run_cli(tiny_args(verdict, cache, ref_dir, *extra))
    victim = run_cli(tiny_args(verdict, cache, run_dir, *extra))
    deadline = time.monotonic() + 240
    while victim.poll() is None and time.monotonic() < deadline:
        if (run_dir / "checkpoints" / "last" / "manifest.json").is_file():
            victim.send_signal(signal.SIGKILL)
            break
        time.sleep(0.01)
    victim.communicate(timeout=60)
    assert victim.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert max(losses(run_dir), default=0) < 12  # it really was cut short

    resumed = run_cli(tiny_args(verdict, cache, run_dir, *extra, "--resume"))
    out, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, out
    ref_out, _ = reference.communicate(timeout=300)
    assert reference.returncode == 0, ref_out

    ref, got = losses(ref_dir), losses(run_dir)
    assert sorted(got) == sorted(ref) == list(range(1, 13))
    for step in ref:
        assert got[step] == pytest.approx(ref[step], abs=1e-6), step
    assert losses(run_dir, "val_loss") == pytest.approx(losses(ref_dir, "val_loss"), abs=1e-6)
    assert (run_dir / "final" / "model.safetensors").is_file()


def test_refuses_to_resume_with_a_different_batch_size(verdict, cache, tmp_path):
    extra = ("--train.max_steps", "4", "--train.eval_every", "0", "--sample.max_new_tokens", "0")
    cfg = load_config(PretrainConfig, None, tiny_args(verdict, cache, tmp_path / "r", *extra))
    pretrain(cfg, stop_after=2)
    changed = load_config(PretrainConfig, None, tiny_args(verdict, cache, tmp_path / "r", *extra, "--train.batch_size", "8"))
    with pytest.raises(ConfigError, match="steps per epoch"):
        pretrain(changed, resume=True)
