"""``customgpt data``: list the registered datasets and fetch them, with one-line errors."""

from __future__ import annotations

import dataclasses

import pytest

from customgpt.cli import main
from customgpt.data import registry


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path):
    """No test sees the developer's own mirror or cache."""
    monkeypatch.delenv(registry.DATA_DIR_ENV, raising=False)
    monkeypatch.setenv(registry.CACHE_DIR_ENV, str(tmp_path / "cache-root"))


def _point(monkeypatch, name: str, **changes) -> registry.DatasetInfo:
    info = dataclasses.replace(registry.DATASETS[name], **changes)
    monkeypatch.setitem(registry.DATASETS, name, info)
    return info


def test_cli_list_and_fetch(shared_datasets, capsys, tmp_path):
    assert main(["data", "list", "--data-dir", str(shared_datasets)]) == 0
    out = capsys.readouterr().out
    for info in registry.DATASETS.values():
        assert info.name in out
    assert out.count("mirrored") == 4 and "CC BY 4.0" in out

    assert main(["data", "fetch", "sms-spam", "the-verdict", "--data-dir", str(shared_datasets)]) == 0
    out = capsys.readouterr().out
    assert f"sms-spam\t{shared_datasets / 'sms_spam_collection.zip'}" in out
    assert "the-verdict\t" in out

    assert main(["data", "list", "--cache-dir", str(tmp_path / "none")]) == 0
    assert "mirrored" not in capsys.readouterr().out


def test_cli_fetch_errors_are_one_line(capsys, monkeypatch, tmp_path):
    assert main(["data", "fetch", "nope"]) == 2
    assert capsys.readouterr().err.startswith("error: unknown dataset 'nope'")
    _point(monkeypatch, "the-verdict", url="http://127.0.0.1:9/v.txt")
    assert main(["data", "fetch", "the-verdict", "--cache-dir", str(tmp_path / "c"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "http://127.0.0.1:9/v.txt" in err
