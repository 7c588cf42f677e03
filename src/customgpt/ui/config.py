"""The app's settings (from ``customgpt ui``'s options or the environment) and its Chainlit folder.

The Chainlit app (:mod:`customgpt.ui.app`) reads its models from ``CUSTOMGPT_UI_*`` environment
variables (:meth:`AppConfig.from_env`; docs/ui.md lists them), so the same file runs from
``customgpt ui`` and from ``chainlit run``. Chainlit reads its own configuration from
``.chainlit/config.toml`` in its app folder (``CHAINLIT_APP_ROOT``, else the current folder) and
writes a default one there if it is missing; ``customgpt ui`` writes the app's own config into a
temporary folder instead (:func:`write_app_folder`), so nothing is left in the user's folder.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

from customgpt.errors import ConfigError, CustomGPTError
from customgpt.io import atomic_write_text
from customgpt.prompts import PromptStyle, get_prompt_style, style_for_model

ENV_PREFIX = "CUSTOMGPT_UI_"
#: The Chainlit app file (what ``chainlit run`` takes).
APP_FILE = Path(__file__).with_name("app.py")
#: ``customgpt ui``'s temporary app folder: its name starts so, and the variable names it
#: (the app removes it when the server stops: Chainlit ends the process without returning).
APP_FOLDER_PREFIX = "customgpt-ui-"
APP_FOLDER_ENV = "CUSTOMGPT_UI_APP_FOLDER"
_TOML_HEADER = "# Written by `customgpt ui` for this run; Chainlit reads it at start."
PROFILE_CHAT = "Chat"
PROFILE_COMPARE = "Compare"
PROFILE_CLASSIFY = "Classification"


@dataclass(frozen=True)
class AppConfig:
    """Which models the app serves.

    Attributes:
        chat: the chat model spec (a preset, a checkpoint or Hugging Face folder, a weights
            file or a hub id), or None.
        compare: a second chat model answering beside the first (the Compare profile).
        classifier: a classifier folder written by ``customgpt finetune classify``.
        prompt_style: the prompt style of the chat models; None: the one each model's folder
            records, else alpaca (as ``customgpt chat``).
        device: where to run the models (``auto`` picks CUDA, then MPS, then the CPU).
    """

    chat: str | None = None
    compare: str | None = None
    classifier: str | None = None
    prompt_style: str | None = None
    device: str = "auto"

    def check(self) -> AppConfig:
        """Raise :class:`ConfigError` when the combination cannot make an app."""
        if not self.chat and not self.classifier:
            raise ConfigError("give a chat model (--chat MODEL) or a classifier (--classifier MODEL), or both")
        if self.compare and not self.chat:
            raise ConfigError("--compare needs --chat: the two chat models answer side by side")
        if self.prompt_style:
            get_prompt_style(self.prompt_style)  # an unknown style names the known ones
        for spec in (self.chat, self.compare):
            if spec:
                self.style_for(spec)  # a recorded style that cannot be rebuilt: one error, now
        return self

    def style_for(self, spec: str) -> PromptStyle:
        """The prompt style of chat model ``spec``: :attr:`prompt_style` when set, else the one
        its folder records, else alpaca (:func:`~customgpt.prompts.style_for_model`).

        Raises:
            ConfigError: an unknown style name, or a recorded style that cannot be rebuilt.
            CheckpointError: the folder's ``metadata.json`` is not a JSON object.
        """
        return style_for_model(self.prompt_style, spec, "alpaca")

    @property
    def profiles(self) -> list[str]:
        """The profiles these models make, the default first."""
        out = []
        if self.chat:
            out.append(PROFILE_CHAT)
        if self.chat and self.compare:
            out.append(PROFILE_COMPARE)
        if self.classifier:
            out.append(PROFILE_CLASSIFY)
        return out

    def to_env(self) -> dict[str, str]:
        """The environment variables that :meth:`from_env` reads back (an unset value as an
        empty one, so that a variable already in the environment does not stand in for it)."""
        names = ("chat", "compare", "classifier", "prompt_style", "device")
        return {f"{ENV_PREFIX}{name.upper()}": str(getattr(self, name) or "") for name in names}

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> AppConfig:
        """Read ``CUSTOMGPT_UI_*`` (empty values count as unset)."""
        env = os.environ if environ is None else environ

        def get(name: str) -> str | None:
            return (env.get(f"{ENV_PREFIX}{name}") or "").strip() or None

        return cls(
            chat=get("CHAT"),
            compare=get("COMPARE"),
            classifier=get("CLASSIFIER"),
            prompt_style=get("PROMPT_STYLE"),
            device=get("DEVICE") or "auto",
        )


def chainlit_config_toml(name: str = "customgpt") -> str:
    """The app's ``.chainlit/config.toml``: only what differs from Chainlit's defaults, plus
    the version stamp Chainlit checks. No file upload (nothing reads files), no message
    editing (a chat's history is the model's context), HTML never rendered, and the user's
    messages shown as typed (not as Markdown)."""
    return f"""{_TOML_HEADER}
