"""Processors turn raw inputs (PIL images, caption strings) into model inputs."""

from __future__ import annotations

from omegaconf import OmegaConf


class BaseProcessor:
    """The identity processor; subclasses implement ``__call__`` and ``from_config``."""

    def __init__(self):
        self.transform = lambda x: x

    def __call__(self, item):
        return self.transform(item)

    @classmethod
    def from_config(cls, cfg=None):
        return cls()

    def build(self, **kwargs):
        return self.from_config(OmegaConf.create(kwargs))
