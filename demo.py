#!/usr/bin/env python
"""The MiniGPT-4 chat demo: ``python demo.py --cfg-path eval_configs/minigpt4_eval.yaml --gpu-id 0``
(see ``minigpt4/cli/demo.py`` and docs/USAGE.md)."""

from minigpt4.cli.demo import cli, main  # noqa: F401  (``main(argv)`` for callers that import demo)

if __name__ == "__main__":
    cli()
