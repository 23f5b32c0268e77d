#!/usr/bin/env python
"""Evaluate captions against the HIC references: ``python evaluate.py --captions FILE --references test.json
--out report/`` (see ``minigpt4/cli/evaluate.py`` and docs/USAGE.md)."""

from minigpt4.cli.evaluate import cli, main  # noqa: F401  (``main(argv)`` for callers that import evaluate)

if __name__ == "__main__":
    cli()
