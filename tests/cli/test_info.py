"""``customgpt info`` (customgpt.cli.info)."""

from __future__ import annotations

import json

from helpers import tiny_hf_model

from customgpt.cli import main


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


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


# --------------------------------------------------------------------------- shapes from the weights (17.12)


def _load_error(*args, **kwargs) -> str:
    from customgpt.checkpoints import load_model
    from customgpt.errors import CheckpointError

    try:
        load_model(*args, **kwargs)
    except CheckpointError as exc:
        return str(exc)
    raise AssertionError("the load was expected to fail")


def test_info_reads_shapes_from_the_weights_not_only_the_config(tmp_path, capsys):
    from helpers import tiny_model

    from customgpt.checkpoints import save_model

    folder = tmp_path / "ours"
    save_model(tiny_model(n_embd=48), folder)  # 48-wide weights
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    config["n_embd"] = 96  # ... under a config that says 96
    (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
    rc, out, err = _run(capsys, "info", str(folder))
    assert rc == 2 and out == ""
    assert err == f"error: {_load_error(folder)}\n"  # the message loading (generate) gives
    assert err.startswith(f"error: {folder / 'model.safetensors'} does not match the model config: wrong shape(s): ")
    assert "transformer.h.0.attn.c_attn.weight is (144, 48), expected (288, 96)" in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_info_weights_file_with_a_preset_of_another_shape(tmp_path, capsys):
    from helpers import tiny_hf_model

    hf = tiny_hf_model(seed=2)
    hf.save_pretrained(tmp_path / "hf")
    capsys.readouterr()  # transformers' progress bar
    weights = tmp_path / "hf" / "model.safetensors"
    rc, out, err = _run(capsys, "info", str(weights), "--config", "cpu-tiny")
    assert rc == 2 and out == ""
    assert err == f"error: {_load_error(weights, config='cpu-tiny')}\n"
    assert "does not match the model config" in err
    assert "transformer.h.0.attn.c_attn.weight is (48, 144), expected (64, 192)" in err  # Conv1D (in, out)
    assert "Traceback" not in err
    # the right shape still passes, with the dtype read from the header
    rc, out, _ = _run(capsys, "info", str(tmp_path / "hf"), "--json")
    assert rc == 0 and json.loads(out)["dtype"] == "float32"