[project]
session_timeout = 3600
allow_origins = ["*"]

[features]
unsafe_allow_html = false
latex = false
user_message_markdown = false
edit_message = false
auto_tag_thread = false

[features.spontaneous_file_upload]
enabled = false

[UI]
name = "{name}"
cot = "hidden"
default_sidebar_state = "closed"

[meta]
generated_by = "{version('chainlit')}"
"""


def write_app_folder(folder: str | Path, config: AppConfig) -> Path:
    """Write the Chainlit app folder: ``.chainlit/config.toml`` and ``chainlit.md`` (the
    readme Chainlit shows), into ``folder`` (created). Returns the folder."""
    folder = Path(folder)
    (folder / ".chainlit").mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / ".chainlit" / "config.toml", chainlit_config_toml())
    readme = ["# customgpt", "", "GPT-2 written from scratch in PyTorch, in a web page.", "", *profile_help(config)]
    atomic_write_text(folder / "chainlit.md", "\n".join(readme) + "\n")
    return folder


def remove_app_folder(folder: str | Path | None) -> bool:
    """Remove a folder :func:`write_app_folder` wrote for ``customgpt ui`` (its name starts
    with :data:`APP_FOLDER_PREFIX` and its config is ours); anything else is left alone.
    Returns True when it was removed."""
    if not folder:
        return False
    folder = Path(folder)
    toml = folder / ".chainlit" / "config.toml"
    try:
        ours = folder.name.startswith(APP_FOLDER_PREFIX) and toml.read_text(encoding="utf-8").startswith(_TOML_HEADER)
    except OSError:
        return False
    if ours:
        shutil.rmtree(folder, ignore_errors=True)
    return ours


def profile_help(config: AppConfig) -> list[str]:
    """One markdown bullet per profile the config makes."""
    out = []
    if config.chat:
        out.append(
            f"- **{PROFILE_CHAT}**: talk with `{config.chat}` (prompt style {_style_name(config, config.chat)}). "
            "The reply streams in as it is generated; the settings button beside the message box sets "
            "temperature, top-k, top-p, repetition penalty, max new tokens and the seed; the stop button "
            "ends a reply. The conversation is kept while it fits in the model's context window (the "
            "oldest turns are dropped first, and you are told)."
        )
    if config.chat and config.compare:
        out.append(
            f"- **{PROFILE_COMPARE}**: every message is answered by `{config.chat}` and by "
            f"`{config.compare}` (prompt style {_style_name(config, config.compare)}), with the same "
            "settings and seed, so you see what changed between them."
        )
    if config.classifier:
        out.append(
            f"- **{PROFILE_CLASSIFY}**: `{config.classifier}` labels each line of your message and "
            "shows every class's probability."
        )
    return out


def _style_name(config: AppConfig, spec: str) -> str:
    """The prompt style chat model ``spec`` uses, as markdown, or why it has none (its model
    then fails to load, with the same reason)."""
    try:
        return f"`{config.style_for(spec).name}`"
    except CustomGPTError as exc:
        return f"unreadable: {exc}"
