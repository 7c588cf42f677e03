"""The app's settings from the environment, and the Chainlit folder ``customgpt ui`` writes."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from customgpt.errors import ConfigError
from customgpt.ui.config import AppConfig, chainlit_config_toml, remove_app_folder, write_app_folder

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    tomllib = pytest.importorskip("tomli")


def test_environment_round_trip_and_defaults():
    config = AppConfig(chat="runs/a", compare="runs/b", classifier="runs/c", prompt_style="phi3", device="cpu")
    assert AppConfig.from_env(config.to_env()) == config
    assert AppConfig.from_env({}) == AppConfig()
    assert AppConfig.from_env({"CUSTOMGPT_UI_CHAT": "  ", "CUSTOMGPT_UI_DEVICE": ""}) == AppConfig()
    assert config.profiles == ["Chat", "Compare", "Classification"]
    assert AppConfig(classifier="c").profiles == ["Classification"]
    # An unset value is written empty: a variable already in the environment does not stand in for it.
    stale = {"CUSTOMGPT_UI_COMPARE": "runs/old", "CUSTOMGPT_UI_PROMPT_STYLE": "plain"}
    assert AppConfig.from_env({**stale, **AppConfig(chat="a").to_env()}) == AppConfig(chat="a")


def test_the_style_a_model_folder_records_is_used_and_named_unless_one_is_asked_for(tmp_path):
    from customgpt.checkpoints import random_model, save_model
    from customgpt.config import GPTConfig

    model = random_model(GPTConfig.from_preset("cpu-tiny"), seed=0)
    tuned = str(save_model(model, tmp_path / "tuned", metadata={"prompt_style": {"name": "phi3"}}))
    config = AppConfig(chat=tuned, compare="gpt2").check()
    assert config.style_for(tuned).name == "phi3" and config.style_for("gpt2").name == "alpaca"
    readme = (write_app_folder(tmp_path / "app", config) / "chainlit.md").read_text()
    assert f"`{tuned}` (prompt style `phi3`)" in readme and "`gpt2` (prompt style `alpaca`)" in readme
    assert AppConfig(chat=tuned, prompt_style="alpaca").check().style_for(tuned).name == "alpaca"
    bad = save_model(model, tmp_path / "bad", metadata={"prompt_style": {"name": "nope"}})
    with pytest.raises(ConfigError, match="unknown prompt style 'nope'"):
        AppConfig(chat="a", compare=str(bad)).check()


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (AppConfig(), "give a chat model"),
        (AppConfig(compare="b", classifier="c"), "--compare needs --chat"),
        (AppConfig(chat="a", prompt_style="nope"), "unknown prompt style 'nope'"),
    ],
)
def test_impossible_combinations_are_refused(config, message):
    with pytest.raises(ConfigError, match=message):
        config.check()


def test_app_folder_holds_a_config_chainlit_accepts_and_a_readme(tmp_path):
    if importlib.util.find_spec("chainlit") is None:  # not imported: that would write into the cwd
        pytest.skip("needs the ui extra (chainlit)")
    folder = write_app_folder(tmp_path / "app", AppConfig(chat="runs/a", classifier="runs/c"))
    assert sorted(p.name for p in folder.rglob("*")) == [".chainlit", "chainlit.md", "config.toml"]
    data = tomllib.loads((folder / ".chainlit" / "config.toml").read_text())
    from importlib.metadata import version

    assert data["meta"]["generated_by"] == version("chainlit")
    assert data["features"]["unsafe_allow_html"] is False and data["features"]["edit_message"] is False
    assert data["features"]["spontaneous_file_upload"]["enabled"] is False
    # Chainlit loads it (in a child process: importing Chainlit reads and writes its folder).
    code = ("import json, chainlit.config as c; "
            "print(json.dumps([c.config.ui.name, c.config.features.edit_message, c.config.root]))")
    env = {**os.environ, "CHAINLIT_APP_ROOT": str(folder)}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == ["customgpt", False, str(folder)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["app"]  # nothing written beside it
    readme = (folder / "chainlit.md").read_text()
    assert "`runs/a`" in readme and "`runs/c`" in readme and "Compare" not in readme
    assert chainlit_config_toml("x").count('name = "x"') == 1


def test_only_the_folder_customgpt_ui_wrote_is_removed(tmp_path):
    ours = write_app_folder(tmp_path / "customgpt-ui-abc", AppConfig(chat="a"))
    renamed = write_app_folder(tmp_path / "mine", AppConfig(chat="a"))
    other = tmp_path / "customgpt-ui-other"
    (other / ".chainlit").mkdir(parents=True)
    (other / ".chainlit" / "config.toml").write_text("[project]\n")
    assert not remove_app_folder(renamed) and not remove_app_folder(other) and not remove_app_folder(None)
    assert not remove_app_folder(tmp_path / "customgpt-ui-missing")
    assert remove_app_folder(ours)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["customgpt-ui-other", "mine"]
