"""The dataset registry: mirror, cache, verified download, and clear errors. Never the internet:
downloads come from a throwaway HTTP server on 127.0.0.1."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import http.server
import os
import threading
from pathlib import Path

import pytest

from customgpt.data import registry
from customgpt.errors import DataError


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path):
    """No test sees the developer's own mirror or cache."""
    monkeypatch.delenv(registry.DATA_DIR_ENV, raising=False)
    monkeypatch.setenv(registry.CACHE_DIR_ENV, str(tmp_path / "cache-root"))


@pytest.fixture
def http_root(tmp_path):
    """Serve ``tmp_path/www`` on 127.0.0.1; yields (folder, base URL)."""
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # keep pytest output clean
        pass


def _point(monkeypatch, name: str, **changes) -> registry.DatasetInfo:
    info = dataclasses.replace(registry.DATASETS[name], **changes)
    monkeypatch.setitem(registry.DATASETS, name, info)
    return info


def test_registry_matches_shared_checksums(shared_datasets):
    sums = {}
    for line in (shared_datasets / "SHA256SUMS").read_text().splitlines():
        digest, filename = line.split()
        sums[filename] = digest
    assert set(registry.DATASETS) == {"sms-spam", "instruction-data", "instruction-data-with-preference", "the-verdict"}
    for info in registry.DATASETS.values():
        assert sums[info.filename] == info.sha256
        assert (shared_datasets / info.filename).stat().st_size == info.size
        assert info.url.startswith("https://") and info.licence


def test_fetch_from_mirror_argument_and_env(shared_datasets, monkeypatch, tmp_path):
    for info in registry.DATASETS.values():
        path = registry.fetch(info.name, data_dir=shared_datasets, progress=False)
        assert path == shared_datasets / info.filename
    monkeypatch.setenv(registry.DATA_DIR_ENV, str(shared_datasets))
    assert registry.fetch("the-verdict", progress=False) == shared_datasets / "the-verdict.txt"
    assert registry.local_status("the-verdict") == "mirrored"
    # nothing was written to the cache: the mirror was enough
    assert not registry.dataset_cache_dir().exists()


def test_mirror_with_wrong_checksum_is_an_error(tmp_path):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "the-verdict.txt").write_text("not the story")
    with pytest.raises(DataError, match=r"the-verdict\.txt.*expected b41e41a6"):
        registry.fetch("the-verdict", data_dir=mirror, progress=False)
    assert registry.local_status("the-verdict", data_dir=mirror) == "mirror: bad checksum"
    assert (mirror / "the-verdict.txt").read_text() == "not the story"  # the user's file is left alone


def test_download_verifies_and_caches(shared_datasets, http_root, monkeypatch, tmp_path):
    root, base = http_root
    (root / "v.txt").write_bytes((shared_datasets / "the-verdict.txt").read_bytes())
    _point(monkeypatch, "the-verdict", url=f"{base}/v.txt")
    cache = tmp_path / "dl"
    path = registry.fetch("the-verdict", cache_dir=cache, progress=True)
    assert path == cache / "the-verdict.txt"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == registry.DATASETS["the-verdict"].sha256
    assert sorted(p.name for p in cache.iterdir()) == ["the-verdict.txt"]  # no temp file left
    # second call: served from the cache even with the server gone
    (root / "v.txt").unlink()
    assert registry.fetch("the-verdict", cache_dir=cache, progress=False) == path
    assert registry.local_status("the-verdict", cache_dir=cache) == "cached"


def test_default_cache_folder_follows_env(shared_datasets, http_root, monkeypatch, tmp_path):
    root, base = http_root
    (root / "v.txt").write_bytes((shared_datasets / "the-verdict.txt").read_bytes())
    _point(monkeypatch, "the-verdict", url=f"{base}/v.txt")
    monkeypatch.delenv(registry.CACHE_DIR_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    path = registry.fetch("the-verdict", progress=False)
    assert path == tmp_path / "xdg" / "customgpt" / "datasets" / "the-verdict.txt"


def test_checksum_mismatch_deletes_download(http_root, monkeypatch, tmp_path):
    root, base = http_root
    (root / "v.txt").write_text("a tampered story")
    _point(monkeypatch, "the-verdict", url=f"{base}/v.txt")
    cache = tmp_path / "dl"
    with pytest.raises(DataError, match="checksum mismatch for the-verdict.txt") as err:
        registry.fetch("the-verdict", cache_dir=cache, progress=False)
    assert f"{base}/v.txt" in str(err.value)
    assert list(cache.iterdir()) == []  # neither the bad file nor a temp file is kept


def test_corrupt_cache_entry_is_replaced(shared_datasets, http_root, monkeypatch, tmp_path):
    root, base = http_root
    (root / "v.txt").write_bytes((shared_datasets / "the-verdict.txt").read_bytes())
    _point(monkeypatch, "the-verdict", url=f"{base}/v.txt")
    cache = tmp_path / "dl"
    cache.mkdir()
    (cache / "the-verdict.txt").write_text("half a down")
    path = registry.fetch("the-verdict", cache_dir=cache, progress=False)
    assert path.read_bytes() == (shared_datasets / "the-verdict.txt").read_bytes()


def test_http_error_is_a_data_error(http_root, monkeypatch, tmp_path):
    _, base = http_root
    _point(monkeypatch, "the-verdict", url=f"{base}/missing.txt")
    with pytest.raises(DataError, match="HTTP 404"):
        registry.fetch("the-verdict", cache_dir=tmp_path / "dl", progress=False)
    assert list((tmp_path / "dl").iterdir()) == []


def test_offline_error_names_file_url_and_mirror_setting(monkeypatch, tmp_path):
    url = "http://127.0.0.1:9/sms.zip"  # the discard port: nothing listens there
    _point(monkeypatch, "sms-spam", url=url)
    with pytest.raises(DataError) as err:
        registry.fetch("sms-spam", cache_dir=tmp_path / "dl", progress=False, timeout=5)
    message = str(err.value)
    assert "sms_spam_collection.zip" in message
    assert url in message
    assert registry.DATA_DIR_ENV in message and "--data-dir" in message
    assert list((tmp_path / "dl").iterdir()) == []


def test_offline_error_mentions_an_empty_mirror(monkeypatch, tmp_path):
    _point(monkeypatch, "sms-spam", url="http://127.0.0.1:9/sms.zip")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"mirror folder .*empty has no sms_spam_collection\.zip"):
        registry.fetch("sms-spam", data_dir=tmp_path / "empty", cache_dir=tmp_path / "dl", progress=False)


def test_unknown_name():
    with pytest.raises(DataError, match="unknown dataset 'spam'.*sms-spam"):
        registry.fetch("spam")


def test_fetched_paths_are_files(shared_datasets):
    path = registry.fetch("sms-spam", data_dir=shared_datasets, progress=False)
    assert isinstance(path, Path) and path.is_file()


def test_tests_use_a_temporary_cache():
    """Issue 17.13: the suite never writes into the user's ``~/.cache/customgpt`` (tests/conftest.py)."""
    root = registry.cache_root()
    assert os.environ[registry.CACHE_DIR_ENV] == str(root)
    assert Path.home() / ".cache" not in root.parents and root != Path.home() / ".cache" / "customgpt"
