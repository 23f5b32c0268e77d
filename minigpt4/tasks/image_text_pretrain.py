from minigpt4.common.registry import registry
from minigpt4.tasks.base_task import BaseTask


@registry.register_task("image_text_pretrain")
class ImageTextPretrainTask(BaseTask):
    """Caption language modelling; evaluation does nothing (as the original)."""

    def evaluation(self, model, data_loader, cuda_enabled=True):
        return None
