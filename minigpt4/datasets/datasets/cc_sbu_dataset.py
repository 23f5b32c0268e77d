"""The ``cc_sbu_align`` dataset: ``filter_cap.json`` + ``image/<image_id>.jpg``."""

from __future__ import annotations

import json
import os

from PIL import Image
from torch.utils.data import Dataset
from torch.utils.data.dataloader import default_collate


class CCSBUAlignDataset(Dataset):
    """Samples ``{"image", "text_input", "image_id"}``; captions are used raw, as the original
    (the configured text processor is not applied to this dataset)."""

    def __init__(self, vis_processor, text_processor, vis_root, ann_paths):
        self.vis_root = vis_root
        self.vis_processor = vis_processor
        self.text_processor = text_processor
        self.annotation = []
        for path in ann_paths:
            if not os.path.isfile(path):
                raise FileNotFoundError(f"Annotation file {path!r} does not exist.")
            with open(path, encoding="utf-8") as f:
                self.annotation.extend(json.load(f)["annotations"])
        self.img_ids = {}
        for i, ann in enumerate(self.annotation):
            ann["instance_id"] = str(i)
            self.img_ids.setdefault(ann["image_id"], len(self.img_ids))

    def __len__(self):
        return len(self.annotation)

    def __getitem__(self, index):
        ann = self.annotation[index]
        image = Image.open(os.path.join(self.vis_root, f"{ann['image_id']}.jpg")).convert("RGB")
        return {
            "image": self.vis_processor(image),
            "text_input": ann["caption"],
            "image_id": self.img_ids[ann["image_id"]],
        }

    def collater(self, samples):
        return default_collate(samples)
