from minigpt4.common.registry import registry
from minigpt4.processors.base_processor import BaseProcessor
from minigpt4.processors.blip_processors import (
    Blip2ImageEvalProcessor,
    Blip2ImageTrainProcessor,
    BlipCaptionProcessor,
)

__all__ = ["BaseProcessor", "Blip2ImageEvalProcessor", "Blip2ImageTrainProcessor", "BlipCaptionProcessor", "load_processor"]


def load_processor(name, cfg=None):
    """Build a registered processor by name from an optional config node."""
    return registry.get_processor_class(name).from_config(cfg)
