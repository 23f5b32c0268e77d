"""``oxford_hic_pairs``: ranking pairs of human captions from a prepared Oxford HIC folder.

``train`` pairs come from train images only and ``val`` pairs (within-image, no hard negatives) from
val images, for model selection; the scorer card uses the test images (``minigpt4.humour.card``).
Images whose file is missing are left out with their pairs, and counted.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, fields

from minigpt4.common.errors import DatasetError
from minigpt4.common.registry import registry
from minigpt4.datasets.builders.base_dataset_builder import BaseDatasetBuilder, DatasetConfig
from minigpt4.datasets.datasets.hic_pairs_dataset import HICPairsDataset
from minigpt4.datasets.hic_format import image_path, image_splits, read_selected
from minigpt4.datasets.hic_pairs import PairOptions, make_pairs

logger = logging.getLogger(__name__)


@dataclass
class HICPairsConfig(DatasetConfig, PairOptions):
    """The keys of ``datasets.oxford_hic_pairs``: the dataset keys plus the pair rules (:class:`PairOptions`)."""

    def pair_options(self, **changes) -> PairOptions:
        values = {f.name: getattr(self, f.name) for f in fields(PairOptions)}
        return PairOptions(**{**values, **changes})


def images_by_split(folder: str, counts=None) -> dict[str, list]:
    """``split -> images`` with every kept caption (``selected.jsonl``, read once), those with a file only."""
    selected = list(read_selected(folder))  # first: a folder without selected.jsonl names that step
    splits = image_splits(folder)
    by_split = {"train": [], "val": [], "test": []}
    missing = 0
    for image in selected:
        if os.path.isfile(image_path(folder, image.image_id)):
            by_split[splits[image.image_id]].append(image)
        else:
            missing += 1
    if counts is not None:
        counts["missing_images"] += missing
    if missing:
        logger.warning("%s: %d image(s) listed in selected.jsonl have no file under image/; their pairs are left out.",
                       folder, missing)
    return by_split


@registry.register_builder("oxford_hic_pairs")
class HICPairsBuilder(BaseDatasetBuilder):
    name = "oxford_hic_pairs"
    config_class = HICPairsConfig
    DATASET_CONFIG_DICT = {"default": "configs/datasets/oxford_hic_pairs/defaults.yaml"}

    def build_datasets(self):
        self.build_processors()
        folder, settings = self.storage(), self.settings
        where = f"datasets.{self.name}.build_info.storage {folder}"
        images = images_by_split(folder)
        train = make_pairs(images["train"], settings.pair_options(), f"{where} (train split)")
        logger.info("oxford_hic_pairs: %d train pairs (%d within-image, %d hard negatives) from %d images.",
                    len(train.pairs), train.counts["within_pairs"], train.counts["mismatch_pairs"],
                    train.counts["images_with_pairs"])
        datasets = {"train": HICPairsDataset(train.pairs, folder, self.vis_processors["train"], "train")}
        try:  # every within-image pair of the val images, for model selection
            val = make_pairs(images["val"], settings.pair_options(mismatch_fraction=0.0, max_pairs_per_image=0),
                             f"{where} (val split)")
        except DatasetError as err:
            logger.warning("No validation pairs: %s", err)
            return datasets
        datasets["val"] = HICPairsDataset(val.pairs, folder, self.vis_processors["eval"], "val")
        logger.info("oxford_hic_pairs: %d val pairs from %d images.", len(val.pairs), val.counts["images_with_pairs"])
        return datasets
