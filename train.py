"""Train MiniGPT-4 (stage 1 pretraining or the stage-2 humour finetune).

    python train.py --cfg-path train_configs/minigpt4_stage2_finetune.yaml
    torchrun --nproc-per-node N train.py --cfg-path train_configs/minigpt4_stage2_finetune.yaml
    python train.py --cfg-path train_configs/minigpt4_tiny_finetune.yaml   # CPU quickstart

Output goes to ``<run.output_dir>/<job_id>/`` under the working directory.
"""

from __future__ import annotations

import argparse
import logging

import torch.distributed as dist

import minigpt4  # noqa: F401  (registers builders, models, processors, tasks)
import minigpt4.runners  # noqa: F401  (registers the runner and the LR schedulers)
from minigpt4.common import dist_utils
from minigpt4.common.config import Config
from minigpt4.common.logger import setup_logger
from minigpt4.common.registry import registry
from minigpt4.runners.runner_base import check_run_config, create_job_dir, resolve_device, setup_seeds
from minigpt4.tasks import setup_task


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Training")
    parser.add_argument("--cfg-path", required=True, help="path to configuration file.")
    parser.add_argument(
        "--options",
        nargs="+",
        help="override some settings in the used config, the key-value pair in xxx=yyy format will be merged "
        "into config file (e.g. --options run.init_lr=1e-4 run.max_epoch=2).",
    )
    return parser.parse_args(argv)


def main(argv=None) -> str:
    """Run one training job; returns its output folder."""
    args = parse_args(argv)
    cfg = Config(args)
    check_run_config(cfg)
    dist_utils.init_distributed_mode(cfg.run_cfg)
    setup_seeds(cfg.run_cfg)
    setup_logger()
    cfg.pretty_print()
    job_id, output_dir = create_job_dir(cfg.run_cfg.output_dir)

    task = setup_task(cfg)
    datasets = task.build_datasets(cfg)
    model = task.build_model(cfg, device=resolve_device(cfg.run_cfg))
    runner_cls = registry.get_runner_class(cfg.run_cfg.get("runner", "runner_base"))
    runner = runner_cls(cfg=cfg, job_id=job_id, task=task, model=model, datasets=datasets, output_dir=output_dir)
    try:
        runner.train()
    finally:
        if dist_utils.is_dist_avail_and_initialized():
            dist.destroy_process_group()
    logging.getLogger(__name__).info("Output in %s", output_dir)
    return str(output_dir)


if __name__ == "__main__":
    main()
