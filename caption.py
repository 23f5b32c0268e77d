#!/usr/bin/env python
"""Caption a folder of images to JSON Lines: ``python caption.py --cfg-path ... --images DIR --out FILE``
(see ``minigpt4/cli/caption.py`` and docs/USAGE.md)."""

from minigpt4.cli.caption import cli, main  # noqa: F401  (``main(argv)`` for callers that import caption)

if __name__ == "__main__":
    cli()
