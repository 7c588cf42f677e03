"""``customgpt push`` (customgpt.cli.push)."""

from __future__ import annotations

from helpers import tiny_model

from customgpt.cli import main


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_push_without_token(tmp_path, capsys, monkeypatch):
    import huggingface_hub

    from customgpt.checkpoints import export_hf

    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    export_hf(tiny_model(), tmp_path)
    rc, _, err = _run(capsys, "push", str(tmp_path), "me/tiny")
    assert rc == 2 and "HF_TOKEN" in err and err.count("\n") == 1
