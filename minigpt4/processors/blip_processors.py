"""BLIP-2 image processors and the BLIP caption processor, as the original defines them."""

from __future__ import annotations

import re

from omegaconf import OmegaConf
from torchvision import transforms
from torchvision.transforms import InterpolationMode

from minigpt4.common.registry import registry
from minigpt4.processors.base_processor import BaseProcessor

# CLIP (OpenAI) normalisation constants, overridable through the ``mean`` / ``std`` keys.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _cfg(cfg):
    return OmegaConf.create() if cfg is None else cfg


class BlipImageBaseProcessor(BaseProcessor):
    def __init__(self, mean=None, std=None):
        super().__init__()
        self.normalize = transforms.Normalize(mean or CLIP_MEAN, std or CLIP_STD)


@registry.register_processor("blip_caption")
class BlipCaptionProcessor(BaseProcessor):
    """``prompt + pre_caption(caption)``: lowercase, ``[.!"()*#:;~]`` -> space, collapse spaces,
    keep at most ``max_words`` words."""

    def __init__(self, prompt: str = "", max_words: int = 50):
        super().__init__()
        self.prompt = prompt
        self.max_words = max_words

    def __call__(self, caption: str) -> str:
        return self.prompt + self.pre_caption(caption)

    @classmethod
    def from_config(cls, cfg=None):
        cfg = _cfg(cfg)
        return cls(prompt=cfg.get("prompt", ""), max_words=cfg.get("max_words", 50))

    def pre_caption(self, caption: str) -> str:
        if not isinstance(caption, str):
            raise TypeError(f"A caption must be a string; got {type(caption).__name__}: {caption!r}.")
        caption = re.sub(r"([.!\"()*#:;~])", " ", caption.lower())
        caption = re.sub(r"\s{2,}", " ", caption)
        caption = caption.rstrip("\n").strip(" ")
        words = caption.split(" ")
        if len(words) > self.max_words:
            caption = " ".join(words[: self.max_words])
        return caption


@registry.register_processor("blip2_image_train")
class Blip2ImageTrainProcessor(BlipImageBaseProcessor):
    """RandomResizedCrop(image_size, scale=(min_scale, max_scale), bicubic) -> ToTensor -> Normalize.
    No flip and no RandAugment, as the original."""

    def __init__(self, image_size=224, mean=None, std=None, min_scale=0.5, max_scale=1.0):
        super().__init__(mean=mean, std=std)
        self.transform = transforms.Compose(
            [
                transforms.RandomResizedCrop(
                    image_size, scale=(min_scale, max_scale), interpolation=InterpolationMode.BICUBIC
                ),
                transforms.ToTensor(),
                self.normalize,
            ]
        )

    @classmethod
    def from_config(cls, cfg=None):
        cfg = _cfg(cfg)
        return cls(
            image_size=cfg.get("image_size", 224),
            mean=cfg.get("mean", None),
            std=cfg.get("std", None),
            min_scale=cfg.get("min_scale", 0.5),
            max_scale=cfg.get("max_scale", 1.0),
        )


@registry.register_processor("blip2_image_eval")
class Blip2ImageEvalProcessor(BlipImageBaseProcessor):
    """Resize((image_size, image_size), bicubic; aspect ratio not kept) -> ToTensor -> Normalize."""

    def __init__(self, image_size=224, mean=None, std=None):
        super().__init__(mean=mean, std=std)
        self.transform = transforms.Compose(
            [
                transforms.Resize((image_size, image_size), interpolation=InterpolationMode.BICUBIC),
                transforms.ToTensor(),
                self.normalize,
            ]
        )

    @classmethod
    def from_config(cls, cfg=None):
        cfg = _cfg(cfg)
        return cls(image_size=cfg.get("image_size", 224), mean=cfg.get("mean", None), std=cfg.get("std", None))
