from minigpt4.datasets.builders.base_dataset_builder import BaseDatasetBuilder
from minigpt4.datasets.builders.image_text_pair_builder import CCSBUAlignBuilder

__all__ = ["BaseDatasetBuilder", "CCSBUAlignBuilder"]
