"""The search file: what to search (a recipe with ranges, or candidate recipes), how to score it.

    recipe: {merge_method: ..., models: [...], parameters: {lambda: search}}   # or candidates: [...]
    optimizer: cma                     # cma | random | grid, or {name: cma, popsize: 8, sigma: 0.25}
    fitness:                           # minimised: a weighted sum of terms
      terms: [{nll: [kjv_fitness, austen_fitness]}]
      context: 512
      limit: 8                         # windows per text, items per task
    selection: {texts: [kjv_selection, austen_selection], top: 5}   # picks the winner among the best
    report: {texts: [kjv_heldout, austen_heldout], top: 3, baselines: [hand.yml]}

With ``fitness.racing: {start: 2, eta: 3}`` candidates race (successive halving): every candidate of
a generation is scored on the first ``start`` windows per text, the best 1/eta go on to eta times
as many, and so on up to ``limit``. Paths are relative to the search file; a text may also name a bundled text (``kjv_fitness``).
Parsed once into frozen objects; paths are resolved and the fitness / report split checked here.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from mergesmith.errors import ConfigError, InputFormatError
from mergesmith.eval.data import DATA_DIR, HELDOUT_SUFFIX


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Term(Frozen):
    """One fitness term (lower is better): mean NLL over texts, mean KL against ``ref`` over texts,
    or the error rate (1 - accuracy) on a multiple-choice task."""

    nll: tuple[str, ...] | None = None
    kl: tuple[str, ...] | None = None
    ref: str | None = None
    accuracy: str | None = None
    fewshot: int = Field(0, ge=0)
    weight: float = 1.0

    @model_validator(mode="after")
    def _one_metric(self) -> Term:
        given = [k for k in ("nll", "kl", "accuracy") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"a fitness term names exactly one of nll, kl, accuracy; got {given or 'none'}")
        if (self.kl is None) != (self.ref is None):
            raise ValueError("'ref' (the reference model directory) goes with 'kl', and 'kl' needs it")
        for texts in (self.nll, self.kl):
            if texts is not None and not texts:
                raise ValueError("a text term needs at least one text")
        return self

    @property
    def metric(self) -> str:
        return "nll" if self.nll is not None else "kl" if self.kl is not None else "accuracy"


class Racing(Frozen):
    """Successive halving within each generation: rungs of ``start``, ``start·eta``, … windows per
    text up to the fitness ``limit``; the best ``1/eta`` of a rung go on to the next."""

    start: int = Field(2, ge=1)
    eta: int = Field(3, ge=2)


class Fitness(Frozen):
    terms: tuple[Term, ...] = Field(min_length=1)
    context: int = Field(512, ge=2)
    stride: int | None = Field(None, ge=1)
    batch_size: int = Field(4, ge=1)
    limit: int | None = Field(8, ge=1)
    racing: Racing | None = None

    @model_validator(mode="after")
    def _racing_fits(self) -> Fitness:
        if self.racing is not None and (self.limit is None or self.racing.start >= self.limit):
            raise ValueError(
                f"racing.start ({self.racing.start}) must be below limit ({self.limit}), the windows per text "
                "of the last rung"
            )
        return self

    def rungs(self) -> tuple[int | None, ...]:
        """Windows per text at each rung; one rung (``limit``) without racing."""
        if self.racing is None:
            return (self.limit,)
        out = [self.racing.start]
        while out[-1] * self.racing.eta < self.limit:
            out.append(out[-1] * self.racing.eta)
        return (*out, self.limit)


class Selection(Frozen):
    """The split that picks the winner: the ``top`` candidates of the fitness leaderboard are scored
    again on texts the optimizer never saw, and the best there wins (default texts: the bundled
    ``*_selection`` texts, or the middle part of a single fitness file)."""

    texts: tuple[str, ...] | None = None
    limit: int | None = Field(None, ge=1)
    top: int = Field(5, ge=2)


class Report(Frozen):
    """What the final report scores: held-out texts (default: the bundled ``*_heldout`` texts),
    for the ``top`` candidates and for hand-written ``baselines`` recipes."""

    texts: tuple[str, ...] | None = None
    limit: int | None = Field(None, ge=1)
    top: int = Field(3, ge=1)
    baselines: tuple[str, ...] = ()


class OptimizerSettings(Frozen):
    name: Literal["cma", "random", "grid"]
    popsize: int | None = Field(None, ge=2)
    sigma: float = Field(0.25, gt=0, le=1)  # CMA-ES step size, as a fraction of each range
    steps: int | None = Field(None, ge=2)  # grid points per range (default: as many as the budget allows)


class SearchFile(Frozen):
    recipe: dict[str, Any] | None = None
    candidates: tuple[str | dict[str, Any], ...] | None = None
    optimizer: Literal["cma", "random", "grid"] | OptimizerSettings | None = None
    fitness: Fitness
    selection: Selection | None = None
    report: Report = Report()

    @model_validator(mode="after")
    def _one_space(self) -> SearchFile:
        if (self.recipe is None) == (not self.candidates):
            raise ValueError("give exactly one of 'recipe' (a recipe with ranges) or 'candidates' (a list of recipes)")
        return self

    @property
    def optimizer_settings(self) -> OptimizerSettings | None:
        if isinstance(self.optimizer, str):
            return OptimizerSettings(name=self.optimizer)
        return self.optimizer


def _where(loc: tuple) -> str:
    return ".".join(str(p) for p in loc if not (isinstance(p, str) and (p[:1].isupper() or "[" in p))) or "<top level>"


def parse_search_file(data: Any, source: str) -> SearchFile:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: a search file is a YAML mapping with 'recipe' or 'candidates' and 'fitness'")
    try:
        return SearchFile.model_validate(data)
    except ValidationError as exc:
        # The deepest error is the one that names the key at fault: for {name: cma, sigma: x} the
        # union's first branch only says "should be 'cma', 'random' or 'grid'".
        error = max(exc.errors(), key=lambda e: len(e["loc"]))
        if error["type"] == "extra_forbidden":
            key = str(error["loc"][-1])
            owner = {
                "fitness": Fitness,
                "report": Report,
                "terms": Term,
                "optimizer": OptimizerSettings,
                "selection": Selection,
                "racing": Racing,
            }
            fields = list(SearchFile.model_fields)
            for part in error["loc"][:-1]:
                fields = list(owner[part].model_fields) if part in owner else fields
            match = difflib.get_close_matches(key, fields, n=1, cutoff=0.5)
            hint = f"did you mean '{match[0]}'?" if match else f"valid keys: {', '.join(fields)}"
            raise ConfigError(f"{source}: unknown key '{_where(error['loc'])}'; {hint}") from None
        message = error["msg"].removeprefix("Value error, ")
        raise ConfigError(f"{source}: {_where(error['loc'])}: {message}") from None


def load_search_file(path) -> tuple[SearchFile, Path]:
    """The parsed file and the directory its relative paths start from."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: search file not found; give the YAML file that describes the search")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text; save the search file as UTF-8") from None
    return parse_search_file(data, str(path)), path.parent.resolve()


