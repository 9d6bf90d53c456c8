"""Where a command's progress goes: lines for a person (``--log-format text``, the default) or one
JSON object per line on stderr and a final result object on stdout (``--log-format json``).

    {"event": "start", "command": "merge", "t": 0.0}                         stderr
    {"event": "status", "message": "reading metadata", "t": 0.4}            stderr
    {"event": "progress", "task": "merging", "done": 7, "total": 21, "unit": "tensor", "t": 1.2}
    {"event": "warning" | "error" | "log", "message": "...", "t": ...}      stderr
    {"event": "result", "command": "merge", ..., "t": 3.1}                  stdout, last

The library draws its progress bars with tqdm; in JSON mode the command swaps tqdm's class for
``_EventBar`` (same calls, no drawing) while it runs, so every bar becomes progress events, and
any other text written to stderr becomes a ``log`` event: every stderr line parses as JSON.
This is process-wide state, so it belongs to the program (here), never to the library.
``--quiet`` leaves out the progress of both formats: bars and statuses, or their events.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import sys
import threading
import time
from collections.abc import Iterator

FORMATS = ("text", "json")
_CLEAR_LINE = "\r\x1b[2K"  # carriage return, erase the line
PERIOD_S = 0.5  # at most one progress event per bar per half second (the first and the last always)
PROGRESS_EVENTS = ("progress", "status", "stage", "candidate")  # what --quiet leaves out


def add_log_format(p) -> None:
    p.add_argument(
        "--log-format",
        choices=FORMATS,
        default="text",
        help="text: progress bars and tables for a person (default); json: one JSON object per line "
        "on stderr for progress, and a final result object on stdout",
    )


class Log:
    """A command's reporter; ``json`` selects JSON lines, ``quiet`` silences text progress."""

    def __init__(self, command: str, fmt: str = "text", quiet: bool = False):
        self.command, self.json, self.quiet = command, fmt == "json", quiet
        self._start = time.monotonic()
        self._raw = None  # the real stderr while JSON mode wraps sys.stderr
        self._status_shown = False

    @property
    def progress(self) -> bool:
        """Whether the library should draw (text) or report (json) its bars."""
        return not self.quiet

    def emit(self, event: str, **fields) -> None:
        """One JSON line on stderr (JSON mode only; with --quiet, no progress of any kind)."""
        if self.json and not (self.quiet and event in PROGRESS_EVENTS):
            stream = self._raw or sys.stderr
            stream.write(json.dumps({"event": event, **fields, "t": self._elapsed()}, default=str) + "\n")
            stream.flush()

    def _elapsed(self) -> float:
        return round(time.monotonic() - self._start, 3)

    def status(self, message: str) -> None:
        """What the command is doing now, where no bar says it ("reading metadata").

        Text: one line on a terminal that the next status, bar or message overwrites; nothing
        when stderr is not a terminal (a log keeps only what happened; JSON mode has the steps).
        """
        if self.json:
            self.emit("status", message=message)
        elif not self.quiet and sys.stderr.isatty():
            sys.stderr.write(f"{_CLEAR_LINE}{message}...")
            sys.stderr.flush()
            self._status_shown = True

    def _clear_status(self) -> None:
        if self._status_shown:
            sys.stderr.write(_CLEAR_LINE)
            self._status_shown = False

    def line(self, text: str, stream=None) -> None:
        """A line for a person (text mode; stderr by default), on its own line after any status."""
        if not self.json:
            self._clear_status()
            print(text, file=stream or sys.stderr, flush=True)

    def warning(self, message: str) -> None:
        if self.json:
            self.emit("warning", message=message)
            return
        self._clear_status()
        if "tqdm" in sys.modules:  # a bar may be drawn: tqdm moves it below the line
            sys.modules["tqdm"].tqdm.write(f"warning: {message}", file=sys.stderr)
        else:
            print(f"warning: {message}", file=sys.stderr)

    def error(self, message: str, code: int) -> None:
        if self.json:
            self.emit("error", message=message, exit_code=code)
        else:
            self._clear_status()
            print(f"error: {message}", file=sys.stderr)

    def result(self, text: str | None, **fields) -> None:
        """The command's answer: ``text`` for a person, ``fields`` as the JSON result object."""
        if self.json:
            line = {"event": "result", "command": self.command, **fields, "t": self._elapsed()}
            print(json.dumps(line, default=str), flush=True)
        else:
            self._clear_status()
            if text is not None:
                print(text, flush=True)

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        """JSON mode: bars become events and stray stderr text becomes ``log`` events meanwhile."""
        if not self.json:
            yield
            return
        self.emit("start", command=self.command)
        with _events_for_bars(self), _stderr_as_events(self):
            yield


