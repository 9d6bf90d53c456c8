"""Hugging Face Hub ids (``org/name``, ``org/name@revision``) → local snapshot directories.

Two depths: ``snapshot_dir`` gives a snapshot with the weights (a merge reads them);
``header_files`` gives one with only config.json, the tokenizer files and the shard index, and
``remote_tensors`` reads each safetensors file's header over HTTP range requests, so a recipe over
70B models is planned before a weight byte is downloaded. The local cache is asked first, so a
model downloaded once (or copied into ``HF_HUB_CACHE``) resolves without a network.
``huggingface_hub`` reads its own settings (``HF_HUB_CACHE``, ``HF_HUB_OFFLINE``, ``HF_TOKEN``,
``HF_ENDPOINT``); mergesmith passes nothing of its own to it.
"""

from __future__ import annotations

import contextlib
import importlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from mergesmith.errors import InputFormatError
from mergesmith.io.model_files import read_index
from mergesmith.io.reader import _ST_DTYPES, SAFETENSORS_INDEX, TensorInfo

# The Hub's repo-id shape: one namespace, one name; no leading '.' or '-', no '..'.
_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*")
# What a merge reads from a model or adapter repository: weights, configs, tokenizer files.
_PATTERNS = ("*.safetensors", "*.json", "*.txt", "*.model", "*.jinja", "*.tiktoken")
# What planning reads: the config, the shard index, and what the output's tokenizer, vocabulary
# and chat template come from (output/tokenizer.py's TOKENIZER_FILES, plus generation_config.json).
HEADER_FILES = (
    "config.json",
    "generation_config.json",
    SAFETENSORS_INDEX,
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
)


def looks_like_hub_id(text: str) -> bool:
    return bool(_HUB_ID.fullmatch(text)) and ".." not in text and not text.endswith(".")


def has_weights(folder: Path, allow_pickle: bool = False) -> bool:
    """Whether a snapshot holds its weights: every shard its index names, else a weights file.

    A snapshot can hold only the files a plan fetched; such a one is completed from the Hub.
    """
    index = folder / SAFETENSORS_INDEX
    if index.is_file():
        try:
            shards = set(read_index(folder, index).values())
        except InputFormatError:
            return True  # complete as far as we can tell: the reader reports the bad index
        return all(shard.is_file() for shard in shards)
    return any(folder.glob("*.safetensors")) or (allow_pickle and any(folder.glob("*.bin")))


@dataclass(frozen=True)
class _Repo:
    """One Hub reference of a recipe model, with what its error messages need."""

    key: str  # the whole recipe reference (it may be ``base+adapter``)
    repo_id: str
    revision: str | None
    looked_in: Sequence[Path]

    @property
    def who(self) -> str:
        shown = self.repo_id + (f"@{self.revision}" if self.revision else "")
        return f"model '{self.key}'" + ("" if self.key == shown else f": '{shown}'")

    def module(self):
        try:
            import huggingface_hub
            import huggingface_hub.utils  # noqa: F401  (its exceptions; not imported by the package itself)
        except ImportError:
            raise InputFormatError(
                f"{self.who} is not a local path (looked in {self._local}) and reading Hub ids needs "
                "huggingface_hub: pip install 'mergesmith[hub]', or give a local directory"
            ) from None
        return huggingface_hub

    @property
    def _local(self) -> str:
        return ", ".join(str(p) for p in self.looked_in)

    def fetch(self, patterns: Sequence[str], complete: Callable[[Path], bool], quiet: bool = False) -> Path:
        """The snapshot with the files matching ``patterns``: from the cache when ``complete`` says it
        has them, else from the Hub (which skips the files already cached)."""
        hub = self.module()
        with self.errors(), _no_progress_bars(hub) if quiet else contextlib.nullcontext():
            with contextlib.suppress(hub.utils.LocalEntryNotFoundError):  # not cached, or only partly
                cached = Path(
                    hub.snapshot_download(
                        self.repo_id, revision=self.revision, allow_patterns=list(patterns), local_files_only=True
                    )
                )
                if complete(cached):
                    return cached
            return Path(hub.snapshot_download(self.repo_id, revision=self.revision, allow_patterns=list(patterns)))

    @contextlib.contextmanager
    def errors(self):
        """huggingface_hub's exceptions → one InputFormatError naming the model and the fix."""
        hub = self.module()
        utils = hub.utils
        try:
            yield
            return
        except utils.GatedRepoError:
            reason = "is gated on the Hugging Face Hub; accept its terms on the Hub and log in (`hf auth login`)"
        except utils.RevisionNotFoundError:
            reason = (
                f"has no revision '{self.revision}' on the Hugging Face Hub; give a branch, tag or commit that exists"
            )
        except utils.RepositoryNotFoundError:
            reason = (
                "is not on the Hugging Face Hub either (or is private: log in with `hf auth login`); "
                "check the spelling, or give a local directory"
            )
        except (utils.LocalEntryNotFoundError, utils.OfflineModeIsEnabled) as exc:
            offline = any(isinstance(e, utils.OfflineModeIsEnabled) for e in (exc, exc.__cause__))
            why = "offline: HF_HUB_OFFLINE is set" if offline else "offline"
            reason = f"the Hugging Face Hub is unreachable ({why}); " + self.advice()
        except utils.SafetensorsParsingError as exc:
            reason = (
                f"has a safetensors header on the Hugging Face Hub that cannot be parsed ({_first_line(exc)}); "
                "check the repository, or download it and give the local directory"
            )
        except (OSError, *_transport_errors()) as exc:  # HfHubHTTPError is an OSError; so is a full disk
            reason = f"could not be fetched from the Hugging Face Hub ({_first_line(exc)}); " + self.advice()
        except ValueError as exc:  # huggingface_hub's own id validation (HFValidationError)
            reason = f"is not a valid Hugging Face Hub id ({exc}); give a local directory or org/name"
        # Say where it was looked for locally too: a mistyped relative path also lands here.
        raise InputFormatError(f"{self.who} is not found locally (looked in {self._local}) and {reason}")

    def advice(self) -> str:
        rev = f" --revision {self.revision}" if self.revision else ""
        return (
            f"download it where you have network (`hf download {self.repo_id}{rev}`) and give the local "
            "directory in the recipe, or point HF_HUB_CACHE at a cache that holds it"
        )


