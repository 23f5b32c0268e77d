from minigpt4.common.registry import registry
from minigpt4.tasks.base_task import BaseTask


@registry.register_task("image_text_pretrain")
class ImageTextPretrainTask(BaseTask):
    """Caption language modelling: the loss of the caption tokens (stage 1 and stage 2)."""
