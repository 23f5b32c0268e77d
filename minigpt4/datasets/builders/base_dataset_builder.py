"""Dataset builders: a builder reads its ``datasets.<name>`` config node, builds the train/eval
processors it names and returns ``{"train": dataset}``."""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from minigpt4.common.registry import registry

LIBRARY_ROOT = Path(__file__).resolve().parents[2]


class BaseDatasetBuilder:
    train_dataset_cls = None
    DATASET_CONFIG_DICT: dict[str, str] = {}

    def __init__(self, cfg=None):
        if cfg is None:
            cfg = self._load_default(self.default_config_path())
        elif isinstance(cfg, (str, Path)):
            cfg = self._load_default(cfg)
        self.config: DictConfig = cfg
        self.data_type = cfg.get("data_type", "images")
        identity = registry.get_processor_class("blip_caption").__mro__[1]()  # BaseProcessor
        self.vis_processors = {"train": identity, "eval": identity}
        self.text_processors = {"train": identity, "eval": identity}

    @staticmethod
    def _load_default(path) -> DictConfig:
        datasets = OmegaConf.load(path).datasets
        return datasets[next(iter(datasets))]

    @classmethod
    def default_config_path(cls, type: str = "default") -> str:
        if type not in cls.DATASET_CONFIG_DICT:
            raise KeyError(
                f"Unknown dataset config type {type!r} for {cls.__name__}; "
                f"known types: {', '.join(sorted(cls.DATASET_CONFIG_DICT))}."
            )
        return str(LIBRARY_ROOT / cls.DATASET_CONFIG_DICT[type])

    @staticmethod
    def _build_processor(node):
        if node is None:
            return None
        return registry.get_processor_class(node.name).from_config(node)

    def build_processors(self) -> None:
        for attr, key in (("vis_processors", "vis_processor"), ("text_processors", "text_processor")):
            node = self.config.get(key)
            if node is not None:
                getattr(self, attr)["train"] = self._build_processor(node.get("train"))
                getattr(self, attr)["eval"] = self._build_processor(node.get("eval"))

    def build_datasets(self):
        logging.getLogger(__name__).info("Building datasets...")
        return self.build()

    def build(self):
        raise NotImplementedError(f"{type(self).__name__} must implement build()")
