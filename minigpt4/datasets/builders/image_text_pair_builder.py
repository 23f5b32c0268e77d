"""Builders for image-caption data: ``cc_sbu_align`` (stage 2, the Oxford HIC layout)."""

from __future__ import annotations

import logging
import os

from minigpt4.common.registry import registry
from minigpt4.datasets.builders.base_dataset_builder import BaseDatasetBuilder
from minigpt4.datasets.datasets.cc_sbu_dataset import CCSBUAlignDataset

logger = logging.getLogger(__name__)


@registry.register_builder("cc_sbu_align")
class CCSBUAlignBuilder(BaseDatasetBuilder):
    train_dataset_cls = CCSBUAlignDataset
    DATASET_CONFIG_DICT = {"default": "configs/datasets/cc_sbu/align.yaml"}

    def build_datasets(self):
        logger.info("Building datasets...")
        self.build_processors()
        storage = str(self.config.build_info.storage)
        if not os.path.isdir(storage):
            raise FileNotFoundError(
                f"datasets.cc_sbu_align.build_info.storage {storage!r} does not exist: point it at a folder "
                "with filter_cap.json and image/ (see dataset/README_HIC.md)."
            )
        dataset = self.train_dataset_cls(
            vis_processor=self.vis_processors["train"],
            text_processor=self.text_processors["train"],
            ann_paths=[os.path.join(storage, "filter_cap.json")],
            vis_root=os.path.join(storage, "image"),
        )
        return {"train": dataset}
