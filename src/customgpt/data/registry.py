"""The public datasets the project uses: where they come from, and how to get them safely.

Each dataset has one canonical URL, a sha256 checksum, a size and a licence. :func:`fetch`
returns a verified local copy from, in order: a **mirror folder** (for offline machines and CI;
a file there with the wrong checksum is an error, never replaced: the mirror is the user's), the
**cache folder**, else a **download** into the cache, checksummed while it streams and moved
into place only when the checksum matches, so an interrupted or corrupt download never leaves
a file that looks valid.
"""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from customgpt.errors import DataError
from customgpt.io import atomic_open, sha256_file

#: Environment variable naming a mirror folder of the dataset files (checked first).
DATA_DIR_ENV = "CUSTOMGPT_DATA_DIR"
#: Environment variable overriding the root of customgpt's cache folder.
CACHE_DIR_ENV = "CUSTOMGPT_CACHE_DIR"

_CHUNK = 1 << 16


@dataclass(frozen=True)
class DatasetInfo:
    """One public dataset file: its registry ``name`` (``customgpt data fetch NAME``), its
    ``filename`` in a mirror folder and in the cache, canonical ``url``, hex ``sha256``, ``size``
    in bytes, ``licence`` and a one-line ``description``."""

    name: str
    filename: str
    url: str
    sha256: str
    size: int
    licence: str
    description: str


#: The registry, by name.
DATASETS: dict[str, DatasetInfo] = {
    info.name: info
    for info in (
        DatasetInfo(
            name="sms-spam",
            filename="sms_spam_collection.zip",
            url="https://archive.ics.uci.edu/static/public/228/sms+spam+collection.zip",
            sha256="1587ea43e58e82b14ff1f5425c88e17f8496bfcdb67a583dbff9eefaf9963ce3",
            size=203_415,
            licence="CC BY 4.0 (Almeida & Hidalgo)",
            description="SMS Spam Collection v.1: 5,574 tab-separated label/text lines (4,827 ham, 747 spam)",
        ),
        DatasetInfo(
            name="instruction-data",
            filename="instruction-data.json",
            url="https://raw.githubusercontent.com/rasbt/LLMs-from-scratch/main/ch07/01_main-chapter-code/instruction-data.json",
            sha256="7e09a9af353722ca15c18bc580f093f9c39d3178335a75177319cb1e1d163944",
            size=203_524,
            licence="Apache-2.0",
            description="1,100 Alpaca-style records {instruction, input, output}",
        ),
        DatasetInfo(
            name="instruction-data-with-preference",
            filename="instruction-data-with-preference.json",
            url="https://raw.githubusercontent.com/rasbt/LLMs-from-scratch/main/ch07/04_preference-tuning-with-dpo/instruction-data-with-preference.json",
            sha256="305315abf14f65fa42c01a0877572f832606571c2a7d49f152ac1d758b16756e",
            size=386_968,
            licence="Apache-2.0",
            description="the 1,100 instruction records plus chosen/rejected responses (for DPO)",
        ),
        DatasetInfo(
            name="the-verdict",
            filename="the-verdict.txt",
            url="https://raw.githubusercontent.com/rasbt/LLMs-from-scratch/main/ch02/01_main-chapter-code/the-verdict.txt",
            sha256="b41e41a68f0398a3154ae69e2e4c0e2694e17fe0d66730536837f1b01935b31f",
            size=20_479,
            licence="public domain",
            description="a 20,479-character public-domain short story: a tiny pretraining corpus",
        ),
    )
}


def get_info(name: str) -> DatasetInfo:
    """The registry entry for ``name`` (a :class:`DataError` listing the known names if absent)."""
    try:
        return DATASETS[name]
    except KeyError:
        raise DataError(f"unknown dataset {name!r}; known datasets: {', '.join(DATASETS)}") from None


# --------------------------------------------------------------------------- folders


def mirror_dir(data_dir: str | os.PathLike[str] | None = None) -> Path | None:
    """The mirror folder: ``data_dir`` if given, else ``$CUSTOMGPT_DATA_DIR``, else None."""
    if data_dir is not None:
        return Path(data_dir).expanduser()
    env = os.environ.get(DATA_DIR_ENV)
    return Path(env).expanduser() if env else None


def cache_root() -> Path:
    """Root of customgpt's cache: ``$CUSTOMGPT_CACHE_DIR``, else ``$XDG_CACHE_HOME/customgpt``, else
    ``~/.cache/customgpt``."""
    env = os.environ.get(CACHE_DIR_ENV)
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "customgpt"


