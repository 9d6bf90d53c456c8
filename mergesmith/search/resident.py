"""A worker's resident state: inputs read once, one model object that every candidate is merged into.

A candidate is planned as any merge (`build_plan`) and run by the normal runner (`execute`),
but its writer copies each output tensor into the resident model's parameters instead of a
file: no checkpoint per candidate. Input tensors are read once per worker and kept (so LoRA
folding and disk reads happen once); the runner gets a clone of each, so a method may still
treat its inputs as its own.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import math
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import yaml

from mergesmith.api import DEFAULT_CALIBRATION_CACHE, model_keys, read_recipe
from mergesmith.config.load import parse_recipe
from mergesmith.errors import ArchitectureError, MergesmithError
from mergesmith.execute.runner import execute
from mergesmith.io.resolve import close_models, open_models
from mergesmith.output.config import output_config
from mergesmith.output.tokenizer import copy_tokenizer
from mergesmith.plan.planner import build_plan
from mergesmith.search.fitness import WINDOWS, Objective, Scorer, loaded
from mergesmith.search.noise import HELDOUT_WINDOWS, SELECTION, SELECTION_WINDOWS
from mergesmith.search.store import ReportRow


@dataclass(frozen=True)
class Setup:
    """Everything a worker needs, as plain data (it is pickled to processes and Ray actors)."""

    source: str  # the search file, for messages
    base_dir: str  # where relative model references start
    keys: tuple[str, ...]  # every input model of every branch
    probe: str  # a candidate recipe (JSON) that fixes the model's shape and tokenizer
    objective: Objective
    seed: int  # merge seed (DARE and other random methods)
    threads: int  # torch threads per worker: fixed, so results do not depend on the backend
    allow_pickle: bool = False
    selection: Objective | None = None  # the report's splits, scored only by ``Evaluator.report``
    heldout: Objective | None = None
    calibration_cache: str = str(DEFAULT_CALIBRATION_CACHE)  # Gram matrices of data-aware methods


@dataclass(frozen=True)
class Outcome:
    fitness: float  # inf when the candidate failed
    details: dict
    seconds: float
    worker: str
    error: str | None = None


class CachedReader:
    """A reader that keeps every tensor it has read; ``get`` hands out clones."""

    def __init__(self, reader):
        self._reader, self._tensors = reader, {}
        self.path = reader.path

    def keys(self):
        return self._reader.keys()

    def info(self, name):
        return self._reader.info(name)

    def get(self, name: str) -> torch.Tensor:
        if name not in self._tensors:
            self._tensors[name] = self._reader.get(name)
        return self._tensors[name].clone()

    def close(self) -> None:
        self._tensors.clear()
        self._reader.close()


class ResidentSink:
    """The runner's writer: ``write(name, tensor)`` copies into the model's own tensor."""

    def __init__(self, model):
        self._targets = model.state_dict()
        self.written: set[str] = set()

    def write(self, name: str, tensor: torch.Tensor) -> None:
        target = self._targets.get(name)
        if target is None or target.shape != tensor.shape:
            raise ArchitectureError(
                f"candidate tensor {name} {list(tensor.shape)} has no place in the resident model; a search "
                "needs candidates of one shape (no layer slicing that changes the layer count between candidates)"
            )
        target.copy_(tensor)
        self.written.add(name)

    def write_range(self, name: str, start: int, tensor: torch.Tensor) -> None:
        """Elements [start, start + n) of ``name``, flat (the runner's streamed jobs)."""
        target = self._targets.get(name)
        if target is None or start + tensor.numel() > target.numel():
            raise ArchitectureError(
                f"candidate tensor {name} has no place in the resident model; a search needs candidates of one "
                "shape (no layer slicing that changes the layer count between candidates)"
            )
        target.view(-1)[start : start + tensor.numel()].copy_(tensor.reshape(-1))

    def complete(self, name: str) -> None:
        """Every element of ``name`` has been written (after ``write_range``)."""
        self.written.add(name)

    def check_complete(self) -> None:
        """Every tensor of the model was written, a tied alias counting as its twin."""
        storage = {}
        for name, tensor in self._targets.items():
            storage.setdefault(tensor.untyped_storage().data_ptr(), []).append(name)
        missing = [names[0] for names in storage.values() if not self.written.intersection(names)]
        if missing:
            raise ArchitectureError(
                f"the recipe writes no value for {', '.join(missing[:3])} of the resident model; "
                "a search needs recipes that produce every tensor of the model"
            )


def _build_model(plan, models, tmp: Path):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    (tmp / "config.json").write_text(json.dumps(output_config(plan, models)))
    copy_tokenizer(models[plan.tokenizer_donor], tmp)
    config = AutoConfig.from_pretrained(tmp)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # every parameter is overwritten; seeded anyway so nothing is left to chance
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    return model.eval(), AutoTokenizer.from_pretrained(tmp)


@dataclass
class Resident:
    """One model object of a shape, the writer into it, its scorers (fitness; selection and held-out
    once the report needs them)."""

    sink: ResidentSink
    scorer: Scorer
    splits: tuple | None = None


RESIDENTS = 4  # shapes kept per worker (layer stacks of different depths); the oldest goes first


class Evaluator:
    """Merges candidate recipes into a resident model (one per shape) and scores them."""

    def __init__(self, setup: Setup, worker: str):
        if importlib.util.find_spec("transformers") is None:
            raise MergesmithError("mergesmith search needs transformers; pip install 'mergesmith[hf]'")
        torch.set_num_threads(setup.threads)
        self.setup, self.worker = setup, worker
        self._stack, self._grams, self._residents = contextlib.ExitStack(), {}, {}
        opened = open_models(setup.keys, base_dir=Path(setup.base_dir), allow_pickle=setup.allow_pickle)
        self.models = {k: replace(m, reader=CachedReader(m.reader)) for k, m in opened.items()}
        try:
            self.load(self.plan(json.loads(setup.probe)))
        except BaseException:
            self.close()
            raise

    @property
    def scorer(self) -> Scorer:
        return self.current.scorer

    def plan(self, recipe: dict):
        parsed = parse_recipe(recipe, self.setup.source)
        return build_plan(parsed, self.models, source=self.setup.source, seed=self.setup.seed)

    def _resident(self, plan, models) -> tuple[Resident, bool]:
        """The resident model for the plan's tensors (built on first use); whether it is new."""
        key = frozenset((job.output, job.shape) for job in plan.jobs)
        if key in self._residents:
            self._residents[key] = self._residents.pop(key)  # most recently used last
            return self._residents[key], False
        if len(self._residents) >= RESIDENTS:
            del self._residents[next(iter(self._residents))]
        with tempfile.TemporaryDirectory(prefix="mergesmith-search-") as tmp:
            model, tokenizer = _build_model(plan, models, Path(tmp))
        scorer = Scorer(loaded(self.setup.source, model, tokenizer), self.setup.objective)
        self._residents[key] = Resident(ResidentSink(model), scorer)
        return self._residents[key], True

    def load(self, plan, models=None, base_dir: Path | None = None) -> None:
        """Merge ``plan`` into the resident model of its shape (from this worker's inputs unless
        ``models`` given); it becomes ``current``."""
        models = self.models if models is None else models
        self.current, new = self._resident(plan, models)
        statistics = self._statistics(plan, models, base_dir or Path(self.setup.base_dir))
        execute(plan, {**models, **statistics}, self.current.sink, workers=1)
        if new:
            self.current.sink.check_complete()

    def _statistics(self, plan, models, base_dir: Path) -> dict:
        """The calibration stage's inputs (RegMean's Gram matrices): from the on-disk cache (computed
        there once when missing), opened once per worker and kept in memory for every candidate."""
        if not plan.calibration:
            return {}
        key = repr(plan.calibration)
        if key not in self._grams:
            from mergesmith.calibrate.stage import statistics_inputs

            root = Path(self.setup.calibration_cache).expanduser()
            opened = self._stack.enter_context(statistics_inputs(plan, models, base_dir, root))
            self._grams[key] = {k: replace(m, reader=CachedReader(m.reader)) for k, m in opened.items()}
        return self._grams[key]

    def evaluate(self, recipe: dict, skip: int = 0, limit: int | None = None) -> Outcome:
        """Merge ``recipe`` into the resident model and score windows ``[skip, limit)`` of every fitness
        text (``limit`` default: the fitness limit). The outcome's details hold the per-window sums
        (``windows``); its fitness is theirs alone. A recipe that fails to merge (a value a method
        rejects) scores inf with the message kept."""
        start = time.perf_counter()
        try:
            self.load(self.plan(recipe))
            fitness, details = self.scorer.score(skip, self.setup.objective.limit if limit is None else limit)
            raw = details[WINDOWS]
        except MergesmithError as exc:
            return Outcome(math.inf, {}, time.perf_counter() - start, self.worker, str(exc))
        values = [v for rows in raw.values() for row in rows for v in (row if isinstance(row, list) else [row])]
        if not all(math.isfinite(v) for v in values):
            return Outcome(math.inf, {}, time.perf_counter() - start, self.worker, "fitness is not finite")
        return Outcome(fitness, details, time.perf_counter() - start, self.worker)

    def report(self, name: str, recipe: dict | None, baseline: str | None) -> ReportRow:
        """The report row of a candidate ``recipe`` (selection and held-out) or of the ``baseline``
        recipe file (its models opened here; fitness too)."""
        fitness, details = math.nan, {}
        if baseline is not None:
            src = read_recipe(Path(baseline))
            models = open_models(model_keys(src.recipe), base_dir=src.base_dir, allow_pickle=self.setup.allow_pickle)
            try:
                self.load(build_plan(src.recipe, models, source=src.name, seed=self.setup.seed), models, src.base_dir)
            finally:
                close_models(models)
            fitness, details = self.scorer.score()
            recipe = yaml.safe_load(src.text)
        else:
            self.load(self.plan(recipe))
        resident, setup = self.current, self.setup
        if resident.splits is None:
            target = resident.scorer.target
            resident.splits = (setup.selection and Scorer(target, setup.selection), Scorer(target, setup.heldout))
        selection, heldout = resident.splits
        held, held_details = heldout.score()
        held_windows = held_details.pop(WINDOWS)
        details.update({**held_details, HELDOUT_WINDOWS: held_windows})
        if selection is not None:
            value, chosen = selection.score()
            details.update({SELECTION: value, SELECTION_WINDOWS: chosen[WINDOWS]})
        return ReportRow(name, "candidate" if baseline is None else "baseline", recipe, fitness, held, details)

    def close(self) -> None:
        self._stack.close()
        close_models(self.models)
