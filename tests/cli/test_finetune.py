"""``customgpt finetune TASK``: the task table, help listing every key, advice that works."""

from __future__ import annotations

import argparse
import dataclasses
import re

import pytest

from customgpt.cli import main as cli_main
from customgpt.cli.finetune import TASKS
from customgpt.data import registry
from customgpt.train.config import load_config, schema_keys


@pytest.mark.parametrize("task", sorted(TASKS))
def test_help_lists_every_key(task, capsys):
    import importlib

    module, schema_name = TASKS[task][0], TASKS[task][1]
    schema = getattr(importlib.import_module(module), schema_name)
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["finetune", task, "--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for key, tp in schema_keys(schema).items():
        if not dataclasses.is_dataclass(tp):
            assert f"--{key} " in text, key
    assert re.search(r"--train\.lr LR .*\(type: float, default: [0-9.e-]+\)", text)


def test_overrides_reach_the_task_beside_its_options():
    from customgpt.cli.finetune import build_parser

    parser = argparse.ArgumentParser()
    build_parser(parser)
    args = parser.parse_args(["dpo", "--train.lr", "1e-5", "--print-config", "--train.loss=ipo"])
    assert args.task == "dpo" and args.config == "dpo-small" and args.print_config
    assert args.overrides == ["--train.lr", "1e-5", "--train.loss=ipo"]


def test_classify_offline_advice_names_a_flag_that_works(monkeypatch, tmp_path, capsys, shared_datasets):
    """Issue 17.11 for ``finetune classify``: the suggested flag parses and finds the data."""
    monkeypatch.delenv(registry.DATA_DIR_ENV, raising=False)
    info = dataclasses.replace(registry.DATASETS["sms-spam"], url="http://127.0.0.1:9/sms.zip")
    monkeypatch.setitem(registry.DATASETS, "sms-spam", info)
    base = ["finetune", "classify", "--data.cache_dir", str(tmp_path / "dl"),
            "--logging.out_dir", str(tmp_path / "run"), "--runtime.device", "cpu"]
    assert cli_main(base) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot download sms_spam_collection.zip") and "Traceback" not in err
    found = re.search(r"\(or pass (--\S+) FOLDER\)", err)
    assert found and found.group(1) == "--data.data_dir"
    from customgpt.data.classification import prepare_splits  # noqa: F401  (the loader the run uses)
    from customgpt.train.classify import ClassifyConfig

    cfg = load_config(ClassifyConfig, "spam-small", [found.group(1), str(shared_datasets),
                                                      "--data.cache_dir", str(tmp_path / "dl")])
    assert cfg.data.data_dir == str(shared_datasets)
    assert registry.fetch("sms-spam", cfg.data.data_dir, cfg.data.cache_dir, progress=False).is_file()
    assert cli_main([*base, found.group(1), str(shared_datasets), "--print-config"]) == 0
