"""Builders for image-caption data (REFERENCE 5): ``cc_sbu`` and ``laion`` (stage 1, webdataset
shards), ``cc_sbu_align`` (stage 2) and ``oxford_hic`` (the HIC training data by its name: the same layout, plus
evaluation splits).

Storage problems (placeholder or missing path, missing shards, empty or malformed annotations,
missing image files) raise here, at build time, naming the key or file -- not later in a worker."""

from __future__ import annotations

import logging
import os

from minigpt4.common.errors import DatasetError
from minigpt4.common.registry import registry
from minigpt4.datasets import hic_format
from minigpt4.datasets.builders.base_dataset_builder import BaseDatasetBuilder
from minigpt4.datasets.datasets.cc_sbu_dataset import CCSBUAlignDataset, CCSBUDataset
from minigpt4.datasets.datasets.hic_eval_dataset import HICEvalDataset
from minigpt4.datasets.datasets.laion_dataset import LaionDataset
from minigpt4.processors.blip_processors import Blip2ImageEvalProcessor

logger = logging.getLogger(__name__)


class _ShardBuilder(BaseDatasetBuilder):
    """A webdataset pipeline over ``build_info.storage`` (brace-expanded shard pattern)."""

    def build_datasets(self):
        from braceexpand import braceexpand  # optional extra [data], as webdataset

        logger.info("Building datasets...")
        self.build_processors()
        pattern = self.storage()
        local = [p for p in braceexpand(pattern) if "://" not in p and not p.startswith("pipe:")]
        missing = [p for p in local if not os.path.isfile(p)]
        if missing:
            raise DatasetError(
                f"datasets.{self.name}.build_info.storage {pattern!r}: {len(missing)} of {len(local)} shard(s) "
                f"missing, e.g. {missing[0]!r}."
            )
        dataset = self.train_dataset_cls(
            vis_processor=self.vis_processors["train"],
            text_processor=self.text_processors["train"],
            location=pattern,
        ).inner_dataset
        return {"train": dataset}


@registry.register_builder("cc_sbu")
class CCSBUBuilder(_ShardBuilder):
    name = "cc_sbu"
    train_dataset_cls = CCSBUDataset
    DATASET_CONFIG_DICT = {"default": "configs/datasets/cc_sbu/defaults.yaml"}


@registry.register_builder("laion")
class LaionBuilder(_ShardBuilder):
    name = "laion"
    train_dataset_cls = LaionDataset
    DATASET_CONFIG_DICT = {"default": "configs/datasets/laion/defaults.yaml"}


@registry.register_builder("cc_sbu_align")
class CCSBUAlignBuilder(BaseDatasetBuilder):
    """``<storage>/filter_cap.json`` + ``<storage>/image/<image_id>.jpg``."""

    name = "cc_sbu_align"
    train_dataset_cls = CCSBUAlignDataset
    DATASET_CONFIG_DICT = {"default": "configs/datasets/cc_sbu/align.yaml"}

    def folder(self) -> str:
        storage = self.storage()
        if not os.path.isdir(storage):
            raise DatasetError(
                f"datasets.{self.name}.build_info.storage {storage!r} does not exist: point it at a folder with "
                "filter_cap.json and image/ (see docs/TRAINING.md)."
            )
        return storage

    def build_datasets(self):
        logger.info("Building datasets...")
        self.build_processors()
        storage = self.folder()
        dataset = self.train_dataset_cls(
            vis_processor=self.vis_processors["train"],
            text_processor=self.text_processors["train"],
            ann_paths=[os.path.join(storage, "filter_cap.json")],
            vis_root=os.path.join(storage, "image"),
        )
        return {"train": dataset}


@registry.register_builder("oxford_hic")
class OxfordHICBuilder(CCSBUAlignBuilder):
    """The Oxford HIC training data by its name (``datasets.oxford_hic`` in the stage-2 config): the output
    folder of ``dataset/prepare_hic.py``. ``train`` is the ``cc_sbu_align`` dataset over the same
    ``filter_cap.json`` + ``image/`` (``cc_sbu_align``, the original's name, keeps reading such a folder);
    ``val`` / ``test`` (every kept caption per image, :class:`HICEvalDataset`) are added when ``val.json`` /
    ``test.json`` exist, for evaluation code (the runner trains only on ``run.train_splits``)."""

    name = "oxford_hic"
    DATASET_CONFIG_DICT = {"default": "configs/datasets/oxford_hic/defaults.yaml"}

    def build_datasets(self):
        datasets = super().build_datasets()
        storage = self.folder()
        vis_eval = self.vis_processors["eval"]
        if vis_eval is None:
            train_node = self.config.get("vis_processor", {}).get("train") or {}
            vis_eval = Blip2ImageEvalProcessor(image_size=train_node.get("image_size", 224))
        for split in ("val", "test"):
            if os.path.isfile(os.path.join(storage, hic_format.SPLIT_FILES[split])):
                datasets[split] = HICEvalDataset(vis_eval, storage, split)
        return datasets
