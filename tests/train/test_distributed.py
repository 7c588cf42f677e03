"""Data parallelism and accumulation give the same training as one process with the same global batch."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from customgpt.train.config import load_config
from customgpt.train.pretrain import PretrainConfig, pretrain
from train.test_pretrain import losses, tiny_args

REPO = Path(__file__).resolve().parents[2]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def verdict(shared_datasets) -> Path:
    return shared_datasets / "the-verdict.txt"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(args: list[str]) -> None:
    pretrain(load_config(PretrainConfig, None, args))


def test_two_processes_match_one(verdict, tmp_path):
    """torchrun --nproc_per_node 2 (gloo, 2 x 2 sequences) == 1 process with batches of 4."""
    extra = ("--train.max_steps", "4", "--train.eval_every", "2", "--model.dropout", "0.0",
             "--sample.max_new_tokens", "0")
    cache = tmp_path / "cache"
    ddp_dir, one_dir = tmp_path / "ddp", tmp_path / "one"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), "-m", "customgpt", "pretrain", *tiny_args(verdict, cache, ddp_dir, *extra)]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("trained 4 steps") == 1  # only rank 0 reports
    _run(tiny_args(verdict, cache, one_dir, *extra))

    one, ddp = losses(one_dir), losses(ddp_dir)
    assert sorted(ddp) == sorted(one) == [1, 2, 3, 4]
    for step in one:
        assert ddp[step] == pytest.approx(one[step], abs=1e-5), step
    assert losses(ddp_dir, "val_loss") == pytest.approx(losses(one_dir, "val_loss"), abs=1e-5)
    assert one[4] != pytest.approx(one[1], abs=1e-3)  # the weights really moved
    assert (ddp_dir / "checkpoints" / "last" / "manifest.json").is_file()


def test_accumulation_matches_the_big_batch(verdict, tmp_path):
    """4 micro-batches of 2 accumulated == one batch of 8."""
    extra = ("--train.max_steps", "3", "--train.batch_size", "8", "--train.eval_every", "0",
             "--model.dropout", "0.0", "--sample.max_new_tokens", "0")
    cache = tmp_path / "cache"
    _run(tiny_args(verdict, cache, tmp_path / "big", *extra))
    _run(tiny_args(verdict, cache, tmp_path / "acc", *extra, "--train.micro_batch_size", "2"))
    big, acc = losses(tmp_path / "big"), losses(tmp_path / "acc")
    assert sorted(acc) == [1, 2, 3]
    for step in big:
        assert acc[step] == pytest.approx(big[step], abs=1e-5), step
