"""Train MiniGPT-4: ``python train.py --cfg-path train_configs/minigpt4_stage2_finetune.yaml``
(see ``minigpt4/cli/train.py`` and docs/TRAINING.md)."""

from minigpt4.cli.train import cli, main  # noqa: F401  (``main(argv)`` for callers that import train)

if __name__ == "__main__":
    cli()
