"""Oxford HIC evaluation splits (``val.json`` / ``test.json`` of a ``dataset/prepare_hic.py`` folder,
read through :mod:`minigpt4.datasets.hic_format`): one sample per image with every kept reference
caption and its ``funny_score``."""

from __future__ import annotations

import os

from torch.utils.data import Dataset

from minigpt4.datasets.datasets.cc_sbu_dataset import check_images_exist, read_image
from minigpt4.datasets.hic_format import IMAGE_DIR, SPLIT_FILES, image_path, read_split


class HICEvalDataset(Dataset):
    """Samples ``{"image", "image_id", "captions": [str], "funny_scores": [float]}`` (not collated)."""

    def __init__(self, vis_processor, folder, split: str):
        self.vis_processor = vis_processor
        self.images = read_split(folder, split)
        self.paths = [image_path(folder, item.image_id) for item in self.images]  # refuses unsafe ids
        check_images_exist(os.path.join(folder, IMAGE_DIR), (item.image_id for item in self.images),
                           os.path.join(folder, SPLIT_FILES[split]))

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        item = self.images[index]
        return {
            "image": self.vis_processor(read_image(self.paths[index])),
            "image_id": item.image_id,
            "captions": [c.caption for c in item.captions],
            "funny_scores": [c.funny_score for c in item.captions],
        }
