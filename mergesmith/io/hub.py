"""Hugging Face Hub ids (``org/name``, ``org/name@revision``) → a local snapshot directory.

The local cache is asked first, so a model downloaded once (or copied into ``HF_HUB_CACHE``)
resolves without a network. ``huggingface_hub`` reads its own settings (``HF_HUB_CACHE``,
``HF_HUB_OFFLINE``, ``HF_TOKEN``); mergesmith passes nothing of its own to it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from mergesmith.errors import InputFormatError

# The Hub's repo-id shape: one namespace, one name; no leading '.' or '-', no '..'.
_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*")
# What a merge reads from a model or adapter repository: weights, configs, tokenizer files.
_PATTERNS = ("*.safetensors", "*.json", "*.txt", "*.model", "*.jinja", "*.tiktoken")


def looks_like_hub_id(text: str) -> bool:
    return bool(_HUB_ID.fullmatch(text)) and ".." not in text and not text.endswith(".")


def _fetch_advice(repo_id: str, revision: str | None) -> str:
    rev = f" --revision {revision}" if revision else ""
    return (
        f"download it where you have network (`hf download {repo_id}{rev}`) and give the local directory "
        "in the recipe, or point HF_HUB_CACHE at a cache that holds it"
    )


def snapshot_dir(
    key: str, repo_id: str, revision: str | None, *, looked_in: Sequence[Path], allow_pickle: bool = False,
) -> Path:
    """The snapshot directory of ``repo_id`` at ``revision`` (default branch when None).

    ``key`` is the whole recipe reference (it may be ``base+adapter``), for messages.
    """
    shown = repo_id + (f"@{revision}" if revision else "")
    who = f"model '{key}'" + ("" if key == shown else f": '{shown}'")
    local = ", ".join(str(p) for p in looked_in)
    try:
        import huggingface_hub
        from huggingface_hub.utils import (
            GatedRepoError,
            HfHubHTTPError,
            LocalEntryNotFoundError,
            OfflineModeIsEnabled,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )
    except ImportError:
        raise InputFormatError(
            f"{who} is not a local path (looked in {local}) and reading Hub ids needs huggingface_hub: "
            "pip install 'mergesmith[hub]', or give a local directory"
        ) from None
    patterns = list(_PATTERNS) + (["*.bin"] if allow_pickle else [])

    def download(local_only: bool) -> Path:
        return Path(huggingface_hub.snapshot_download(
            repo_id, revision=revision, allow_patterns=patterns, local_files_only=local_only,
        ))

    try:
        return download(True)
    except LocalEntryNotFoundError:
        pass   # not in the cache (or only partly): ask the Hub below
    try:
        return download(False)
    except GatedRepoError:
        reason = "is gated on the Hugging Face Hub; accept its terms on the Hub and log in (`hf auth login`)"
    except RevisionNotFoundError:
        reason = f"has no revision '{revision}' on the Hugging Face Hub; give a branch, tag or commit that exists"
    except RepositoryNotFoundError:
        reason = ("is not on the Hugging Face Hub either (or is private: log in with `hf auth login`); "
                  "check the spelling, or give a local directory")
    except LocalEntryNotFoundError as exc:
        offline = isinstance(exc.__cause__, OfflineModeIsEnabled)
        why = "offline: HF_HUB_OFFLINE is set" if offline else "offline"
        reason = f"the Hugging Face Hub is unreachable ({why}); " + _fetch_advice(repo_id, revision)
    except HfHubHTTPError as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        reason = f"could not be fetched from the Hugging Face Hub ({first}); " + _fetch_advice(repo_id, revision)
    except ValueError as exc:   # huggingface_hub's own id validation (HFValidationError)
        reason = f"is not a valid Hugging Face Hub id ({exc}); give a local directory or org/name"
    # Say where it was looked for locally too: a mistyped relative path also lands here.
    raise InputFormatError(f"{who} is not found locally (looked in {local}) and {reason}")
