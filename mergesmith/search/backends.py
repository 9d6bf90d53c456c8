"""Where candidates are scored: in this process, in local worker processes, or on Ray actors.

Every worker builds one :class:`Evaluator` (inputs read once, one resident model) and then
scores the candidates it is handed. Workers pull candidates as they free up, so results come
back in any order; each is keyed by its candidate index, and the fitness of a candidate does
not depend on the worker (same code, same torch thread count, merges seeded per tensor).
"""

from __future__ import annotations

import multiprocessing
import queue as queue_module
import traceback
from collections import deque
from collections.abc import Iterator, Sequence
from typing import Protocol

import torch

from mergesmith.errors import MergesmithError
from mergesmith.search.resident import Evaluator, Outcome, Setup

Task = tuple[int, str, tuple]  # (key, Evaluator method: "evaluate" or "report", its arguments)
POLL_SECONDS = 1.0


class Backend(Protocol):
    def run(self, tasks: Sequence[Task]) -> Iterator[tuple[int, Outcome]]:
        """Score ``tasks``; yields ``(index, outcome)`` as each finishes."""

    def close(self) -> None: ...


class Inline:
    """One worker: this process (``--workers 1``)."""

    def __init__(self, setup: Setup):
        self._threads = torch.get_num_threads()
        try:
            self._evaluator = Evaluator(setup, "main")
        except BaseException:
            torch.set_num_threads(self._threads)
            raise

    def run(self, tasks: Sequence[Task]) -> Iterator[tuple[int, Outcome]]:
        for key, method, args in tasks:
            yield key, getattr(self._evaluator, method)(*args)

    def close(self) -> None:
        self._evaluator.close()
        torch.set_num_threads(self._threads)


def _failure(exc: BaseException):
    """What a worker sends back for an error: typed errors as they are, bugs as their traceback."""
    return exc if isinstance(exc, MergesmithError) else "".join(traceback.format_exception(exc))


def _raise(failure, worker: str):
    if isinstance(failure, MergesmithError):
        raise failure
    raise RuntimeError(f"search worker {worker} failed:\n{failure}")


def _serve(name: str, inbox, outbox) -> None:
    """A local worker process: take a setup, build the evaluator, score candidates until told to stop."""
    try:
        evaluator = Evaluator(inbox.get(), name)
    except BaseException as exc:
        outbox.put(("failed", name, _failure(exc)))
        return
    outbox.put(("ready", name, None))
    try:
        while (task := inbox.get()) is not None:
            try:
                key, method, args = task
                outbox.put(("done", key, getattr(evaluator, method)(*args)))
            except BaseException as exc:
                outbox.put(("failed", name, _failure(exc)))
                return
    finally:
        evaluator.close()


class LocalProcesses:
    """``workers`` local processes (spawned: a fresh interpreter, no inherited torch threads).

    As with any spawned process, a script that runs a search with workers must do so under
    ``if __name__ == "__main__":``, since each worker imports the script's main module.
    """

    def __init__(self, setup: Setup, workers: int):
        context = multiprocessing.get_context("spawn")
        self._inbox, self._outbox = context.Queue(), context.Queue()
        self._procs = {
            f"local-{i}": context.Process(target=_serve, args=(f"local-{i}", self._inbox, self._outbox), daemon=True)
            for i in range(workers)
        }
        for proc in self._procs.values():
            proc.start()
            # Through the queue, not the process arguments: a put never blocks on a worker that
            # died while starting, and the texts inside the setup can be larger than a pipe.
            self._inbox.put(setup)
        try:
            for _ in self._procs:
                self._next("ready")
        except BaseException:
            self.close()
            raise

    def _next(self, want: str):
        while True:
            try:
                kind, key, payload = self._outbox.get(timeout=POLL_SECONDS)
            except queue_module.Empty:
                dead = [(n, p.exitcode) for n, p in self._procs.items() if not p.is_alive()]
                if dead:
                    raise MergesmithError(
                        f"search worker {dead[0][0]} stopped (exit code {dead[0][1]}; out of memory?); "
                        "rerun with --resume, perhaps with fewer --workers"
                    ) from None
                continue
            if kind == "failed":
                _raise(payload, key)
            if kind == want:
                return key, payload

    def run(self, tasks: Sequence[Task]) -> Iterator[tuple[int, Outcome]]:
        for task in tasks:
            self._inbox.put(task)
        for _ in tasks:
            yield self._next("done")

    def close(self) -> None:
        try:  # candidates not started yet (the search stopped early) are dropped, not scored
            while True:
                self._inbox.get_nowait()
        except queue_module.Empty:
            pass
        for proc in self._procs.values():
            if proc.is_alive():
                self._inbox.put(None)
        for proc in self._procs.values():
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()
                proc.join()
        self._inbox.close()
        self._outbox.close()


class _Actor:
    """A Ray actor around one evaluator; an error while building it is kept for ``ready``."""

    def __init__(self, setup: Setup, name: str):
        self._evaluator, self._error = None, None
        try:
            self._evaluator = Evaluator(setup, name)
        except BaseException as exc:
            self._error = _failure(exc)

    def ready(self):
        return self._error

    def call(self, method: str, args: tuple):
        return getattr(self._evaluator, method)(*args)


class RayActors:
    """``workers`` Ray actors on the cluster at ``address``, or on a local Ray instance when it is None."""

    def __init__(self, setup: Setup, workers: int, address: str | None):
        try:
            import ray
        except ImportError as exc:
            raise MergesmithError(f"--ray needs the ray package ({exc}); pip install 'mergesmith[search]'") from None
        self._ray, self._started = ray, not ray.is_initialized()
        if self._started:
            local = {"num_cpus": workers} if address is None else {}
            ray.init(address=address, include_dashboard=False, log_to_driver=False, **local)
        actor = ray.remote(num_cpus=1)(_Actor)
        self._actors = [actor.remote(setup, f"ray-{i}") for i in range(workers)]
        try:
            for i, error in enumerate(ray.get([a.ready.remote() for a in self._actors])):
                if error is not None:
                    _raise(error, f"ray-{i}")
        except BaseException:
            self.close()
            raise

    def run(self, tasks: Sequence[Task]) -> Iterator[tuple[int, Outcome]]:
        ray, pending, idle, busy = self._ray, deque(tasks), list(self._actors), {}
        while pending or busy:
            while idle and pending:
                actor, (key, method, args) = idle.pop(0), pending.popleft()
                busy[actor.call.remote(method, args)] = (key, actor)
            done, _ = ray.wait(list(busy), num_returns=1)
            for ref in done:
                index, actor = busy.pop(ref)
                idle.append(actor)
                yield index, ray.get(ref)

    def close(self) -> None:
        for actor in self._actors:
            self._ray.kill(actor)
        if self._started:
            self._ray.shutdown()


def make_backend(setup: Setup, workers: int, ray_address: str | None, use_ray: bool) -> Backend:
    if use_ray:
        return RayActors(setup, workers, ray_address)
    return Inline(setup) if workers == 1 else LocalProcesses(setup, workers)
