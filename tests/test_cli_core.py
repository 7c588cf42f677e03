"""``customgpt --help``, ``info``, ``convert``, ``push`` and the shared device/dtype options."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from helpers import tiny_hf_model, tiny_model

from customgpt.checkpoints import load_model, read_metadata, save_model
from customgpt.cli import main
from customgpt.device import resolve_device, resolve_dtype
from customgpt.errors import CustomGPTError


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_help_lists_the_core_commands():
    proc = subprocess.run(
        [sys.executable, "-m", "customgpt", "--help"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    for command in ("info", "convert", "push"):
        assert f"  {command}" in proc.stdout


def test_info_preset(capsys):
    rc, out, _ = _run(capsys, "info", "cpu-tiny")
    assert rc == 0
    assert "preset cpu-tiny" in out and "n_layer" in out
    from customgpt.config import GPTConfig

    total = GPTConfig.from_preset("cpu-tiny").num_parameters()
    assert f"{total:,}" in out
    rc, out, _ = _run(capsys, "info", "gpt2-124M", "--json")
    data = json.loads(out)
    assert data["parameters"] == {"total": 124_439_808, "embedding": 39_383_808, "non_embedding": 85_056_000}
    assert data["config"]["n_head"] == 12 and data["kind"] == "preset"


def test_info_hf_folder_and_checkpoint(tmp_path, capsys):
    hf = tiny_hf_model(seed=1)
    hf.save_pretrained(tmp_path / "hf")
    rc, out, _ = _run(capsys, "info", str(tmp_path / "hf"))
    assert rc == 0 and "Hugging Face GPT-2 folder" in out and f"{hf.num_parameters():,}" in out
    rc, out, _ = _run(capsys, "info", str(tmp_path / "hf"), "--json")
    data = json.loads(out)
    assert data["kind"] == "hf" and data["dtype"] == "float32"
    assert data["parameters"]["non_embedding"] == hf.num_parameters(exclude_embeddings=True)


def test_convert_both_ways(tmp_path, capsys):
    from transformers import GPT2LMHeadModel

    hf = tiny_hf_model(seed=2)
    hf.save_pretrained(tmp_path / "hf")
    rc, out, err = _run(capsys, "convert", str(tmp_path / "hf"), str(tmp_path / "ours"), "--to", "customgpt")
    assert rc == 0, err
    assert read_metadata(tmp_path / "ours")["converted_from"] == str(tmp_path / "hf")
    ours = load_model(tmp_path / "ours")
    idx = torch.randint(0, 100, (2, 12))
    with torch.no_grad():
        assert (ours(idx) - hf(idx).logits).abs().max().item() <= 1e-5

    rc, out, err = _run(capsys, "convert", str(tmp_path / "ours"), str(tmp_path / "back"), "--to", "hf")
    assert rc == 0, err
    back = GPT2LMHeadModel.from_pretrained(tmp_path / "back").eval()
    original = hf.state_dict()
    assert all(torch.equal(v, original[k]) for k, v in back.state_dict().items())  # bit for bit
    assert "converted_from" in (tmp_path / "back" / "README.md").read_text()

    # A dtype change on the way, and refusing to overwrite without --force.
    rc, _, err = _run(capsys, "convert", str(tmp_path / "hf"), str(tmp_path / "ours"), "--to", "customgpt")
    assert rc == 2 and "--force" in err
    rc, _, err = _run(
        capsys, "convert", str(tmp_path / "hf"), str(tmp_path / "ours"), "--to", "customgpt", "--dtype", "bf16", "--force"
    )
    assert rc == 0, err
    assert load_model(tmp_path / "ours").transformer.wte.weight.dtype == torch.bfloat16


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["info", "/nonexistent/model"], "no such local file or folder: /nonexistent/model"),
        (["info", "not-a-model"], "unknown model"),
        (["convert", "cpu-tiny", "OUT", "--to", "hf"], "is a preset"),
        (["push", "/nonexistent", "me/x"], "no such folder"),
    ],
)
def test_user_errors_are_one_line(argv, needle, capsys):
    rc, out, err = _run(capsys, *argv)
    assert rc == 2
    assert err.startswith("error: ") and needle in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_errors_have_no_traceback_in_a_real_process(tmp_path):
    save_model(tiny_model(), tmp_path / "ours")
    (tmp_path / "ours" / "model.safetensors").write_bytes(b"\x10\x00")
    proc = subprocess.run(
        [sys.executable, "-m", "customgpt", "info", str(tmp_path / "ours")],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: cannot read") and "model.safetensors" in proc.stderr
    assert "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1


def test_push_without_token(tmp_path, capsys, monkeypatch):
    import huggingface_hub

    from customgpt.checkpoints import export_hf

    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    export_hf(tiny_model(), tmp_path)
    rc, _, err = _run(capsys, "push", str(tmp_path), "me/tiny")
    assert rc == 2 and "HF_TOKEN" in err and err.count("\n") == 1


def test_resolve_device_and_dtype(monkeypatch):
    assert resolve_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(CustomGPTError, match="CUDA is not available"):
        resolve_device("cuda")
    with pytest.raises(CustomGPTError, match="MPS is not available"):
        resolve_device("mps")
    with pytest.raises(CustomGPTError, match="unknown device"):
        resolve_device("tpu")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("mps")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_dtype("auto") is None and resolve_dtype("bf16") is torch.bfloat16
    assert resolve_dtype("fp32") is torch.float32
    with pytest.raises(CustomGPTError, match="unknown dtype"):
        resolve_dtype("int3")
