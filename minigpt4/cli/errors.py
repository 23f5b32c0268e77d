"""One error style for every entry point.

A user error (any :class:`~minigpt4.common.errors.MiniGPT4Error`, or an exception type the entry
point names) prints one ``error: <message>`` line on stderr and exits with code 2; ``--debug`` shows
the traceback instead. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable, Sequence

from minigpt4.common.errors import MiniGPT4Error

EXIT_USER_ERROR = 2


def add_debug_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")


def run_cli(main: Callable, argv: Sequence[str] | None = None, user_errors: tuple[type, ...] = ()):
    """Call ``main(argv)``; a user error becomes one ``error:`` line and exit code 2."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return main(argv)
    except (MiniGPT4Error, *user_errors) as err:
        if "--debug" in argv:
            raise
        message = str(err).strip() or type(err).__name__
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(EXIT_USER_ERROR) from None
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        raise SystemExit(130) from None
