"""The stage-1 LAION webdataset: the same pipeline as ``cc_sbu`` (REFERENCE 5.2)."""

from minigpt4.datasets.datasets.cc_sbu_dataset import CCSBUDataset


class LaionDataset(CCSBUDataset):
    pass
