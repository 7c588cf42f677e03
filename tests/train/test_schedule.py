"""LR schedule values worked out by hand."""

from __future__ import annotations

import math

import pytest

from customgpt.train.config import TrainConfig
from customgpt.train.schedule import build_schedule, lr_at

# peak 1e-3 from 1e-4 over 10 warmup steps, then down to 1e-5 at step 110 (100 decay steps)
KW = dict(peak_lr=1e-3, total_steps=110, warmup_steps=10, initial_lr=1e-4, min_lr=1e-5)


@pytest.mark.parametrize(
    ("step", "expected"),
    [
        (0, 1e-4),  # warmup starts at initial_lr
        (5, 1e-4 + 0.5 * 9e-4),  # halfway up: 5.5e-4
        (9, 1e-4 + 0.9 * 9e-4),
        (10, 1e-3),  # peak
        (35, 1e-5 + 0.99e-3 * 0.5 * (1 + math.cos(math.pi * 0.25))),  # a quarter of the decay
        (60, 1e-5 + 0.99e-3 * 0.5),  # half-way: 5.05e-4
        (110, 1e-5),  # the end: min_lr
        (500, 1e-5),  # past the end stays at min_lr
    ],
)
def test_cosine_with_warmup(step, expected):
    assert lr_at(step, kind="cosine", **KW) == pytest.approx(expected, rel=1e-12)


def test_linear_and_constant():
    assert lr_at(60, kind="linear", **KW) == pytest.approx(1e-3 + (1e-5 - 1e-3) * 0.5)
    assert lr_at(85, kind="linear", **KW) == pytest.approx(1e-3 + (1e-5 - 1e-3) * 0.75)
    assert lr_at(110, kind="linear", **KW) == pytest.approx(1e-5)
    assert lr_at(5, kind="constant", **KW) == pytest.approx(5.5e-4)  # warmup applies to constant too
    assert lr_at(10, kind="constant", **KW) == lr_at(109, kind="constant", **KW) == 1e-3


def test_no_warmup_starts_at_peak():
    assert lr_at(0, peak_lr=4e-4, total_steps=90) == pytest.approx(4e-4)
    assert lr_at(45, peak_lr=4e-4, total_steps=90) == pytest.approx(2e-4)


def test_build_schedule_from_config():
    s = build_schedule(TrainConfig(lr=2e-3, warmup_fraction=0.1, min_lr=1e-4, schedule="linear"), 200)
    expected = dict(peak_lr=2e-3, total_steps=200, warmup_steps=20, min_lr=1e-4, kind="linear")
    assert [s(step) for step in range(0, 250, 5)] == [lr_at(step, **expected) for step in range(0, 250, 5)]
    assert s(10) == pytest.approx(1e-3)  # halfway up from initial_lr = 0
    assert s(110) == pytest.approx(2e-3 + (1e-4 - 2e-3) * 0.5)
    seven = build_schedule(TrainConfig(warmup_steps=7), 50)
    assert seven(6) < seven(7) == TrainConfig().lr  # the peak comes after 7 warmup steps
