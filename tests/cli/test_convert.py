"""``customgpt convert`` (customgpt.cli.convert)."""

from __future__ import annotations

import torch
from helpers import tiny_hf_model

from customgpt.checkpoints import load_model, read_metadata
from customgpt.cli import main


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


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


def test_convert_never_writes_over_its_input(tmp_path, capsys):
    from helpers import tiny_model

    from customgpt.checkpoints import save_model

    folder = tmp_path / "model"
    save_model(tiny_model(), folder)
    before = (folder / "model.safetensors").read_bytes()
    for extra in ([], ["--force"]):
        rc, out, err = _run(capsys, "convert", str(folder), str(folder), "--to", "hf", *extra)
        assert rc == 2 and out == ""
        expected = (
            f"error: {folder} holds the model being converted: choose another destination "
            "(an input is never overwritten)\n"
        )
        assert err == (expected if extra else f"error: {folder} already holds a model; pass --force to overwrite it\n")
    # the same folder spelled another way is still the input
    rc, _, err = _run(capsys, "convert", str(folder / "model.safetensors"), str(tmp_path / "." / "model"), "--to", "hf", "--force")
    assert rc == 2 and "holds the model being converted" in err
    assert (folder / "model.safetensors").read_bytes() == before
