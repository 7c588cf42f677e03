"""Pretraining: the real CLI end to end, exact resume (also after SIGKILL); data windows and cache: tests/data/test_pretrain.py."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from customgpt.checkpoints import load_model
from customgpt.cli import main as cli_main
from customgpt.errors import ConfigError
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
    second = pretrain(cfg, resume=True)
    assert second["steps"] == 7
    # issue 17.13: the summary's first loss is the run's, not that of the resumed part
    assert second["first_loss"] == first["first_loss"] and second["first_step"] == 1

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


# --------------------------------------------------------------------------- faults (issue 17)


class _Killed(BaseException):
    """Stands for SIGKILL at one point of the loop: nothing after it runs, nothing catches it."""


def _kill_on_call(monkeypatch, module, name: str, call: int) -> None:
    original, calls = getattr(module, name), []

    def wrapper(*args, **kwargs):
        calls.append(1)
        if len(calls) == call:
            raise _Killed
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, wrapper)


def _best_step_and_loss(out: Path) -> tuple[int, float]:
    meta = json.loads((out / "checkpoints/best/metadata.json").read_text())
    return meta["step"], meta["val_loss"]


def test_kill_between_best_and_last_never_leaves_best_stale(verdict, cache, tmp_path, monkeypatch, capsys):
    """Issue 17.6: at step 6 validation improves and both checkpoints are written; a kill
    between the two writes, then --resume, must end with checkpoints/best holding the best
    validation loss of the run (the old order left best one evaluation behind for ever)."""
    from customgpt.train import checkpoint as ckpt

    out = tmp_path / "run"
    args = tiny_args(verdict, cache, out, "--train.max_steps", "6", "--train.eval_every", "3",
                     "--train.save_every", "3", "--sample.max_new_tokens", "0", "--model.dropout", "0.0")
    # the run writes best and last at step 3 (2 writes), then again at step 6: kill at the 4th
    writes = ("save_checkpoint", "copy_checkpoint")
    calls: list[str] = []
    for name in writes:
        original = getattr(ckpt, name)

        def wrapper(*a, _original=original, _name=name, **k):
            calls.append(_name)
            if len(calls) == 4:
                raise _Killed
            return _original(*a, **k)

        monkeypatch.setattr(ckpt, name, wrapper)
    with pytest.raises(_Killed):
        pretrain(load_config(PretrainConfig, None, args))
    monkeypatch.undo()
    val = losses(out, "val_loss")
    assert sorted(val) == [0, 3, 6] and val[6] < val[3]
    assert _best_step_and_loss(out) == (6, pytest.approx(val[6]))  # best went first

    capsys.readouterr()
    assert cli_main(["pretrain", *args, "--resume"]) == 0
    val = losses(out, "val_loss")
    step, loss = _best_step_and_loss(out)
    assert loss == pytest.approx(min(val.values())) and val[step] == pytest.approx(loss)
    assert "best validation loss " + f"{min(val.values()):.3f}" in capsys.readouterr().out

    # issue 17.13: resuming the finished run says so instead of "train loss nan -> nan"
    assert cli_main(["pretrain", *args, "--resume"]) == 0
    assert capsys.readouterr().out == (
        f"the run in {out} is finished (6 of 6 steps, best validation loss {min(val.values()):.3f}): "
        f"nothing to resume\nfinal model: {out}/final\n"
    )
    # resuming it into another folder names the run the checkpoint belongs to, not the empty folder
    other = ["--logging.out_dir", str(tmp_path / "other")]
    assert cli_main(["pretrain", *args, *other, "--resume", str(out)]) == 0
    assert capsys.readouterr().out.endswith(f"nothing to resume\nfinal model: {out}/final\n")


def test_resume_repairs_a_best_left_behind_by_the_old_write_order(verdict, cache, tmp_path):
    """Variant of 17.6: a run folder written by the old order (last claims a best loss that
    checkpoints/best does not hold): resume copies last to best."""
    from customgpt.train import checkpoint as ckpt

    extra = ("--train.max_steps", "6", "--train.eval_every", "3", "--train.save_every", "3",
             "--sample.max_new_tokens", "0", "--model.dropout", "0.0")
    out, early = tmp_path / "run", tmp_path / "early"
    pretrain(load_config(PretrainConfig, None, tiny_args(verdict, cache, out, *extra)), stop_after=6)
    pretrain(load_config(PretrainConfig, None, tiny_args(verdict, cache, early, *extra)), stop_after=3)
    root = out / "checkpoints"
    import shutil

    shutil.rmtree(root / "best")
    shutil.copytree(early / "checkpoints/best", root / "best")  # stale: step 3
    claimed = ckpt.load_trainer_state(root / "last")["best_val_loss"]
    assert _best_step_and_loss(out)[1] > claimed
    assert ckpt.reconcile_best(root, claimed) == claimed
    assert _best_step_and_loss(out) == (6, pytest.approx(claimed))
    ckpt.verify_checkpoint(root / "best")


def _nan_after(monkeypatch, train_calls: int, value: float) -> None:
    """Make the training loss ``value`` from the ``train_calls``-th training forward on."""
    import torch

    from customgpt.train import pretrain as module

    original, calls = module.causal_lm_loss, []

    def loss(*args, **kwargs):
        result = original(*args, **kwargs)
        if torch.is_grad_enabled():
            calls.append(1)
            if len(calls) >= train_calls:
                return result * value
        return result

    monkeypatch.setattr(module, "causal_lm_loss", loss)


def test_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(verdict, cache, tmp_path, monkeypatch, capsys):
    """Issue 17.8: the loss turns nan at step 5; checkpoints were written at steps 2 and 4."""
    out = tmp_path / "run"
    args = tiny_args(verdict, cache, out, "--train.max_steps", "8", "--train.eval_every", "0",
                     "--train.save_every", "2", "--sample.max_new_tokens", "0", "--train.schedule", "constant",
                     "--train.warmup_steps", "0")
    _nan_after(monkeypatch, 5, float("nan"))
    assert cli_main(["pretrain", *args]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"error: the training loss became nan at step 5 (learning rate 0.02); the run stopped and saved "
        f"nothing of this step: the last good checkpoint is {out}/checkpoints/last (continue from it with "
        "--resume once changed); lower train.lr or set train.grad_clip\n"
    )
    from customgpt.train import checkpoint as ckpt

    state = ckpt.load_trainer_state(out / "checkpoints/last")
    assert state["step"] == 4 and not (out / "final").exists()
    assert max(losses(out)) == 4  # the bad step was not logged either
    monkeypatch.undo()
    assert cli_main(["pretrain", *args, "--resume"]) == 0  # continues from the good checkpoint


def test_infinite_loss_before_any_checkpoint(verdict, cache, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    args = tiny_args(verdict, cache, out, "--train.max_steps", "4", "--train.eval_every", "0",
                     "--sample.max_new_tokens", "0", "--train.schedule", "constant", "--train.warmup_steps", "0")
    _nan_after(monkeypatch, 1, float("inf"))
    assert cli_main(["pretrain", *args]) == 2
    err = capsys.readouterr().err
    assert err == ("error: the training loss became inf at step 1 (learning rate 0.02); the run stopped and "
                   "saved nothing of this step: no checkpoint was written yet; lower train.lr or set "
                   "train.grad_clip\n")
    assert "Traceback" not in err


@pytest.mark.parametrize("leftover", [None, ".last.1a2b3c4d.tmp"])
def test_run_that_failed_before_its_first_checkpoint_can_be_restarted(verdict, cache, tmp_path, capsys, leftover):
    """Issue 17.7: a run folder with an empty checkpoints/ (or only a half-written one)."""
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    if leftover:
        (out / "checkpoints" / leftover).mkdir()
        (out / "checkpoints" / leftover / "model.safetensors").write_bytes(b"half")
    args = tiny_args(verdict, cache, out, "--train.max_steps", "2", "--train.eval_every", "0",
                     "--sample.max_new_tokens", "0")
    assert cli_main(["pretrain", *args, "--resume"]) == 2
    captured = capsys.readouterr()
    assert captured.err == (f"error: nothing to resume in {out}: the run stopped before its first checkpoint "
                            "(checkpoints/ is empty); start it again without --resume\n")
    assert cli_main(["pretrain", *args]) == 0  # the advice works as written
    assert "trained 2 steps" in capsys.readouterr().out