@contextlib.contextmanager
def _no_progress_bars(hub):
    """huggingface_hub's progress bars off while headers are fetched: a few small files, and
    ``plan`` and the one-line errors it ends with print nothing else. Its switch is global, so it is
    restored as found."""
    if hub.utils.are_progress_bars_disabled():
        yield
        return
    hub.utils.disable_progress_bars()
    try:
        yield
    finally:
        hub.utils.enable_progress_bars()


def _first_line(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def _transport_errors() -> tuple[type[BaseException], ...]:
    """The HTTP client's network errors (httpx2 for huggingface_hub 2, httpx for 1; requests, used
    before, raises OSErrors)."""
    for name in ("httpx2", "httpx"):
        with contextlib.suppress(ImportError):
            return (importlib.import_module(name).TransportError,)
    return ()


def snapshot_dir(
    key: str,
    repo_id: str,
    revision: str | None,
    *,
    looked_in: Sequence[Path],
    allow_pickle: bool = False,
) -> Path:
    """The snapshot directory of ``repo_id`` at ``revision`` (default branch when None), weights included.

    ``key`` is the whole recipe reference (it may be ``base+adapter``), for messages.
    """
    patterns = list(_PATTERNS) + (["*.bin"] if allow_pickle else [])
    repo = _Repo(key, repo_id, revision, tuple(looked_in))
    return repo.fetch(patterns, lambda folder: has_weights(folder, allow_pickle))


def cached_snapshot(
    key: str,
    repo_id: str,
    revision: str | None,
    *,
    looked_in: Sequence[Path],
    allow_pickle: bool = False,
) -> Path | None:
    """The snapshot with its weights when the cache already holds them; None otherwise. No network."""
    repo = _Repo(key, repo_id, revision, tuple(looked_in))
    hub = repo.module()
    patterns = list(_PATTERNS) + (["*.bin"] if allow_pickle else [])
    with repo.errors():
        try:
            found = Path(
                hub.snapshot_download(repo_id, revision=revision, allow_patterns=patterns, local_files_only=True)
            )
        except hub.utils.LocalEntryNotFoundError:
            return None  # not cached (or only partly): the caller fetches what it needs
    return found if has_weights(found, allow_pickle) else None


def header_files(
    key: str, repo_id: str, revision: str | None, *, looked_in: Sequence[Path], files: Sequence[str] = HEADER_FILES
) -> Path:
    """A snapshot directory holding those of ``files`` the repository has (config.json at least
    for a model); no weights are downloaded."""
    repo = _Repo(key, repo_id, revision, tuple(looked_in))
    return repo.fetch(files, lambda folder: (folder / files[0]).is_file(), quiet=True)


def remote_tensors(
    key: str, repo_id: str, revision: str | None, *, commit: str, looked_in: Sequence[Path]
) -> dict[str, TensorInfo] | None:
    """Tensor name → header facts of ``repo_id`` at ``commit`` (``revision`` resolved), read from the
    Hub with range requests: huggingface_hub's ``get_safetensors_metadata`` reads the first 100 kB of
    each safetensors file. None for a repository without ``model.safetensors`` or its index."""
    repo = _Repo(key, repo_id, revision, tuple(looked_in))
    hub = repo.module()
    with repo.errors(), _no_progress_bars(hub):
        try:
            # A fresh HfApi: the module-level function keeps the endpoint it saw when imported.
            metadata = hub.HfApi().get_safetensors_metadata(repo_id, revision=commit)
        except hub.utils.NotASafetensorsRepoError:
            return None
    infos = {}
    for file, header in metadata.files_metadata.items():
        for name, tensor in header.tensors.items():
            if metadata.weight_map.get(name) != file:
                continue  # a shard's tensor its index does not list: not read, as by SafetensorsReader
            dtype = _ST_DTYPES.get(tensor.dtype)
            if dtype is None:
                raise InputFormatError(
                    f"model '{key}': {repo_id}/{file}: tensor {name!r:.200} has dtype "
                    f"{tensor.dtype!r:.80}, which mergesmith does not read"
                )
            infos[name] = TensorInfo(name, tuple(tensor.shape), dtype)
    return infos
