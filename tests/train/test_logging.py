"""What a run reports: metrics.jsonl (flushed, torn lines skipped, trimmed on resume), the
progress bar, tokens/s, and the PNG plots."""

from __future__ import annotations

import builtins
import json
import math
import sys

import pytest

from customgpt.errors import ConfigError, CustomGPTError
from customgpt.train import logging as run_logging
from customgpt.train.logging import METRICS_NAME, MetricsLogger, Progress, Throughput, plot_run, read_metrics

PNG = b"\x89PNG\r\n\x1a\n"


def _log(run_dir, records, **kwargs) -> None:
    logger = MetricsLogger(run_dir, **kwargs)
    for record in records:
        logger.log(record)
    logger.close()


def test_records_round_trip_and_are_on_disk_before_close(tmp_path):
    logger = MetricsLogger(tmp_path / "run")
    logger.log({"step": 1, "loss": 3.5, "lr": 1e-3})
    assert read_metrics(tmp_path / "run") == [{"step": 1, "loss": 3.5, "lr": 1e-3}]  # flushed as written
    logger.log({"step": 2, "val_loss": 3.0, "sample": "Every effort"})
    logger.close()
    logger.log({"step": 3})  # after close: ignored
    assert [r["step"] for r in read_metrics(tmp_path / "run")] == [1, 2]


def test_a_torn_last_line_is_skipped_and_a_missing_file_is_empty(tmp_path):
    _log(tmp_path, [{"step": 1, "loss": 2.0}])
    with open(tmp_path / METRICS_NAME, "a", encoding="utf-8") as fh:
        fh.write('{"step": 2, "lo')  # a crash in the middle of a line
    assert read_metrics(tmp_path) == [{"step": 1, "loss": 2.0}]
    assert read_metrics(tmp_path / "nothing-here") == []


def test_a_new_run_starts_a_fresh_file_and_a_resume_drops_later_steps(tmp_path):
    _log(tmp_path, [{"step": s, "loss": 1.0 / s} for s in range(1, 6)])
    _log(tmp_path, [{"step": 4, "loss": 0.1}], resume_step=3)
    assert [(r["step"], r["loss"]) for r in read_metrics(tmp_path)] == [(1, 1.0), (2, 0.5), (3, 1 / 3), (4, 0.1)]
    _log(tmp_path, [{"step": 1, "loss": 9.0}])
    assert read_metrics(tmp_path) == [{"step": 1, "loss": 9.0}]


def test_a_disabled_logger_writes_nothing(tmp_path):
    _log(tmp_path / "rank1", [{"step": 1, "loss": 1.0}], enabled=False)
    assert not (tmp_path / "rank1").exists()


def test_tensorboard_without_the_package_is_a_config_error(tmp_path, monkeypatch):
    real_import = builtins.__import__

    def no_tensorboard(name, *args, **kwargs):
        if name.startswith("torch.utils.tensorboard"):
            raise ImportError("No module named 'tensorboard'")
        return real_import(name, *args, **kwargs)

    monkeypatch.delitem(sys.modules, "torch.utils.tensorboard", raising=False)
    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    with pytest.raises(ConfigError, match=r"logging\.tensorboard: TensorBoard is not installed"):
        MetricsLogger(tmp_path, tensorboard=True)


def test_progress_without_a_bar_prints_only_when_echoing(capsys):
    quiet = Progress(10, enabled=False)
    quiet.update(loss=1.0, lr=1e-3, tokens_per_s=100.0)
    quiet.write("hidden")
    echo = Progress(10, enabled=False, echo=True)
    echo.write("step 5: val loss 2.000")
    quiet.close()
    echo.close()
    assert capsys.readouterr().out == "step 5: val loss 2.000\n"


def test_progress_bar_shows_loss_lr_and_tokens_per_second(capsys):
    bar = Progress(4, initial=1, desc="train")
    bar.update(loss=2.34567, lr=3e-4, tokens_per_s=12345.6)
    bar.write("a line")
    bar.close()
    captured = capsys.readouterr()
    assert "a line" in captured.out + captured.err
    text = captured.err
    assert "train" in text and "2/4" in text
    assert "loss=2.346" in text and "lr=3.00e-04" in text and "tok/s=12,346" in text


def test_throughput_counts_tokens_since_the_last_call(monkeypatch):
    clock = iter([100.0, 102.0, 102.5, 102.5])
    monkeypatch.setattr(run_logging.time, "perf_counter", lambda: next(clock))
    meter = Throughput()
    assert meter.rate(1000) == pytest.approx(500.0)  # 2 s since start
    assert meter.rate(1000) == pytest.approx(2000.0)  # 0.5 s since the last call
    assert meter.rate(10) == math.inf  # no time elapsed


def test_plot_run_draws_loss_and_lr(tmp_path):
    records = [{"step": s, "loss": 4.0 - 0.1 * s, "lr": 1e-3 * s} for s in range(1, 11)]
    records += [{"step": 5, "val_loss": 3.6}, {"step": 10, "val_loss": float("nan")}, {"step": 10, "sample": "x"}]
    _log(tmp_path / "run", records)
    written = plot_run(tmp_path / "run", tmp_path / "plots")
    assert [p.name for p in written] == ["loss.png", "lr.png"]
    for path in written:
        assert path.parent == tmp_path / "plots" and path.read_bytes()[:8] == PNG


def test_plot_run_without_lr_draws_only_the_loss_and_an_empty_run_is_an_error(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / METRICS_NAME).write_text(json.dumps({"step": 1, "loss": 2.0}) + "\n")
    assert [p.name for p in plot_run(tmp_path / "run")] == ["loss.png"]
    assert (tmp_path / "run" / "loss.png").is_file()
    with pytest.raises(CustomGPTError, match=r"no metrics to plot: .*metrics\.jsonl is missing or empty"):
        plot_run(tmp_path / "empty")
