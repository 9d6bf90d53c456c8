"""``mergesmith`` — one CLI; each subcommand module adds its parser and handler.

Library errors become one line on stderr and exit code 2. Heavy imports happen inside handlers,
so ``--help`` answers at once.
"""

from __future__ import annotations

import argparse
import errno
import os
import sys
import warnings
from collections.abc import Sequence

from mergesmith.cli import (
    card_cmd,
    eval_cmd,
    export_cmd,
    merge_cmd,
    plan_cmd,
    search_cmd,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mergesmith", description="Merge LLM checkpoints from mergekit-style YAML recipes.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (merge_cmd, plan_cmd, eval_cmd, card_cmd, search_cmd, export_cmd):
        module.add_parser(sub)
    return parser


def _show_warning(message, category, filename, lineno, file=None, line=None):
    print(f"warning: {message}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    warnings.showwarning = _show_warning
    from mergesmith.errors import MergesmithError

    try:
        return args.handler(args) or 0
    except MergesmithError as exc:
        # One line, whatever a message quotes (a file's text, another tool's multi-line error).
        print("error: " + " ".join(str(exc).split()), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        # The library removes its staging on the way out (BaseException paths); a person who
        # pressed Ctrl-C wants to be told it stopped, not shown where.
        print("error: interrupted; incomplete output removed", file=sys.stderr)
        return 130
    except OSError as exc:
        # What the library did not turn into an input or output error (a disk failing under a
        # read, say): still one line, with the path and the system's reason.
        where = f"{exc.filename}: " if exc.filename else ""
        code = errno.errorcode.get(exc.errno, exc.errno) if exc.errno else type(exc).__name__
        print(f"error: {where}{exc.strerror or exc} ({code})", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # `mergesmith plan r.yml | head`: the reader left; that is not an error. Point stdout
        # at /dev/null so the interpreter's final flush does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
