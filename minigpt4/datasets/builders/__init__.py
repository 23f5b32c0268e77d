from minigpt4.datasets.builders.base_dataset_builder import BaseDatasetBuilder
from minigpt4.datasets.builders.hic_pairs_builder import HICPairsBuilder  # noqa: F401  (registers oxford_hic_pairs)
from minigpt4.datasets.builders.image_text_pair_builder import (
    CCSBUAlignBuilder,
    CCSBUBuilder,
    LaionBuilder,
    OxfordHICBuilder,
)

__all__ = ["BaseDatasetBuilder", "CCSBUAlignBuilder", "CCSBUBuilder", "LaionBuilder", "OxfordHICBuilder"]
