"""Oxford HIC evaluation splits (``val.json`` / ``test.json`` written by ``dataset/prepare_hic.py``):
one sample per image with every kept reference caption and its ``funny_score``."""

from __future__ import annotations

import json
import os

from PIL import Image
from torch.utils.data import Dataset

from minigpt4.common.errors import DatasetError
from minigpt4.datasets.datasets.cc_sbu_dataset import check_images_exist


def load_eval_images(path: str) -> list[dict]:
    """``{"split", "images": [{"image_id", "captions": [{"caption", "funny_score"}]}]}``, checked."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Evaluation file {path!r} does not exist.")
    with open(path, encoding="utf-8") as f:
        content = json.load(f)
    images = content.get("images") if isinstance(content, dict) else None
    if not isinstance(images, list):
        raise DatasetError(f"{path} must be a JSON object with an 'images' list.")
    for i, item in enumerate(images):
        if not isinstance(item, dict) or "image_id" not in item or not isinstance(item.get("captions"), list):
            raise DatasetError(f"{path}: images[{i}] needs 'image_id' and a 'captions' list.")
        for j, cap in enumerate(item["captions"]):
            if not isinstance(cap, dict) or not isinstance(cap.get("caption"), str):
                raise DatasetError(f"{path}: images[{i}]['captions'][{j}]['caption'] must be a string.")
    return images


class HICEvalDataset(Dataset):
    """Samples ``{"image", "image_id", "captions": [str], "funny_scores": [float]}`` (not collated)."""

    def __init__(self, vis_processor, vis_root: str, ann_path: str):
        self.vis_processor = vis_processor
        self.vis_root = vis_root
        self.images = load_eval_images(ann_path)
        check_images_exist(vis_root, (item["image_id"] for item in self.images), ann_path)

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        item = self.images[index]
        with Image.open(os.path.join(self.vis_root, f"{item['image_id']}.jpg")) as img:
            image = self.vis_processor(img.convert("RGB"))
        return {
            "image": image,
            "image_id": item["image_id"],
            "captions": [c["caption"] for c in item["captions"]],
            "funny_scores": [c.get("funny_score") for c in item["captions"]],
        }
