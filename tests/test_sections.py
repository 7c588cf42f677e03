"""Config sections (customgpt.sections): checked on construction, finite floats, Literal
choices, the section's own validate(), FieldError naming the key, to_dict for YAML."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import pytest

from customgpt.errors import ConfigError
from customgpt.sections import FieldError, Section, to_dict
from customgpt.train.config import LoggingConfig, ModelSection, OptimConfig, RuntimeConfig, TrainConfig


@dataclass
class Inner(Section):
    ratio: float = 0.5
    mode: Literal["a", "b"] | None = None


@dataclass
class Outer(Section):
    steps: int = 3
    betas: tuple[float, float] = (0.9, 0.999)
    kind: Literal["x", "y"] = "x"
    inner: Inner = field(default_factory=Inner)
    names: list[str] = field(default_factory=lambda: ["a"])

    def validate(self) -> None:
        if self.steps < 1:
            raise FieldError("steps", f"must be >= 1, got {self.steps}")


def test_field_error_is_a_config_error_with_key_and_reason():
    err = FieldError("train.lr", "must be > 0")
    assert isinstance(err, ConfigError)
    assert (err.key, err.reason, str(err)) == ("train.lr", "must be > 0", "train.lr: must be > 0")


def test_non_finite_floats_are_refused_by_key_and_index():
    assert Outer(betas=(0.9, 0.95)).betas == (0.9, 0.95)
    with pytest.raises(FieldError, match=r"^ratio: must be a finite number, got nan$"):
        Inner(ratio=math.nan)
    with pytest.raises(FieldError, match=r"^betas\[1\]: must be a finite number, got -inf$"):
        Outer(betas=(0.9, -math.inf))


def test_literal_choices_finite_floats_and_validate_run_on_construction():
    assert Outer().kind == "x" and Inner(mode=None).mode is None and Inner(mode="b").mode == "b"
    with pytest.raises(FieldError, match=r"^kind: expected one of 'x', 'y', got 'z'$"):
        Outer(kind="z")
    with pytest.raises(FieldError, match=r"^mode: expected one of 'a', 'b', got 'c'$"):  # Optional Literal
        Inner(mode="c")
    with pytest.raises(FieldError, match=r"^ratio: must be a finite number, got inf$"):
        Inner(ratio=math.inf)
    with pytest.raises(FieldError, match=r"^steps: must be >= 1, got 0$"):
        Outer(steps=0)


def test_to_dict_gives_plain_nested_data():
    data = to_dict(Outer(inner=Inner(ratio=0.25, mode="a")))
    assert data == {"steps": 3, "betas": [0.9, 0.999], "kind": "x", "inner": {"ratio": 0.25, "mode": "a"},
                    "names": ["a"]}
    assert isinstance(data["betas"], list)
    assert to_dict({"k": (1, 2)}) == {"k": [1, 2]}


def test_sections_are_validated_on_direct_construction():
    with pytest.raises(ConfigError, match=r"^lr: must be > 0"):
        TrainConfig(lr=0.0)
    with pytest.raises(ConfigError, match=r"^lr: must be a finite number, got nan"):
        TrainConfig(lr=float("nan"))
    with pytest.raises(ConfigError, match=r"^betas\[1\]: must be a finite number, got inf"):
        OptimConfig(betas=(0.9, float("inf")))
    with pytest.raises(ConfigError, match=r"^precision: expected one of 'auto', 'fp32', 'bf16', 'fp16', got 'fp8'$"):
        RuntimeConfig(precision="fp8")
    with pytest.raises(ConfigError, match=r"^impl: expected one of 'fast', 'explicit', got 'slow'$"):
        ModelSection(impl="slow")
    assert ModelSection(impl=None).impl is None
    with pytest.raises(ConfigError, match="log_every"):
        LoggingConfig(log_every=0)
    with pytest.raises(ConfigError, match="threads"):
        RuntimeConfig(threads=0)
    with pytest.raises(ConfigError, match=r"^n_layer: cannot change the shape of weights loaded from model.init "
                       r"\(set it to null: --model.n_layer null\)$"):
        ModelSection(init="some/folder", n_layer=3)
