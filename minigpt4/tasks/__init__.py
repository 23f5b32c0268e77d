from minigpt4.common.registry import registry
from minigpt4.tasks.base_task import BaseTask
from minigpt4.tasks.image_text_pretrain import ImageTextPretrainTask


def setup_task(cfg):
    """The task named by ``run.task``, set up from the config."""
    task_name = cfg.run_cfg.get("task")
    if task_name is None:
        raise ValueError("run.task is not set (e.g. 'task: image_text_pretrain').")
    return registry.get_task_class(task_name).setup_task(cfg=cfg)


__all__ = ["BaseTask", "ImageTextPretrainTask", "setup_task"]
