"""Ranking pairs of Oxford HIC captions (``oxford_hic_pairs``): one sample per (image, winning caption,
losing caption, weight), see :mod:`minigpt4.datasets.hic_pairs`.

A sample is ``{"image" (3, H, W), "image_id", "text_win", "text_lose", "weight", "margin", "mismatch"}``;
without images (``load_images = False``: the scorer reads cached image embeddings by id) ``image`` is
left out and no file is opened. Samples may be addressed by ``(index, seed)`` (see ``dataloader_utils``);
an unreadable image is a counted, skipped sample (the next pair is taken).
"""

from __future__ import annotations

import logging
import math

import torch
from torch.utils.data import Dataset
from torch.utils.data.dataloader import default_collate

from minigpt4.common.errors import DatasetError
from minigpt4.datasets.datasets.cc_sbu_dataset import read_image, seeded_transform
from minigpt4.datasets.hic_format import image_path
from minigpt4.datasets.hic_pairs import MISMATCH, Pair

logger = logging.getLogger(__name__)


class HICPairsDataset(Dataset):
    def __init__(self, pairs: list[Pair], folder: str, vis_processor, split: str = "train"):
        self.pairs, self.folder, self.vis_processor, self.split = pairs, folder, vis_processor, split
        self.load_images = True
        self.num_skipped = 0  # unreadable images met by this process (or worker)

    def __len__(self) -> int:
        return len(self.pairs)

    def image_ids(self) -> list[str]:
        return list(dict.fromkeys(p.image_id for p in self.pairs))

    def captions(self) -> list[str]:
        return list(dict.fromkeys(c for p in self.pairs for c in (p.win, p.lose)))

    def load_image(self, image_id: str, seed: int | None = None) -> torch.Tensor:
        return seeded_transform(self.vis_processor, read_image(image_path(self.folder, image_id)), seed)

    def _sample(self, pair: Pair) -> dict:
        return {"image_id": pair.image_id, "text_win": pair.win, "text_lose": pair.lose,
                "weight": torch.tensor(pair.weight, dtype=torch.float32),
                "margin": torch.tensor(0.0 if math.isnan(pair.margin) else pair.margin, dtype=torch.float32),
                "mismatch": torch.tensor(pair.kind == MISMATCH)}

    def __getitem__(self, key) -> dict:
        index, seed = key if isinstance(key, tuple) else (key, None)
        for attempt in range(len(self)):
            pair = self.pairs[(index + attempt) % len(self)]
            sample = self._sample(pair)
            if not self.load_images:
                return sample
            try:
                sample["image"] = self.load_image(pair.image_id, seed)
            except DatasetError:
                raise
            except Exception as err:  # noqa: BLE001  (Pillow raises many types on broken files)
                self.num_skipped += 1
                logger.warning("Skipping a pair of unreadable image %s (%s: %s); %d skipped so far in this process.",
                               image_path(self.folder, pair.image_id), type(err).__name__, err, self.num_skipped)
                continue
            return sample
        raise DatasetError(f"No readable image among the {self.split} pairs of {self.folder}.")

    def collater(self, samples: list[dict]) -> dict:
        return default_collate(samples)
