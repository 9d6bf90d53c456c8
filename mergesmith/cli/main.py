"""``mergesmith`` — one CLI; each subcommand module adds its parser and handler.

Library errors become one line on stderr and exit code 2 (a JSON object under ``--log-format
json``). Heavy imports happen inside handlers, so ``--help`` answers at once.
"""

from __future__ import annotations

import argparse
import errno
import gc
import os
import sys
import warnings
from collections.abc import Sequence

from mergesmith.cli import (
    card_cmd,
    completion,
    eval_cmd,
    export_cmd,
    extract_cmd,
    inspect_cmd,
    merge_cmd,
    moe_cmd,
    plan_cmd,
    search_cmd,
)
from mergesmith.cli.events import Log

COMMANDS = (
    merge_cmd,
    plan_cmd,
    moe_cmd,
    eval_cmd,
    card_cmd,
    search_cmd,
    export_cmd,
    extract_cmd,
    inspect_cmd,
    completion,
)


def version() -> str:
    """The installed distribution's version; the package's own where it runs from a source tree."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("mergesmith")
    except PackageNotFoundError:
        from mergesmith import __version__

        return __version__


class _Version(argparse.Action):
    """``--version``, looked up only when asked for (importlib.metadata is not free at startup)."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest, nargs=0, default=default, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"mergesmith {version()}")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mergesmith", description="Merge LLM checkpoints from mergekit-style YAML recipes."
    )
    parser.add_argument("--version", action=_Version, help="print the version and exit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMANDS:
        module.add_parser(sub)
    parser.set_defaults(root_parser=parser)  # for `mergesmith completion`, which describes the whole CLI
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    code = _run(argv)
    if argv is None:
        # The program itself (console script, python -m), about to exit: objects alive now are
        # moved out of the collector's sight, so the interpreter's teardown does not sweep the
        # million of them torch and transformers create (0.3-0.5 s of every command's run here).
        # Files are closed and outputs published by now; nothing relies on finalizers at exit.
        gc.freeze()
    return code


def _run(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    log = args.log = Log(args.command, getattr(args, "log_format", "text"), getattr(args, "quiet", False))
    warnings.showwarning = lambda message, *_, **__: log.warning(str(message))
    from mergesmith.errors import MergesmithError

    try:
        with log.running():
            return args.handler(args) or 0
    except MergesmithError as exc:
        # One line, whatever a message quotes (a file's text, another tool's multi-line error).
        log.error(" ".join(str(exc).split()), 2)
        return 2
    except KeyboardInterrupt:
        # The library removes its staging on the way out (BaseException paths); a person who
        # pressed Ctrl-C wants to be told it stopped, not shown where.
        log.error("interrupted; incomplete output removed", 130)
        return 130
    except BrokenPipeError:  # an OSError: caught before the clause below
        # `mergesmith plan r.yml | head`: the reader left; that is not an error. Point stdout
        # at /dev/null so the interpreter's final flush does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as exc:
        # What the library did not turn into an input or output error (a disk failing under a
        # read, say): still one line, with the path and the system's reason.
        where = f"{exc.filename}: " if exc.filename else ""
        code = errno.errorcode.get(exc.errno, exc.errno) if exc.errno else type(exc).__name__
        log.error(f"{where}{exc.strerror or exc} ({code})", 2)
        return 2


if __name__ == "__main__":
    sys.exit(main())
