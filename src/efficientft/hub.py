"""``eft run --push-to-hub REPO``: upload the exported adapter folder to the Hugging Face Hub.

Checked before any training (a bad repo id or a missing ``--export-dir`` must not cost a run); the upload itself
needs a network and a token (``huggingface-cli login`` or ``$HF_TOKEN``), so the tests only check the validation.
"""

from __future__ import annotations

import re
from pathlib import Path

from .errors import ConfigError

# the Hub's repo ids: an optional namespace, then a name; letters, digits, '-', '_', '.'
_REPO = re.compile(r"^(?:[A-Za-z0-9][A-Za-z0-9._-]{0,95}/)?[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")


def check_hub_repo(repo: str, export_dir: str | None) -> None:
    """Raise :class:`ConfigError` unless ``repo`` is a Hub repo id and there is a folder to upload."""
    if not _REPO.match(repo) or ".." in repo or repo.endswith((".", "-")):
        raise ConfigError(f"--push-to-hub wants a Hub repo id like owner/name (letters, digits, '-', '_', '.'), "
                          f"got {repo!r}.")
    if not export_dir:
        raise ConfigError("--push-to-hub uploads the exported weights: add --export-dir DIR.")


def push_to_hub(repo: str, folder: Path, private: bool = True) -> str:
    """Create ``repo`` if needed (private by default) and upload ``folder``; returns the repo's URL."""
    from huggingface_hub import HfApi

    api = HfApi()
    try:
        url = api.create_repo(repo, private=private, exist_ok=True)
        api.upload_folder(repo_id=repo, folder_path=str(folder), commit_message="EfficientFT export")
    except Exception as e:  # noqa: BLE001 - network, auth: the run is stored; say what failed, in one line
        raise ConfigError(f"could not upload {folder} to the Hub repo {repo!r}: {type(e).__name__}: "
                          f"{str(e).splitlines()[0] if str(e) else ''} (the run itself is stored).") from None
    return str(url)
