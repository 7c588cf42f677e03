"""Shared test fixtures: where the shared datasets are, offline hub, one torch thread."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
#: The public datasets, mirrored beside the project (CI and developer machines).
SHARED_DATASETS = Path(os.environ.get("CUSTOMGPT_TEST_DATASETS", REPO.parent / "shared" / "datasets"))


@pytest.fixture(scope="session")
def shared_datasets() -> Path:
    if not (SHARED_DATASETS / "SHA256SUMS").is_file():
        pytest.fail(f"shared datasets not found at {SHARED_DATASETS} (set CUSTOMGPT_TEST_DATASETS)")
    return SHARED_DATASETS


@pytest.fixture(autouse=True)
def _offline_hub(monkeypatch):
    """Tests never reach the network: the hub client is told it is offline."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op thread for a module of tiny-model tests (``pytestmark =
    pytest.mark.usefixtures("one_torch_thread")``): tiny tensors gain nothing from a second
    thread, and on a busy machine OpenMP threads waiting for each other make every small
    operation many times slower. The previous count is restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def _session_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("customgpt-cache")


@pytest.fixture(autouse=True)
def _temporary_cache(monkeypatch, _session_cache):
    """Tests never write into the user's ``~/.cache/customgpt``: one temporary cache per session."""
    monkeypatch.setenv("CUSTOMGPT_CACHE_DIR", str(_session_cache))
