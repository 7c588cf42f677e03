"""Uploading to the Hugging Face hub (customgpt.hub)."""

from __future__ import annotations

import os

import pytest
from helpers import tiny_model

from customgpt.checkpoints import (
    export_hf,
    save_model,
)
from customgpt.errors import CustomGPTError
from customgpt.hub import push_to_hub

# --------------------------------------------------------------------------- push


class FakeHfApi:
    """Records what push_to_hub asks of the hub (HfApi's two methods that it uses)."""

    calls: list = []

    def __init__(self, token=None):
        self.calls.append(("init", token))

    def create_repo(self, repo_id, private=False, exist_ok=False, repo_type=None):
        self.calls.append(("create_repo", repo_id, private, exist_ok, repo_type))
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, folder_path, repo_id, repo_type=None, commit_message=None):
        self.calls.append(("upload_folder", sorted(os.listdir(folder_path)), repo_id, repo_type))


def test_push_to_hub_uses_hfapi(tmp_path, monkeypatch):
    import huggingface_hub

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE")
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeHfApi)
    FakeHfApi.calls = []
    export_hf(tiny_model(), tmp_path)
    url = push_to_hub(tmp_path, "me/tiny-gpt2", private=True, token="hf_test")
    assert url == "https://huggingface.co/me/tiny-gpt2"
    assert FakeHfApi.calls[0] == ("init", "hf_test")
    assert FakeHfApi.calls[1] == ("create_repo", "me/tiny-gpt2", True, True, "model")
    op, files, repo, kind = FakeHfApi.calls[2]
    assert op == "upload_folder" and repo == "me/tiny-gpt2" and "model.safetensors" in files


def test_push_without_token_or_export_is_a_clear_error(tmp_path, monkeypatch):
    import huggingface_hub

    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeHfApi)
    export_hf(tiny_model(), tmp_path / "hf")
    with pytest.raises(CustomGPTError, match="login.*HF_TOKEN"):
        push_to_hub(tmp_path / "hf", "me/x")
    save_model(tiny_model(), tmp_path / "ours")
    with pytest.raises(CustomGPTError, match="convert"):
        push_to_hub(tmp_path / "ours", "me/x", token="t")
    with pytest.raises(CustomGPTError, match="user/name"):
        push_to_hub(tmp_path / "hf", "not a repo", token="t")
