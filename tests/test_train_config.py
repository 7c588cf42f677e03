"""The configuration framework: typed sections, YAML + dotted overrides, clear errors."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pytest

from customgpt.errors import ConfigError
from customgpt.train.config import (
    LoggingConfig,
    ModelSection,
    OptimConfig,
    RuntimeConfig,
    Section,
    TrainConfig,
    list_config_presets,
    load_config,
    parse_overrides,
    resolve_config_path,
    save_config,
    split_override_args,
)
from customgpt.train.pretrain import PretrainConfig


@dataclass
class Inner(Section):
    ratio: float = 0.5
    name: str | None = None
    mode: Literal["a", "b"] = "a"


@dataclass
class Schema(Section):
    flag: bool = True
    count: int = 3
    betas: tuple[float, float] = (0.9, 0.999)
    files: list[str] = field(default_factory=list)
    inner: Inner = field(default_factory=Inner)


def test_overrides_both_syntaxes_and_types():
    cfg = load_config(Schema, None, [
        "--count", "7", "--inner.ratio=3e-4", "--betas", "0.9,0.95", "--files", "a.txt,b.txt",
        "--inner.name", "x", "--inner.mode=b", "--flag=false",
    ])
    assert cfg.count == 7 and isinstance(cfg.count, int)
    assert cfg.inner.ratio == pytest.approx(3e-4)
    assert cfg.betas == (0.9, 0.95)
    assert cfg.files == ["a.txt", "b.txt"]
    assert cfg.inner.name == "x" and cfg.inner.mode == "b"
    assert cfg.flag is False


@pytest.mark.parametrize("text", ["false", "False", "FALSE", "0", "no", "off"])
def test_false_strings_parse_to_false(text):
    assert load_config(Schema, None, ["--flag", text]).flag is False


@pytest.mark.parametrize("text", ["true", "True", "1", "yes", "on"])
def test_true_strings_parse_to_true(text):
    assert load_config(Schema, None, ["--flag", text]).flag is True


def test_bare_flag_is_true_for_bools_and_an_error_otherwise():
    assert load_config(Schema, None, ["--flag=0", "--flag"]).flag is True
    with pytest.raises(ConfigError, match="count: needs a value"):
        load_config(Schema, None, ["--count"])


@pytest.mark.parametrize(
    ("overrides", "pattern"),
    [
        (["--flag", "maybe"], r"flag: expected true or false, got 'maybe' \(set in --flag\)"),
        (["--count", "3.5"], r"count: expected an integer"),
        (["--inner.ratio", "abc"], r"inner\.ratio: expected a number, got 'abc'"),
        (["--inner.mode", "c"], r"inner\.mode: expected one of 'a', 'b'"),
        (["--betas", "0.9"], r"betas: expected 2 comma-separated numbers"),
        (["--inner.ratoi", "1"], r"unknown config key 'inner\.ratoi'.*did you mean 'inner\.ratio'"),
        (["--inner", "3"], r"inner: expected a section"),
        (["--count", "none"], r"count: expected an integer, got 'none'"),
    ],
)
def test_bad_overrides_name_the_key(overrides, pattern):
    with pytest.raises(ConfigError, match=pattern):
        load_config(Schema, None, overrides)


def test_yaml_errors_name_key_and_file(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("train:\n  lr: 3e-4\n  lrr: 1\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'train\.lrr' \(set in .*run\.yaml\)"):
        load_config(PretrainConfig, path)
    path.write_text("train:\n  batch_size: eight\n")
    with pytest.raises(ConfigError, match=r"train\.batch_size: expected an integer, got 'eight' \(set in .*run\.yaml\)"):
        load_config(PretrainConfig, path)
    path.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match=r"run\.yaml: line \d+: invalid YAML"):
        load_config(PretrainConfig, path)


def test_yaml_then_overrides_win(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("train:\n  lr: 3e-4\n  epochs: 2\noptim:\n  betas: [0.8, 0.9]\n")
    cfg = load_config(PretrainConfig, path, ["--train.lr", "1e-3"])
    assert cfg.train.lr == 1e-3 and cfg.train.epochs == 2
    assert cfg.optim.betas == (0.8, 0.9)  # a YAML list becomes the typed tuple
    assert isinstance(cfg.train.lr, float)  # YAML reads "3e-4" as text; the schema makes it a float


def test_semantic_checks_name_the_key():
    with pytest.raises(ConfigError, match=r"^train\.lr: must be > 0"):
        load_config(PretrainConfig, None, ["--train.lr", "0"])
    with pytest.raises(ConfigError, match=r"model\.n_embd"):
        load_config(PretrainConfig, None, ["--model.n_embd", "100", "--model.n_head", "3"])
    with pytest.raises(ConfigError, match=r"optim\.betas\[1\]: must be in \[0, 1\)"):
        load_config(PretrainConfig, None, ["--optim.betas", "0.9,1.5"])
    with pytest.raises(ConfigError, match=r"runtime\.device"):
        load_config(PretrainConfig, None, ["--runtime.device", "gpu"])
    with pytest.raises(ConfigError, match=r"warmup_steps or warmup_fraction"):
        TrainConfig(warmup_steps=3, warmup_fraction=0.1)


def test_sections_are_validated_on_direct_construction():
    assert TrainConfig(lr="1e-3").lr == 1e-3  # strings parse by the field's type
    with pytest.raises(ConfigError, match=r"epochs: expected an integer"):
        TrainConfig(epochs="many")
    with pytest.raises(ConfigError, match=r"precision"):
        RuntimeConfig(precision="fp8")
    assert OptimConfig(betas=[0.5, 0.6]).betas == (0.5, 0.6)
    assert LoggingConfig(tensorboard="no").tensorboard is False
    with pytest.raises(ConfigError, match="cannot change the shape"):
        ModelSection(init="some/folder", n_layer=3)


def test_accumulation_from_batch_sizes():
    assert TrainConfig(batch_size=8, micro_batch_size=2).accumulation(1) == (2, 4)
    assert TrainConfig(batch_size=8).accumulation(2) == (4, 1)
    assert TrainConfig(batch_size=8, micro_batch_size=2).accumulation(2) == (2, 2)
    with pytest.raises(ConfigError, match="multiple of train.micro_batch_size"):
        TrainConfig(batch_size=8, micro_batch_size=3).accumulation(1)
    with pytest.raises(ConfigError, match="divisible by the number of processes"):
        TrainConfig(batch_size=6).accumulation(4)


def test_packaged_preset_by_name_and_path():
    assert "pretrain-verdict" in list_config_presets()
    by_name = resolve_config_path("pretrain-verdict")
    assert by_name.is_file() and by_name.name == "pretrain-verdict.yaml"
    assert resolve_config_path(by_name) == by_name
    cfg = load_config(PretrainConfig, "pretrain-verdict")
    assert cfg.train.batch_size == 2 and cfg.data.context_length == 256 and cfg.train.epochs == 10
    with pytest.raises(ConfigError, match="neither a file nor a packaged preset"):
        resolve_config_path("no-such-preset")


def test_saved_config_round_trips(tmp_path):
    cfg = load_config(PretrainConfig, "pretrain-verdict", ["--optim.betas", "0.9,0.95", "--model.init", "none"])
    save_config(cfg, tmp_path / "config.yaml")
    assert load_config(PretrainConfig, tmp_path / "config.yaml") == cfg


def test_command_line_split_and_parse():
    own, overrides = split_override_args(
        ["--config", "x.yaml", "--train.lr", "3e-4", "--resume", "--optim.betas=0.9,0.95", "--train.max-steps", "5"]
    )
    assert own == ["--config", "x.yaml", "--resume"]
    assert parse_overrides(overrides) == [("train.lr", "3e-4"), ("optim.betas", "0.9,0.95"), ("train.max_steps", "5")]
    with pytest.raises(ConfigError, match="unexpected argument"):
        parse_overrides(["stray"])