def dataset_cache_dir(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Where downloaded datasets live: ``cache_dir`` if given, else ``cache_root()/datasets``."""
    return Path(cache_dir).expanduser() if cache_dir is not None else cache_root() / "datasets"


# --------------------------------------------------------------------------- checksums


def verify(path: str | os.PathLike[str], info: DatasetInfo) -> bool:
    """True if ``path`` is exactly the registered file (size, then sha256)."""
    try:
        return Path(path).stat().st_size == info.size and sha256_file(path) == info.sha256
    except OSError:
        return False


def local_status(
    name: str,
    data_dir: str | os.PathLike[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> str:
    """Where a verified copy of ``name`` is: ``"mirrored"``, ``"cached"``, ``"mirror: bad checksum"``
    (a mirror file exists but is not the registered one), or ``"-"`` (none)."""
    info = get_info(name)
    mirror = mirror_dir(data_dir)
    if mirror is not None and (mirror / info.filename).is_file():
        return "mirrored" if verify(mirror / info.filename, info) else "mirror: bad checksum"
    return "cached" if verify(dataset_cache_dir(cache_dir) / info.filename, info) else "-"


# --------------------------------------------------------------------------- fetch


def fetch(
    name: str,
    data_dir: str | os.PathLike[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
    *,
    timeout: float = 60.0,
    data_dir_option: str = "--data-dir",
) -> Path:
    """A local, checksum-verified copy of the dataset ``name``: mirror, else cache, else download.

    Args:
        name: a registry name (see :data:`DATASETS`).
        data_dir: mirror folder; default ``$CUSTOMGPT_DATA_DIR``.
        cache_dir: download folder; default :func:`dataset_cache_dir`.
        progress: show a progress bar while downloading.
        timeout: seconds to wait for the server before giving up.
        data_dir_option: how the calling command sets the mirror folder, for the offline
            advice (``--data-dir`` for ``customgpt data fetch``, ``--data.data_dir`` for
            the training commands).

    Raises:
        DataError: unknown name, a mirror file with the wrong checksum, a download that
            fails (offline, HTTP error) or whose checksum does not match (the bad file is
            deleted). The message names the file, its URL and the mirror setting.
    """
    info = get_info(name)
    mirror = mirror_dir(data_dir)
    status = local_status(name, data_dir, cache_dir)
    if status == "mirrored":
        return mirror / info.filename
    if status == "mirror: bad checksum":
        candidate = mirror / info.filename
        raise DataError(
            f"{candidate} is not the registered {info.name} file (sha256 {sha256_file(candidate)}, "
            f"expected {info.sha256}, {info.size} bytes); replace it with a fresh copy of {info.url}"
        )
    folder = dataset_cache_dir(cache_dir)
    target = folder / info.filename
    if status == "cached":
        return target
    target.unlink(missing_ok=True)  # a stale or corrupt cache entry: never use it, download again
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"cannot create the dataset cache folder {folder}: {exc}") from exc

    from tqdm.auto import tqdm

    # stream into a ``.part`` file beside the target, checksummed as it comes; atomic_open moves
    # it into place only on success and removes it on any error, a checksum mismatch included
    with atomic_open(target, "wb", suffix=".part") as out:
        digest = hashlib.sha256()
        try:
            request = urllib.request.Request(info.url, headers={"User-Agent": "customgpt"})
            with urllib.request.urlopen(request, timeout=timeout) as response:
                total = int(response.headers.get("Content-Length") or info.size)
                with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=info.filename,
                          leave=False, disable=not progress) as bar:
                    for chunk in iter(lambda: response.read(_CHUNK), b""):
                        out.write(chunk)
                        digest.update(chunk)
                        bar.update(len(chunk))
        except OSError as exc:  # HTTP errors, URLError, timeouts, refused connections, resets
            http = isinstance(exc, urllib.error.HTTPError)
            reason = f"HTTP {exc.code} {exc.reason}" if http else getattr(exc, "reason", exc)
            where = f"the mirror folder {mirror} has no {info.filename}; " if mirror is not None else ""
            raise DataError(
                f"cannot download {info.filename} from {info.url} ({reason}); {where}on an offline machine, "
                f"download {info.url} elsewhere and put it in a mirror folder as {info.filename}, then set "
                f"{DATA_DIR_ENV}=FOLDER (or pass {data_dir_option} FOLDER)"
            ) from exc
        actual = digest.hexdigest()
        if actual != info.sha256:
            raise DataError(
                f"checksum mismatch for {info.filename} downloaded from {info.url}: got sha256 {actual} "
                f"({out.tell()} bytes), expected {info.sha256} ({info.size} bytes); the file was deleted"
            )
    return target
