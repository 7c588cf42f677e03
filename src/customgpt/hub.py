"""The Hugging Face hub: download GPT-2 weights by id, upload an exported folder.

``huggingface_hub`` is imported inside the functions, so importing :mod:`customgpt` never
pays for it. Every failure becomes a :class:`~customgpt.errors.CustomGPTError` whose message
says what to do next (the CLI prints it as one line).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from customgpt.config import HF_HUB_IDS
from customgpt.errors import CustomGPTError
from customgpt.io import read_json_object

#: Short names that Hugging Face resolves to OpenAI's released GPT-2 checkpoints (``gpt2``,
#: ``gpt2-medium``, ``gpt2-large``, ``gpt2-xl``). They name *pretrained weights*; the preset
#: names (``gpt2-124M`` ...) name a shape with random weights.
HUB_ALIASES: dict[str, str] = {repo.split("/")[1]: repo for repo in HF_HUB_IDS.values()}

# owner/name, as the hub spells repository ids (letters, digits, '-', '_', '.').
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def hub_repo_id(spec: str) -> str | None:
    """The hub repository id that ``spec`` names (``gpt2`` → ``openai-community/gpt2``), or None."""
    if spec in HUB_ALIASES:
        return HUB_ALIASES[spec]
    if _REPO_ID.match(spec) and ".." not in spec:
        return spec
    return None


def offline_variable() -> str | None:
    """The environment variable (``HF_HUB_OFFLINE`` or ``TRANSFORMERS_OFFLINE``) that tells
    the hub client not to use the network, or None.

    Read from the environment on every call (``huggingface_hub`` reads it once at import,
    which would miss a variable set later, as the test-suite does).
    """
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on"):
            return var
    return None


def first_line(exc: BaseException) -> str:
    """The first line of an error's message (its type's name when it has none)."""
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


_HTTP_MODULES = ("httpx", "httpcore", "requests", "urllib3")


def is_network_error(exc: BaseException, modules: tuple[str, ...] = _HTTP_MODULES) -> bool:
    """Raised by an HTTP client library (a refused connection, a failed DNS lookup, a
    timeout, an HTTP error status) rather than by our code; ``modules`` are their names."""
    return any(cls.__module__.split(".")[0].rstrip("0123456789") in modules for cls in type(exc).__mro__)


class HubUnavailableError(CustomGPTError):
    """The hub cannot be used (offline or unreachable) and the model is not in the cache."""


def _offline_advice(repo_id: str) -> str:
    local = repo_id.rsplit("/", 1)[-1]
    return (
        f"download it on a connected machine (`hf download {repo_id} config.json model.safetensors "
        f"--local-dir {local}`), copy the folder here and pass its path instead of the hub id"
    )


def download_model(repo_id: str, *, config_only: bool = False) -> Path:
    """Fetch ``config.json`` and the safetensors weights (one file or shards) of ``repo_id``;
    return the local folder.

    Uses the hub's cache, so a second call costs nothing. Offline (``HF_HUB_OFFLINE=1``) only
    the cache is consulted; a model that is not in it fails at once
    (:class:`HubUnavailableError`) with advice to download it elsewhere and pass the local
    folder. ``config_only`` fetches just ``config.json`` (the returned folder still holds
    the weights if they were downloaded before).
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import GatedRepoError, LocalEntryNotFoundError, RepositoryNotFoundError

    offline = offline_variable()
    weights = ["model.safetensors", "model.safetensors.index.json", "model-*.safetensors"]
    try:
        folder = snapshot_download(
            repo_id,
            allow_patterns=["config.json"] + ([] if config_only else weights),
            local_files_only=offline is not None,
            etag_timeout=10,
        )
    except LocalEntryNotFoundError as exc:
        why = f"the hub is offline ({offline}=1)" if offline else "the hub cannot be reached"
        raise HubUnavailableError(
            f"cannot download {repo_id!r}: {why} and it is not in the local cache; {_offline_advice(repo_id)}"
        ) from exc
    except GatedRepoError as exc:
        raise CustomGPTError(f"{repo_id!r} is gated on the hub: accept its terms and log in (`hf auth login`)") from exc
    except RepositoryNotFoundError as exc:
        raise CustomGPTError(f"no model {repo_id!r} on the Hugging Face hub (or it is private)") from exc
    except Exception as exc:  # connection errors (httpx's are not OSErrors), invalid ids
        if not isinstance(exc, (OSError, ValueError)) and not is_network_error(exc):
            raise
        raise HubUnavailableError(
            f"cannot download {repo_id!r} ({first_line(exc)}); {_offline_advice(repo_id)}"
        ) from exc
    return Path(folder)


def push_to_hub(
    folder: str | Path,
    repo_id: str,
    private: bool = False,
    token: str | None = None,
    *,
    commit_message: str = "Upload GPT-2 model exported by customgpt",
) -> str:
    """Upload an exported Hugging Face folder (see :func:`customgpt.checkpoints.export_hf`).

    Creates the repository if needed (``exist_ok``), then uploads every file of ``folder``
    in one commit. Returns the repository URL.

    Raises:
        CustomGPTError: no token (log in or set ``HF_TOKEN``), a folder that is not an
            export, or a hub error (the hub's message is kept).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise CustomGPTError(f"no such folder: {folder}")
    missing = [name for name in ("config.json", "model.safetensors") if not (folder / name).is_file()]
    if missing:
        raise CustomGPTError(
            f"{folder} is not an exported model folder (missing {', '.join(missing)}); "
            "create one with `customgpt convert SRC DST --to hf`"
        )
    if "model_type" not in read_json_object(folder / "config.json"):
        raise CustomGPTError(
            f"{folder} holds a customgpt checkpoint, not a Hugging Face export; "
            "convert it first with `customgpt convert SRC DST --to hf`"
        )
    if not _REPO_ID.match(repo_id):
        raise CustomGPTError(f"repository id must look like 'user/name', got {repo_id!r}")

    import huggingface_hub

    token = token or huggingface_hub.get_token()  # get_token reads HF_TOKEN too
    if not token:
        raise CustomGPTError(
            "pushing to the hub needs a Hugging Face token: run `hf auth login` "
            "(older versions: `huggingface-cli login`) or set HF_TOKEN"
        )
    if offline := offline_variable():
        raise CustomGPTError(f"cannot push: the hub is switched off ({offline}=1 is set)")
    from huggingface_hub.errors import HfHubHTTPError

    api = huggingface_hub.HfApi(token=token)
    try:
        url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        api.upload_folder(
            folder_path=str(folder), repo_id=repo_id, repo_type="model", commit_message=commit_message
        )
    except HfHubHTTPError as exc:
        raise CustomGPTError(f"hub refused the upload to {repo_id!r}: {first_line(exc)}") from exc
    except Exception as exc:  # httpx's connection errors are not OSErrors
        if not isinstance(exc, OSError) and not is_network_error(exc):
            raise
        raise CustomGPTError(
            f"cannot reach the Hugging Face hub to push {repo_id!r}: {first_line(exc)} ({type(exc).__name__})"
        ) from exc
    return str(url)