def resolve_text(name: str, base_dir: Path) -> Path:
    """A text file relative to the search file, else a bundled text by name (``kjv_fitness``)."""
    for candidate in (base_dir / name, DATA_DIR / "text" / f"{name}.txt"):
        if candidate.is_file():
            return candidate.resolve()
    bundled = ", ".join(sorted(p.stem for p in (DATA_DIR / "text").glob("*.txt"))) or "none"
    raise InputFormatError(f"text '{name}' is neither a file (looked in {base_dir}) nor a bundled text ({bundled})")


def resolve_path(name: str, base_dir: Path) -> Path:
    path = Path(name).expanduser()
    return (path if path.is_absolute() else base_dir / path).resolve()


def fitness_texts(fitness: Fitness, base_dir: Path) -> tuple[Path, ...]:
    return tuple(resolve_text(t, base_dir) for term in fitness.terms for t in (term.nll or term.kl or ()))


def report_texts(search: SearchFile, base_dir: Path) -> tuple[Path, ...]:
    """Held-out texts; none of them may be a fitness text (by path or by content)."""
    if search.report.texts is None:
        texts = tuple(sorted((DATA_DIR / "text").glob(f"*{HELDOUT_SUFFIX}")))
    else:
        texts = tuple(resolve_text(t, base_dir) for t in search.report.texts)
    if not texts:
        raise ConfigError("report.texts is empty and no bundled held-out texts were found; list held-out texts")
    fitting = {p: p.read_bytes() for p in fitness_texts(search.fitness, base_dir)}
    for text in texts:
        for fit, content in fitting.items():
            if text == fit or text.read_bytes() == content:
                raise ConfigError(
                    f"report text {text} is also a fitness text ({fit}); the report must use held-out texts "
                    "the search never scored, e.g. data/text/*_heldout.txt"
                )
    return texts
