"""Shared test fixtures: where the shared datasets are, and tiny model configs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

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
