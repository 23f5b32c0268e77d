"""Caption datasets of the original: ``cc_sbu_align`` (a folder with ``filter_cap.json`` and
``image/<image_id>.jpg``; stage 2 and the Oxford HIC data) and ``cc_sbu`` (webdataset shards; stage 1).

Map-style samples may be addressed by ``(index, seed)`` pairs (see ``dataloader_utils``): the image
transform then draws its randomness from ``seed`` alone, so a sample's augmentation does not depend on
the worker that loads it, the number of workers or the number of processes -- which is what makes
an interrupted run resume exactly.
"""

from __future__ import annotations

import json
import logging
import os

import torch
from PIL import Image
from torch.utils.data import Dataset
from torch.utils.data.dataloader import default_collate
from minigpt4.common.errors import DatasetError

logger = logging.getLogger(__name__)


def load_annotations(path: str) -> list[dict]:
    """The ``annotations`` list of a ``filter_cap.json``, checked entry by entry."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Annotation file {path!r} does not exist (expected <storage>/filter_cap.json).")
    try:
        with open(path, encoding="utf-8") as f:
            content = json.load(f)
    except json.JSONDecodeError as err:
        raise DatasetError(f"{path} is not valid JSON: {err}") from None
    anns = content.get("annotations") if isinstance(content, dict) else None
    if not isinstance(anns, list):
        raise DatasetError(f"{path} must be a JSON object with an 'annotations' list; got {type(content).__name__} "
                           f"with keys {sorted(content) if isinstance(content, dict) else '-'}.")
    if not anns:
        raise DatasetError(f"{path} has an empty 'annotations' list: there is nothing to train on.")
    for i, ann in enumerate(anns):
        if not isinstance(ann, dict):
            raise DatasetError(f"{path}: annotations[{i}] is a {type(ann).__name__}, expected an object.")
        for key in ("image_id", "caption"):
            if key not in ann:
                raise DatasetError(f"{path}: annotations[{i}] has no {key!r} key (it has {sorted(ann)}).")
        if not isinstance(ann["caption"], str):
            raise DatasetError(f"{path}: annotations[{i}]['caption'] must be a string, got "
                               f"{type(ann['caption']).__name__} {ann['caption']!r}.")
        if not isinstance(ann["image_id"], (str, int)) or isinstance(ann["image_id"], bool):
            raise DatasetError(f"{path}: annotations[{i}]['image_id'] must be a string or an integer, got {ann['image_id']!r}.")
    return anns


def check_images_exist(vis_root: str, image_ids, source: str) -> None:
    if not os.path.isdir(vis_root):
        raise FileNotFoundError(f"Image folder {vis_root!r} does not exist (expected next to {source}).")
    missing = [i for i in dict.fromkeys(image_ids) if not os.path.isfile(os.path.join(vis_root, f"{i}.jpg"))]
    if missing:
        shown = ", ".join(os.path.join(vis_root, f"{i}.jpg") for i in missing[:5])
        raise FileNotFoundError(f"{len(missing)} image file(s) named in {source} are missing, e.g. {shown}.")


class CCSBUAlignDataset(Dataset):
    """Samples ``{"image", "text_input", "image_id"}``; captions are used raw, as the original
    (the configured text processor is not applied to this dataset, REFERENCE 4.4)."""

    def __init__(self, vis_processor, text_processor, vis_root, ann_paths):
        self.vis_root = vis_root
        self.vis_processor = vis_processor
        self.text_processor = text_processor
        self.annotation = []
        for path in ann_paths:
            anns = load_annotations(path)
            check_images_exist(vis_root, (a["image_id"] for a in anns), path)
            self.annotation.extend(anns)
        self.img_ids = {}
        for i, ann in enumerate(self.annotation):
            ann["instance_id"] = str(i)
            self.img_ids.setdefault(ann["image_id"], len(self.img_ids))
        self.num_skipped = 0  # corrupt images met by this process (or worker)

    def __len__(self):
        return len(self.annotation)

    def _load_image(self, index: int, seed):
        path = os.path.join(self.vis_root, f"{self.annotation[index]['image_id']}.jpg")
        with Image.open(path) as img:
            image = img.convert("RGB")
        if seed is None:
            return self.vis_processor(image)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.vis_processor(image)

    def __getitem__(self, key):
        index, seed = key if isinstance(key, tuple) else (key, None)
        for attempt in range(len(self)):
            i = (index + attempt) % len(self)
            try:
                image = self._load_image(i, seed)
            except (OSError, ValueError, SyntaxError) as err:  # PIL's errors for broken files
                self.num_skipped += 1
                logger.warning("Skipping unreadable image of annotation %d (%s); %d skipped so far in this process.",
                               i, err, self.num_skipped)
                continue
            ann = self.annotation[i]
            return {"image": image, "text_input": ann["caption"], "image_id": self.img_ids[ann["image_id"]]}
        raise DatasetError(f"No readable image in {self.vis_root}.")

    def collater(self, samples):
        return default_collate(samples)


class SkipBadSamples:
    """A webdataset handler: log the error with a running count and go on (``warn_and_continue``
    without its half-second sleep per bad sample)."""

    def __init__(self, name: str):
        self.name = name
        self.count = 0

    def __call__(self, exn: Exception) -> bool:
        self.count += 1
        logger.warning("%s: skipping a bad sample (%r); %d skipped so far in this process.", self.name, exn, self.count)
        return True


class CCSBUDataset:
    """Stage-1 webdataset pipeline over brace-expanded shards (REFERENCE 5.2): resampled shards,
    1000-sample shuffle buffer, ``jpg`` + ``json`` (``caption``), bad samples skipped with a warning."""

    def __init__(self, vis_processor, text_processor, location: str, shuffle_buffer: int = 1000):
        import webdataset as wds

        self.vis_processor = vis_processor
        self.text_processor = text_processor
        self.skip = SkipBadSamples(type(self).__name__)
        self.inner_dataset = wds.DataPipeline(
            wds.ResampledShards(location),
            wds.tarfile_to_samples(handler=self.skip),
            wds.shuffle(shuffle_buffer, handler=self.skip),
            wds.decode("pilrgb", handler=self.skip),
            wds.to_tuple("jpg", "json", handler=self.skip),
            wds.map_tuple(self.vis_processor, handler=self.skip),
            wds.map(self.to_dict, handler=self.skip),
        )

    def to_dict(self, sample):
        image, meta = sample
        return {"image": image, "text_input": self.text_processor(meta["caption"])}
