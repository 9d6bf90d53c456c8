"""A worker's resident state: inputs read once, one model object that every candidate is merged into.

A candidate is planned as any merge (`build_plan`) and run by the normal runner (`execute`),
but its writer copies each output tensor into the resident model's parameters instead of a
file: no checkpoint per candidate. Input tensors are read once per worker and kept (so LoRA
folding and disk reads happen once); the runner gets a clone of each, so a method may still
treat its inputs as its own.
"""

from __future__ import annotations

import importlib.util
import json
import math
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from mergesmith.config.load import parse_recipe
from mergesmith.errors import ArchitectureError, MergesmithError
from mergesmith.execute.runner import execute
from mergesmith.io.resolve import close_models, open_models
from mergesmith.output.config import output_config
from mergesmith.output.tokenizer import copy_tokenizer
from mergesmith.plan.planner import build_plan
from mergesmith.search.fitness import Objective, Scorer, loaded


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


class Evaluator:
    """Merges candidate recipes into one resident model and scores them."""

    def __init__(self, setup: Setup, worker: str):
        if importlib.util.find_spec("transformers") is None:
            raise MergesmithError("mergesmith search needs transformers; pip install 'mergesmith[hf]'")
        torch.set_num_threads(setup.threads)
        self.setup, self.worker = setup, worker
        opened = open_models(setup.keys, base_dir=Path(setup.base_dir), allow_pickle=setup.allow_pickle)
        self.models = {k: replace(m, reader=CachedReader(m.reader)) for k, m in opened.items()}
        try:
            plan = self.plan(json.loads(setup.probe))
            with tempfile.TemporaryDirectory(prefix="mergesmith-search-") as tmp:
                model, tokenizer = _build_model(plan, self.models, Path(tmp))
            self.sink = ResidentSink(model)
            execute(plan, self.models, self.sink, workers=1)
            self.sink.check_complete()
            self.scorer = Scorer(loaded(setup.source, model, tokenizer), setup.objective)
        except BaseException:
            self.close()
            raise

    def plan(self, recipe: dict):
        parsed = parse_recipe(recipe, self.setup.source)
        return build_plan(parsed, self.models, source=self.setup.source, seed=self.setup.seed)

    def load(self, plan, models=None) -> None:
        """Merge ``plan`` into the resident model (from this worker's inputs unless ``models`` given)."""
        if {job.output for job in plan.jobs} != self.sink.written:
            raise ArchitectureError(
                f"{self.setup.source}: a candidate produces other tensors than the first one; "
                "a search needs candidates of one shape"
            )
        execute(plan, self.models if models is None else models, self.sink, workers=1)

    def evaluate(self, recipe: dict) -> Outcome:
        """Merge ``recipe`` into the resident model and score it; a recipe that fails to merge
        (a value a method rejects) scores inf with the message kept."""
        start = time.perf_counter()
        try:
            self.load(self.plan(recipe))
            fitness, details = self.scorer.score()
        except MergesmithError as exc:
            return Outcome(math.inf, {}, time.perf_counter() - start, self.worker, str(exc))
        if not math.isfinite(fitness):
            return Outcome(math.inf, details, time.perf_counter() - start, self.worker, "fitness is not finite")
        return Outcome(fitness, details, time.perf_counter() - start, self.worker)

    def close(self) -> None:
        close_models(self.models)
