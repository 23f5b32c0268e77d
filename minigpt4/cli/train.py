"""Train MiniGPT-4 (stage 1 pretraining or the stage-2 humour finetune): ``train.py``.

    python train.py --cfg-path train_configs/minigpt4_stage2_finetune.yaml
    torchrun --nproc-per-node N train.py --cfg-path train_configs/minigpt4_stage2_finetune.yaml
    python train.py --cfg-path train_configs/minigpt4_tiny_finetune.yaml   # CPU quickstart

Output goes to ``<run.output_dir>/<job_id>/`` under the working directory; the folder is made only
once training starts, so a run that fails to start leaves none behind.
"""

from __future__ import annotations

import argparse
import logging
import sys

import minigpt4  # noqa: F401  (registers builders, models, processors, tasks)
from minigpt4.cli.errors import add_debug_flag, run_cli
from minigpt4.common import dist_utils
from minigpt4.common.config import Config
from minigpt4.runners import RunnerBase


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="train.py", description="Training")
    parser.add_argument("--cfg-path", required=True, help="path to configuration file.")
    parser.add_argument(
        "--options",
        nargs="+",
        help="override some settings in the used config, the key-value pair in xxx=yyy format will be merged "
        "into config file (e.g. --options run.init_lr=1e-4 run.max_epoch=2).",
    )
    add_debug_flag(parser)
    return parser.parse_args(argv)


def main(argv=None) -> str | None:
    """Run one training job; returns its output folder (None when ``run.evaluate`` trains nothing)."""
    cfg = Config(parse_args(argv))
    try:
        output_dir = RunnerBase.from_config(cfg).train()
    finally:
        dist_utils.destroy_process_group()
    if output_dir is None:
        return None
    logging.getLogger(__name__).info("Output in %s", output_dir)
    return str(output_dir)


def cli(argv=None) -> None:
    """The console entry point: user errors are one ``error:`` line and exit code 2."""
    run_cli(main, sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    cli()
