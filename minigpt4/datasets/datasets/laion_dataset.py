"""The stage-1 LAION webdataset: the same pipeline as ``cc_sbu`` (REFERENCE 5.2)."""

from minigpt4.datasets.datasets.cc_sbu_dataset import CCSBUDataset


class LaionDataset(CCSBUDataset):
    """Same shards layout and pipeline as ``cc_sbu``; a separate class so logs and registry names differ."""
