"""The configuration framework: typed sections, YAML + dotted overrides, clear errors."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

import pytest

from customgpt.errors import ConfigError
from customgpt.train.config import (
    Section,
    TrainConfig,
    list_config_presets,
    load_config,
    parse_overrides,
    resolve_config_path,
    save_config,
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


def test_override_tokens_parse():
    tokens = ["--train.lr", "3e-4", "--optim.betas=0.9,0.95", "--train.max-steps", "5"]
    pairs = [("train.lr", "3e-4"), ("optim.betas", "0.9,0.95"), ("train.max_steps", "5")]
    assert parse_overrides(tokens) == pairs
    with pytest.raises(ConfigError, match="unexpected argument"):
        parse_overrides(["stray"])


def test_yaml_duplicate_key_is_an_error_naming_file_and_line(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("train:\n  lr: 3e-4\n  epochs: 2\n  lr: 1e-3\n")
    with pytest.raises(ConfigError, match=r"run\.yaml: line 4: duplicate key 'lr'"):
        load_config(PretrainConfig, path)
    path.write_text("train:\n  lr: 3e-4\noptim: {}\ntrain:\n  epochs: 2\n")  # a whole section twice
    with pytest.raises(ConfigError, match=r"run\.yaml: line 4: duplicate key 'train'"):
        load_config(PretrainConfig, path)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [  # issue 17.8: numbers that pass a type check but cannot be right
        (["--train.lr", "nan"], "train.lr: must be a finite number, got 'nan' (set in --train.lr)"),
        (["--train.lr", "inf"], "train.lr: must be a finite number, got 'inf' (set in --train.lr)"),
        (["--train.grad_clip", "nan"], "train.grad_clip: must be a finite number, got 'nan' (set in --train.grad_clip)"),
        (["--optim.betas", "0.9,-inf"], "optim.betas: must be a finite number, got '-inf' (set in --optim.betas)"),
        (["--model.dropout", "NaN"], "model.dropout: must be a finite number, got 'NaN' (set in --model.dropout)"),
        (["--train.min_lr", "1"], "train.min_lr: must be <= train.lr (0.0004), got 1 (set in --train.min_lr)"),
        (["--train.lr", "1e-3", "--train.initial_lr", "0.01"],
         "train.initial_lr: must be <= train.lr (0.001), got 0.01 (set in --train.initial_lr)"),
        (["--train.lr", "1e308"],
         "train.lr: must be <= 10 (a learning rate this large only makes the weights nan), got 1e+308 (set in --train.lr)"),
        (["--train.seed", "1180591620717411303424"],
         "train.seed: must be between 0 and 2**64 - 1 (18446744073709551615), got 1180591620717411303424 "
         "(set in --train.seed)"),
        (["--train.seed", "-1"], "train.seed: must be between 0 and 2**64 - 1 (18446744073709551615), got -1 "
         "(set in --train.seed)"),
        (["--model.dropout", "1.5"], "model.dropout: must be in [0, 1), got 1.5 (set in --model.dropout)"),
    ],
)
def test_numbers_that_cannot_be_right_are_refused(overrides, message):
    with pytest.raises(ConfigError) as info:
        load_config(PretrainConfig, None, overrides)
    assert str(info.value) == message


def test_non_finite_yaml_float_names_the_file(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("train:\n  lr: .nan\n")
    with pytest.raises(ConfigError, match=r"^train\.lr: must be a finite number, got nan \(set in .*run\.yaml\)$"):
        load_config(PretrainConfig, path)


def test_largest_seed_torch_accepts_is_accepted():
    assert load_config(PretrainConfig, None, ["--train.seed", str(2**64 - 1)]).train.seed == 2**64 - 1


def test_help_lists_every_key_with_type_default_and_description():
    from customgpt.train.config import keys_help, schema_keys

    text = keys_help(PretrainConfig)
    for key, tp in schema_keys(PretrainConfig).items():
        if not dataclasses.is_dataclass(tp):
            assert f"--{key} " in text or f"--{key}\n" in text, key
    assert "Peak learning rate (after warmup); at most 10. (type: float, default: 0.0004)" in " ".join(text.split())


def test_empty_yaml_section_keeps_the_defaults(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("train:\noptim:\n  eps: 1.0e-6\n")
    cfg = load_config(PretrainConfig, path)
    assert cfg.train == TrainConfig() and cfg.optim.eps == 1e-6
    path.write_text("train: 3\n")
    with pytest.raises(ConfigError, match=r"^train: expected a section \(TrainConfig\), got 3 \(set in .*run\.yaml\)$"):
        load_config(PretrainConfig, path)


@dataclass
class PlainData:
    """A section as a data/ module may write it: a plain dataclass checked in __post_init__."""

    split: Literal["reference", "stratified"] = "reference"
    """How to split."""
    fraction: float = 0.1
    """Share held out."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.fraction < 1.0:
            raise ConfigError(f"data.fraction: must be in [0, 1), got {self.fraction}")


@dataclass
class PlainRoot(Section):
    data: PlainData = field(default_factory=PlainData)
    train: TrainConfig = field(default_factory=TrainConfig)


def test_plain_dataclass_sections_parse_and_name_the_source(tmp_path):
    from customgpt.train.config import keys_help

    assert load_config(PlainRoot, None, ["--data.fraction", "0.3"]).data == PlainData(fraction=0.3)
    with pytest.raises(ConfigError) as info:
        load_config(PlainRoot, None, ["--data.fraction", "2"])
    assert str(info.value) == "data.fraction: must be in [0, 1), got 2.0 (set in --data.fraction)"
    with pytest.raises(ConfigError, match=r"^data\.fraction: must be a finite number, got 'inf'"):
        load_config(PlainRoot, None, ["--data.fraction", "inf"])
    with pytest.raises(ConfigError, match=r"^data\.split: expected one of 'reference', 'stratified', got 'x'"):
        load_config(PlainRoot, None, ["--data.split", "x"])
    text = " ".join(keys_help(PlainRoot).split())
    assert "data: A section as a data/ module may write it" in text
    assert "--data.fraction FRACTION Share held out. (type: float, default: 0.1)" in text