class _EventBar:
    """The part of tqdm's interface that progress code calls, reporting instead of drawing."""

    log: Log | None = None

    def __init__(self, iterable=None, desc=None, total=None, unit="it", disable=False, **_ignored):
        self.iterable, self.desc, self.unit, self.disable, self.n = iterable, desc or "", unit, disable, 0
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.total, self._sent_at, self._sent_n = total, -math.inf, None
        self._lock = threading.Lock()  # merge workers update one bar from several threads
        self._send(force=True)

    def _send(self, force: bool = False) -> None:
        now = time.monotonic()
        last = self.total is not None and self.n >= self.total
        if (
            self.disable
            or self.log is None
            or self._sent_n == self.n
            or not (force or last or now - self._sent_at >= PERIOD_S)
        ):
            return
        self._sent_at, self._sent_n = now, self.n
        self.log.emit("progress", task=self.desc, done=self.n, total=self.total, unit=self.unit)

    def update(self, n=1) -> None:
        with self._lock:
            self.n += n
            self._send()

    def __iter__(self):
        for item in self.iterable:
            yield item
            self.update()

    def __len__(self) -> int:
        return self.total or 0

    def close(self) -> None:
        self._send(force=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def set_description(self, desc=None, refresh=True) -> None:
        """A new step of the same bar ("writing" after "preparing"): said at once."""
        self.desc, self._sent_n = desc or "", None
        self._send(force=True)

    set_description_str = set_description

    def reset(self, total=None) -> None:
        self.n, self.total, self._sent_n = 0, total, None

    def set_postfix(self, *args, **kwargs) -> None: ...
    def set_postfix_str(self, *args, **kwargs) -> None: ...
    def refresh(self, *args, **kwargs) -> None: ...
    def clear(self, *args, **kwargs) -> None: ...
    def unpause(self) -> None: ...

    @classmethod
    def write(cls, text, file=None, end="\n", nolock=False) -> None:
        if cls.log is not None:
            cls.log.emit("log", message=str(text))

    @classmethod
    def set_lock(cls, lock) -> None: ...

    @classmethod
    def get_lock(cls):
        return threading.RLock()


@contextlib.contextmanager
def _events_for_bars(log: Log) -> Iterator[None]:
    """``tqdm.tqdm`` and ``tqdm.auto.tqdm`` (what transformers draws with) report to ``log``."""
    import tqdm
    import tqdm.auto

    bar = type("EventBar", (_EventBar,), {"log": log})
    saved = tqdm.tqdm, tqdm.auto.tqdm
    tqdm.tqdm = tqdm.auto.tqdm = bar
    try:
        yield
    finally:
        tqdm.tqdm, tqdm.auto.tqdm = saved


class _LinesAsEvents(io.TextIOBase):
    """A stderr that turns each line (or carriage-return segment) of text into a ``log`` event."""

    def __init__(self, log: Log, raw):
        self.log, self.raw, self._pending = log, raw, ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self._pending += text
        *lines, self._pending = self._pending.replace("\r", "\n").split("\n")
        for line in lines:
            if line.strip():
                self.log.emit("log", message=line.rstrip())
        return len(text)

    def flush(self) -> None:
        self.raw.flush()

    def fileno(self) -> int:
        return self.raw.fileno()

    def isatty(self) -> bool:
        return False


@contextlib.contextmanager
def _stderr_as_events(log: Log) -> Iterator[None]:
    saved = sys.stderr
    log._raw, sys.stderr = saved, _LinesAsEvents(log, saved)
    try:
        yield
    finally:
        sys.stderr.write("\n")  # a last line without its newline
        sys.stderr, log._raw = saved, None
