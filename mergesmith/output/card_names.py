"""What a model card calls each input: a name its reader can use, never a path of this machine.

One side of a reference (the model, or the adapter of ``base+adapter``) is shown as

1. a local path inside a Hugging Face cache snapshot (``.../models--org--name/snapshots/<commit>``,
   or a file in one): the Hub id ``org/name``;
2. any other local path, found where the merge finds it (the working directory, then the
   recipe's folder): its directory or ``.gguf`` file name;
3. no local path, but shaped like a Hub id (``org/name[@revision]``): the Hub id as written;
4. anything else (a path not on this machine now): its last component.

config.json's ``_name_or_path`` is not read: transformers 4 saved the name the weights were loaded
from, so a fine-tune saved locally names its parent (or a path such as /home/...), and transformers
5 no longer writes it. A wrong Hub id in ``base_model`` misleads more than none.

A licence is read from the input's README.md front matter (``license:``), or for a GGUF file from
its ``general.license``; config.json has no licence key.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import yaml

from mergesmith.config.references import ModelPath, parse_reference
from mergesmith.io.hub import looks_like_hub_id

HUB_URL = "https://huggingface.co"


@dataclass(frozen=True)
class Shown:
    text: str  # what the card prints
    kind: Literal["hub", "local", "stage"]
    hub_id: str | None = None  # org/name, without revision
    revision: str | None = None
    local: Path | None = None  # where it was found: read for its licence, never printed

    @property
    def markdown(self) -> str:
        """Hub models link to their page (at the revision when one is named); other names are plain."""
        if self.hub_id is None:
            return self.text
        url = f"{HUB_URL}/{self.hub_id}" + (f"/tree/{self.revision}" if self.revision else "")
        return f"[{self.text}]({url})"


def _snapshot_id(path: Path) -> str | None:
    """``org/name`` of a path inside a Hub cache snapshot (the cache writes ``models--org--name``;
    repo ids cannot contain ``--``, so the split is exact)."""
    parts = path.parts
    for i in range(len(parts) - 2):
        if parts[i].startswith("models--") and parts[i + 1] == "snapshots" and len(parts[i]) > len("models--"):
            return parts[i][len("models--") :].replace("--", "/")
    return None


def _found(path: str, base_dir: Path | None) -> Path | None:
    """The local path a merge reads for ``path`` (as io/resolve.py looks it up), or None."""
    first = Path(path).expanduser()
    candidates = [first] + ([base_dir / first] if base_dir is not None and not first.is_absolute() else [])
    return next((c.absolute() for c in candidates if c.exists()), None)


def shown_path(path: Path) -> Shown:
    """A model on this machine: its Hub id when it is a cache snapshot, else its own name."""
    hub = _snapshot_id(path) or _snapshot_id(path.resolve())  # a snapshot file resolves into blobs/
    return Shown(hub or path.name, "hub" if hub else "local", hub_id=hub, local=path)


def shown_part(part: ModelPath, base_dir: Path | None = None) -> Shown:
    found = _found(part.path, base_dir)
    if found is not None:
        return shown_path(found)
    if looks_like_hub_id(part.path):
        return Shown(str(part), "hub", hub_id=part.path, revision=part.revision)
    return Shown(Path(part.path).name or part.path, "local")


def card_names(refs: Iterable[str], base_dir: Path | None = None, stages: Sequence[str] = ()) -> dict[str, Shown]:
    """Each side of each reference, keyed by how the recipe writes it (``path[@revision]``)."""
    names: dict[str, Shown] = {}
    for ref in refs:
        parsed = parse_reference(ref)
        for part in (parsed.model, parsed.lora):
            if part is not None and str(part) not in names:
                stage = part.path in stages and part.revision is None
                names[str(part)] = Shown(part.path, "stage") if stage else shown_part(part, base_dir)
    return names


def reference_md(ref: str, names: Mapping[str, Shown]) -> str:
    """A reference for the card's text: ``base+adapter`` says which LoRA adapter was folded in."""
    parsed = parse_reference(ref)
    model = names[str(parsed.model)].markdown
    return f"{model} with the LoRA adapter {names[str(parsed.lora)].markdown} merged in" if parsed.lora else model


