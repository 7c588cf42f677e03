"""``customgpt pretrain`` as a user runs it: help, config errors, and advice that works as written."""

from __future__ import annotations

import argparse
import dataclasses
import re

import pytest

from customgpt.cli import main as cli_main
from customgpt.data import registry
from customgpt.train.config import load_config, schema_keys
from customgpt.train.pretrain import PretrainConfig


def test_help_lists_every_key_with_type_default_and_description(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["pretrain", "--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for key, tp in schema_keys(PretrainConfig).items():
        if not dataclasses.is_dataclass(tp):
            assert f"--{key} " in text, key
    assert "--train.lr LR Peak learning rate (after warmup); at most 10. (type: float, default: 0.0004)" in text
    assert "--runtime.compile {true,false} torch.compile the model. (type: bool, default: False)" in text


def test_overrides_mix_with_the_commands_own_options():
    from customgpt.cli.pretrain import build_parser

    parser = argparse.ArgumentParser()
    build_parser(parser)
    args = parser.parse_args(["--config", "x.yaml", "--train.lr", "3e-4", "--resume",
                              "--optim.betas=0.9,0.95", "--train.max-steps", "5", "--train.seed", "-1"])
    assert args.config == "x.yaml" and args.resume is True and not args.print_config
    assert args.overrides == ["--train.lr", "3e-4", "--optim.betas=0.9,0.95", "--train.max-steps", "5",
                              "--train.seed", "-1"]


def test_print_config_of_a_packaged_preset(capsys):
    assert cli_main(["pretrain", "--config", "pretrain-verdict", "--train.lr", "2e-3", "--print-config"]) == 0
    printed = capsys.readouterr().out
    assert "  lr: 0.002\n" in printed and "  batch_size: 2\n" in printed


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--train.lr", "nan"], "error: train.lr: must be a finite number, got 'nan' (set in --train.lr)\n"),
        (["--train.min_lr", "1", "--train.lr", "1e-3"],
         "error: train.min_lr: must be <= train.lr (0.001), got 1 (set in --train.min_lr)\n"),
        (["--train.seed", "-1"],
         "error: train.seed: must be between 0 and 2**64 - 1 (18446744073709551615), got -1 (set in --train.seed)\n"),
        (["--train.seed", "1180591620717411303424"],
         "error: train.seed: must be between 0 and 2**64 - 1 (18446744073709551615), got "
         "1180591620717411303424 (set in --train.seed)\n"),
    ],
)
def test_bad_numbers_are_one_line_errors(argv, message, capsys):
    assert cli_main(["pretrain", *argv, "--print-config"]) == 2
    assert capsys.readouterr().err == message


def test_duplicate_yaml_key_is_an_error(tmp_path, capsys):
    path = tmp_path / "run.yaml"
    path.write_text("train:\n  lr: 1e-3\n  lr: 2e-3\n")
    assert cli_main(["pretrain", "--config", str(path), "--print-config"]) == 2
    assert capsys.readouterr().err == f"error: {path}: line 3: duplicate key 'lr'\n"


def _suggested_flag(err: str) -> str:
    found = re.search(r"\(or pass (--\S+) FOLDER\)", err)
    assert found, err
    return found.group(1)


def test_offline_advice_names_a_flag_that_works(monkeypatch, tmp_path, capsys, shared_datasets):
    """Issue 17.11: offline without a mirror, the error's suggested flag must run as written."""
    monkeypatch.delenv(registry.DATA_DIR_ENV, raising=False)
    monkeypatch.setenv(registry.CACHE_DIR_ENV, str(tmp_path / "cache"))  # nothing cached
    info = dataclasses.replace(registry.DATASETS["the-verdict"], url="http://127.0.0.1:9/the-verdict.txt")
    monkeypatch.setitem(registry.DATASETS, "the-verdict", info)
    base = ["pretrain", "--data.source", "the-verdict", "--runtime.device", "cpu", "--model.preset", "cpu-tiny",
            "--logging.out_dir", str(tmp_path / "run"), "--train.max_steps", "1", "--logging.progress", "false",
            "--logging.plots", "false", "--sample.max_new_tokens", "0", "--train.eval_every", "0",
            "--data.context_length", "32", "--train.batch_size", "2"]
    assert cli_main(base) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot download the-verdict.txt") and "Traceback" not in err
    flag = _suggested_flag(err)
    assert flag == "--data.data_dir"
    assert load_config(PretrainConfig, None, [flag, str(shared_datasets)]).data.data_dir == str(shared_datasets)
    assert cli_main([*base, flag, str(shared_datasets)]) == 0  # the advice, followed, trains
    assert "trained 1 steps" in capsys.readouterr().out


def test_data_fetch_keeps_its_own_flag(monkeypatch, tmp_path, capsys, shared_datasets):
    """Variant: ``customgpt data fetch`` takes ``--data-dir``, and its advice says so."""
    monkeypatch.delenv(registry.DATA_DIR_ENV, raising=False)
    monkeypatch.setenv(registry.CACHE_DIR_ENV, str(tmp_path / "cache"))
    info = dataclasses.replace(registry.DATASETS["the-verdict"], url="http://127.0.0.1:9/the-verdict.txt")
    monkeypatch.setitem(registry.DATASETS, "the-verdict", info)
    assert cli_main(["data", "fetch", "the-verdict", "--no-progress"]) == 2
    flag = _suggested_flag(capsys.readouterr().err)
    assert flag == "--data-dir"
    assert cli_main(["data", "fetch", "the-verdict", "--no-progress", flag, str(shared_datasets)]) == 0
