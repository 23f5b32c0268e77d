from minigpt4.common import optims  # noqa: F401  (registers the LR schedulers)
from minigpt4.runners.runner_base import RunnerBase

__all__ = ["RunnerBase"]
