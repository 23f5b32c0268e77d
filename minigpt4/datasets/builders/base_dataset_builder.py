"""Dataset builders: a builder reads its ``datasets.<name>`` config node, builds the train/eval
processors it names and returns ``{"train": dataset}``.

The keys of a ``datasets.<name>`` section are the fields of :class:`DatasetConfig` (REFERENCE 2.6):
an unknown key (a misspelled ``vis_processor``) is a :class:`ConfigError` naming the key, the file
that set it and the closest valid key, raised when the builder is made -- not later in a worker.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from omegaconf import DictConfig, OmegaConf

from minigpt4.common.errors import ConfigError
from minigpt4.common.paths import PACKAGE_ROOT, resolve_project_path
from minigpt4.common.registry import registry
from minigpt4.common.schema import Origin, build_section
from minigpt4.constants import PLACEHOLDER_PREFIX
from minigpt4.processors.base_processor import BaseProcessor


@dataclass
class ProcessorsConfig:
    """``vis_processor`` / ``text_processor``: per split, ``{name: <registered processor>, <its options>}``."""

    train: Optional[dict] = None
    eval: Optional[dict] = None


@dataclass
class BuildInfo:
    storage: str = ""  # a folder (cc_sbu_align, oxford_hic) or a brace-expanded shard pattern (cc_sbu, laion)


@dataclass
class DatasetConfig:
    """The keys of a ``datasets.<name>`` section."""

    type: str = "default"  # which default YAML of the builder is merged under the section
    data_type: str = "images"
    build_info: BuildInfo = field(default_factory=BuildInfo)
    vis_processor: ProcessorsConfig = field(default_factory=ProcessorsConfig)
    text_processor: ProcessorsConfig = field(default_factory=ProcessorsConfig)
    sample_ratio: Optional[float] = None  # relative weight of this dataset's batches when several are mixed


class BaseDatasetBuilder:
    name = "dataset"  # the registered name, for error messages
    train_dataset_cls = None
    config_class = DatasetConfig
    DATASET_CONFIG_DICT: dict[str, str] = {}

    def __init__(self, cfg=None, origin: Origin | None = None):
        if cfg is None:
            cfg = self._load_default(self.default_config_path())
        elif isinstance(cfg, (str, Path)):
            cfg = self._load_default(cfg)
        self.config: DictConfig = cfg
        self.settings = self.check_config(cfg, origin)
        self.data_type = self.settings.data_type
        identity = BaseProcessor()
        self.vis_processors = {"train": identity, "eval": identity}
        self.text_processors = {"train": identity, "eval": identity}

    @classmethod
    def check_config(cls, node, origin: Origin | None = None) -> DatasetConfig:
        """The typed ``datasets.<name>`` section; unknown keys and bad values raise, naming the file."""
        origin = origin or (lambda key: "the config")
        prefix = f"datasets.{cls.name}"
        settings = build_section(cls.config_class, node, prefix, origin)
        ratio = settings.sample_ratio
        if ratio is not None and not (math.isfinite(ratio) and ratio > 0):
            key = f"{prefix}.sample_ratio"
            raise ConfigError(f"{key} (set in {origin(key)}) must be a positive number; got {ratio!r}.")
        return settings

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
        key = f"datasets.{self.name}.build_info.storage"
        if not self.settings.build_info.storage:
            raise ConfigError(f"{key} is not set.")
        storage = os.path.expanduser(self.settings.build_info.storage)
        if storage.startswith(PLACEHOLDER_PREFIX):
            raise ConfigError(f"{key} is still the placeholder {storage!r}: set it in your YAML or pass "
                              f"--options {key}=/your/folder (see docs/TRAINING.md).")
        if "{" in storage:  # a brace-expanded shard pattern
            return storage
        return str(resolve_project_path(storage))  # relative: working directory, then project root

    def build_datasets(self) -> dict:
        """``{split: dataset}``, with at least ``"train"``."""
        raise NotImplementedError(f"{type(self).__name__} must implement build_datasets()")