def hub_ids(refs: Iterable[str], names: Mapping[str, Shown]) -> list[str]:
    """The front matter's ``base_model``: Hub ids of the models (not adapters), without revision."""
    shown = (names[str(parse_reference(ref).model)] for ref in refs)
    return list(dict.fromkeys(s.hub_id for s in shown if s.hub_id is not None))


# --- the quoted recipe ---------------------------------------------------------------------------

RENAMED_NOTE = "# mergesmith: local model paths below are replaced by their directory or file names"
# A path is replaced only where it stands whole: not inside a longer path or name.
_EDGE_BEFORE, _EDGE_AFTER = r"(?<![\w./~-])", r"(?![\w./-])"


def shown_recipe(text: str, names: Mapping[str, Shown]) -> str:
    """The recipe as run, each local path replaced by its name and a comment line saying so;
    as written when no name differs from what the recipe says."""
    changes = {written: s.text for written, s in names.items() if s.kind != "stage" and s.text != written}
    shown = text
    for written in sorted(changes, key=len, reverse=True):  # longest first: /a/b/c before /a/b
        shown = re.sub(_EDGE_BEFORE + re.escape(written) + _EDGE_AFTER, lambda _, new=changes[written]: new, shown)
    return text if shown == text else f"{RENAMED_NOTE}\n{shown}"


# --- licences ------------------------------------------------------------------------------------


def front_matter(card: str) -> dict:
    """The YAML front matter of a card (``---`` lines around it), or {} when it has none or it is broken."""
    if not card.startswith("---\n"):
        return {}
    end = card.find("\n---", 3)
    try:
        data = yaml.safe_load(card[4:end]) if end >= 0 else None
    except yaml.YAMLError:
        return {}
    return data if isinstance(data, dict) else {}


def _readme_license(folder: Path) -> str | None:
    try:
        found = front_matter((folder / "README.md").read_text(encoding="utf-8")).get("license")
    except (OSError, UnicodeDecodeError):
        return None
    return found if isinstance(found, str) else None


def _gguf_license(file: Path) -> str | None:
    # The gguf extra; without it (or with a file it cannot read) a GGUF input has no known licence.
    try:
        from gguf import GGUFReader

        field = GGUFReader(file).get_field("general.license")
        value = field.contents() if field is not None else None
    except (ImportError, OSError, ValueError, IndexError, KeyError, TypeError):
        return None  # the merge reads the file strictly; the card only misses a licence
    return value if isinstance(value, str) else None


def _hub_license(shown: Shown) -> str | None:
    """From a README.md already in the Hub cache (``hf download`` fetches it); never downloads."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    try:
        cached = try_to_load_from_cache(shown.hub_id, "README.md", revision=shown.revision)
    except ValueError:  # huggingface_hub's id validation: the merge reports a bad id itself
        return None
    return _readme_license(Path(cached).parent) if isinstance(cached, str) else None


def license_of(shown: Shown) -> str | None:
    if shown.kind == "hub" and shown.local is None:
        return _hub_license(shown)
    path = shown.local
    if path is None:
        return None
    if path.is_file():
        return _gguf_license(path) if path.suffix == ".gguf" else None
    if (found := _readme_license(path)) is not None:
        return found
    ggufs = sorted(path.glob("*.gguf"))  # a folder holding one GGUF file is that model (io/resolve.py)
    return _gguf_license(ggufs[0]) if len(ggufs) == 1 and not (path / "config.json").is_file() else None


def common_license(shown: Iterable[Shown]) -> str | None:
    """The licence every input states, when they all state the same one; ``other`` needs a name and
    link the card cannot vouch for, so it is never passed on."""
    found = {license_of(s) for s in shown if s.kind != "stage"}
    value = found.pop() if len(found) == 1 else None
    return value if value not in (None, "other") else None
