from minigpt4.common.errors import ConfigError
from minigpt4.common.registry import registry
from minigpt4.tasks.base_task import BaseTask
from minigpt4.tasks.humour_ranking import HumourRankingTask  # noqa: F401  (registers humour_ranking)
from minigpt4.tasks.image_text_pretrain import ImageTextPretrainTask


def setup_task(cfg, name: str | None = None):
    """The task named ``name`` (default: ``run.task`` of ``cfg``), set up from the config."""
    name = name or cfg.run_cfg.get("task")
    if name is None:
        raise ConfigError("run.task is not set (e.g. 'task: image_text_pretrain').")
    try:
        task_cls = registry.get_task_class(name)
    except KeyError as err:
        raise ConfigError(f"run.task: {err}") from None
    return task_cls.setup_task(cfg=cfg)


__all__ = ["BaseTask", "ImageTextPretrainTask", "setup_task"]
