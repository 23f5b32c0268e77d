"""Caption datasets of the original: ``cc_sbu_align`` (a folder with ``filter_cap.json`` and
``image/<image_id>.jpg``; stage 2 and the Oxford HIC data) and ``cc_sbu`` (webdataset shards; stage 1).

Untrusted input is read as data only: image ids must be plain file names (no ``../``), a shard
member is decoded only when it is the image (``jpg``/``jpeg``/``png``) or the caption
(``json``/``txt``) -- never unpickled -- and an image that cannot be read, whatever Pillow raises,
is a counted, skipped sample.

Map-style samples may be addressed by ``(index, seed)`` pairs (see ``dataloader_utils``): the image
transform then draws its randomness from ``seed`` alone, so a sample's augmentation does not depend on
the worker that loads it, the number of workers or the number of processes -- which is what makes
an interrupted run resume exactly.
"""

from __future__ import annotations

import io
import json
import logging
import os

import torch
from PIL import Image
from torch.utils.data import Dataset
from torch.utils.data.dataloader import default_collate

from minigpt4.common.errors import DatasetError
from minigpt4.datasets.hic_format import is_safe_image_id

IMAGE_MEMBERS = ("jpg", "jpeg", "png")  # the shard members read as the image, first found wins
CAPTION_MEMBERS = ("json", "txt")  # ``json``: its "caption"; ``txt``: the text

logger = logging.getLogger(__name__)


def load_annotations(path: str) -> list[dict]:
    """The ``annotations`` list of a ``filter_cap.json``, checked entry by entry."""
    if not os.path.isfile(path):
        raise DatasetError(f"Annotation file {path!r} does not exist (expected <storage>/filter_cap.json).")
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
        if not is_safe_image_id(str(ann["image_id"])):
            raise DatasetError(f"{path}: annotations[{i}]['image_id'] {ann['image_id']!r} is not a plain file name "
                               "(letters, digits, '_', '-', '.'; no '..'): it is refused rather than read outside image/.")
    return anns


def check_images_exist(vis_root: str, image_ids, source: str) -> None:
    if not os.path.isdir(vis_root):
        raise DatasetError(f"Image folder {vis_root!r} does not exist (expected next to {source}).")
    missing = [i for i in dict.fromkeys(image_ids) if not os.path.isfile(os.path.join(vis_root, f"{i}.jpg"))]
    if missing:
        shown = ", ".join(os.path.join(vis_root, f"{i}.jpg") for i in missing[:5])
        raise DatasetError(f"{len(missing)} image file(s) named in {source} are missing, e.g. {shown}.")


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

    def __getitem__(self, key):
        index, seed = key if isinstance(key, tuple) else (key, None)
        for attempt in range(len(self)):
            i = (index + attempt) % len(self)
            path = os.path.join(self.vis_root, f"{self.annotation[i]['image_id']}.jpg")
            try:
                image = read_image(path)
            except Exception as err:  # noqa: BLE001  (Pillow raises IndexError, TypeError... on broken files)
                self.num_skipped += 1
                logger.warning("Skipping unreadable image %s (%s: %s); %d skipped so far in this process.",
                               path, type(err).__name__, err, self.num_skipped)
                continue
            ann = self.annotation[i]
            return {"image": seeded_transform(self.vis_processor, image, seed), "text_input": ann["caption"],
                    "image_id": self.img_ids[ann["image_id"]]}
        raise DatasetError(f"No readable image in {self.vis_root}.")

    def collater(self, samples):
        return default_collate(samples)


def seeded_transform(processor, image, seed: int | None):
    """``processor(image)``; with a ``seed``, its random draws come from that seed alone (the global
    torch RNG is left as it was)."""
    if seed is None:
        return processor(image)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return processor(image)


def read_image(source) -> Image.Image:
    """An RGB image from a path or bytes, fully decoded (so a truncated file fails here)."""
    with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as img:
        return img.convert("RGB")


def decode_sample(sample: dict) -> tuple:
    """``(image, caption)`` of a webdataset sample whose members are still bytes; no other member is
    looked at. The caption is ``json["caption"]`` (the original's) or else the ``txt`` text."""
    image_key = next((k for k in IMAGE_MEMBERS if k in sample), None)
    if image_key is None:
        raise DatasetError(f"sample {sample.get('__key__')!r} has no {'/'.join(IMAGE_MEMBERS)} member")
    if "json" in sample:
        caption = json.loads(sample["json"])["caption"]
    elif "txt" in sample:
        caption = sample["txt"].decode("utf-8")
    else:
        raise DatasetError(f"sample {sample.get('__key__')!r} has no {'/'.join(CAPTION_MEMBERS)} member")
    if not isinstance(caption, str):
        raise DatasetError(f"sample {sample.get('__key__')!r}: its caption is a {type(caption).__name__}, not text")
    return read_image(sample[image_key]), caption


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
    1000-sample shuffle buffer, ``jpg`` + ``json`` (``caption``), bad samples skipped with a warning.

    Unlike the original's ``wds.decode("pilrgb")`` -- which decodes every member with webdataset's
    default handlers, so a ``.pyd`` or ``.pth`` member in a downloaded shard is unpickled -- samples
    stay bytes until :func:`decode_sample` reads the two members used."""

    def __init__(self, vis_processor, text_processor, location: str, shuffle_buffer: int = 1000):
        import webdataset as wds

        self.vis_processor = vis_processor
        self.text_processor = text_processor
        self.skip = SkipBadSamples(type(self).__name__)
        self.inner_dataset = wds.DataPipeline(
            wds.ResampledShards(location),
            wds.tarfile_to_samples(handler=self.skip),
            wds.shuffle(shuffle_buffer, handler=self.skip),
            wds.map(decode_sample, handler=self.skip),
            wds.map(self.to_dict, handler=self.skip),
        )

    def to_dict(self, sample):
        image, caption = sample
        return {"image": self.vis_processor(image), "text_input": self.text_processor(caption)}
