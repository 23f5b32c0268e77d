"""Dataset builders: a builder reads its ``datasets.<name>`` config node, builds the train/eval
processors it names and returns ``{"train": dataset}``."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from minigpt4.common.errors import ConfigError
from minigpt4.common.paths import PACKAGE_ROOT, resolve_project_path
from minigpt4.common.registry import registry
from minigpt4.processors.base_processor import BaseProcessor


class BaseDatasetBuilder:
    name = "dataset"  # the registered name, for error messages
    train_dataset_cls = None
    DATASET_CONFIG_DICT: dict[str, str] = {}

    def __init__(self, cfg=None):
        if cfg is None:
            cfg = self._load_default(self.default_config_path())
        elif isinstance(cfg, (str, Path)):
            cfg = self._load_default(cfg)
        self.config: DictConfig = cfg
        self.data_type = cfg.get("data_type", "images")
        identity = BaseProcessor()
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
        return str(PACKAGE_ROOT / cls.DATASET_CONFIG_DICT[type])

    def _build_processor(self, node, where: str):
        if node is None:
            return None

        if node.get("name") is None:
            raise ConfigError(f"datasets.{self.name}.{where} has no 'name' (e.g. blip2_image_train, blip_caption).")
        try:
            cls = registry.get_processor_class(node.name)
        except KeyError as err:
            raise ConfigError(f"datasets.{self.name}.{where}.name: {err}") from None
        return cls.from_config(node)

    def build_processors(self) -> None:
        for attr, key in (("vis_processors", "vis_processor"), ("text_processors", "text_processor")):
            node = self.config.get(key)
            if node is not None:
                getattr(self, attr)["train"] = self._build_processor(node.get("train"), f"{key}.train")
                getattr(self, attr)["eval"] = self._build_processor(node.get("eval"), f"{key}.eval")

    def storage(self) -> str:
        """``build_info.storage``; a clear error while it is missing or still a placeholder."""

        storage = self.config.get("build_info", {}).get("storage")
        key = f"datasets.{self.name}.build_info.storage"
        if not storage:
            raise ConfigError(f"{key} is not set.")
        storage = os.path.expanduser(str(storage))
        if not storage.startswith("/path/to/") and "{" not in storage:

            storage = str(resolve_project_path(storage))  # relative: working directory, then project root
        if storage.startswith("/path/to/"):
            raise ConfigError(f"{key} is still the placeholder {storage!r}: set it in your YAML or pass "
                              f"--options {key}=/your/folder (see docs/TRAINING.md).")
        return storage

    def build_datasets(self):
        logging.getLogger(__name__).info("Building datasets...")
        return self.build()

    def build(self):
        raise NotImplementedError(f"{type(self).__name__} must implement build()")
