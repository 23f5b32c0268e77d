"""The prepared Oxford HIC folder (the output of ``dataset/prepare_hic.py``), read on the package side.

Every reader of those files in the package goes through this module; the formats are described in
``dataset/README_HIC.md`` (section 3)::

    FOLDER/selected.jsonl    {"image_id", "captions": [[caption, funny_score], ...]} per line, best first
    FOLDER/filter_cap.json   {"annotations": [{"image_id", "caption", "funny_score"}, ...]}      (train)
    FOLDER/val.json, test.json  {"split", "images": [{"image_id", "captions": [{"caption", "funny_score"}]}]}
    FOLDER/image/<image_id>.jpg

* :func:`read_selected` streams every kept caption per image (all splits), best first.
* :func:`read_split` reads one split (``train`` grouped per image) as the same :class:`SelectedImage` items.
* :func:`image_splits` maps every image id to its split.
* :func:`image_path` is the only way to turn an id into a file name: it refuses ids that are not safe.
* :func:`read_references` reads any of those files as evaluation references.

Captions whose ``funny_score`` is NaN or infinite are dropped (they would rank first and cannot be
written as JSON) and counted: pass a :class:`collections.Counter` as ``counts`` to get the number under
``"non_finite_score"``; a warning names the file. A missing score (``null``) is kept and ranks last.

Caption pairs per training image, e.g. for a learned humour scorer::

    splits = image_splits(folder)
    for image in read_selected(folder):
        if splits[image.image_id] == "train" and len(image.captions) > 1:
            (funnier, _), (plainer, _) = image.captions[0], image.captions[-1]
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, NamedTuple

from minigpt4.common.errors import DatasetError

logger = logging.getLogger(__name__)

SELECTED_FILE = "selected.jsonl"
SPLIT_FILES = {"train": "filter_cap.json", "val": "val.json", "test": "test.json"}
IMAGE_DIR = "image"
# The rule prepare_hic.py applies when it writes (dataset/hic/files.py keeps the same one): letters,
# digits, "_", "-" and ".", at most 200 characters, no "..", not starting with ".".
_SAFE_ID = re.compile(r"[A-Za-z0-9_.\-]{1,200}")
_DROP = object()


class ScoredCaption(NamedTuple):
    caption: str
    funny_score: int | float | None  # None: the file gave no score


@dataclass
class SelectedImage:
    image_id: str
    captions: list[ScoredCaption] = field(default_factory=list)  # best funny_score first


def is_safe_image_id(image_id: str) -> bool:
    return bool(_SAFE_ID.fullmatch(image_id)) and ".." not in image_id and not image_id.startswith(".")


def image_path(folder, image_id: str) -> Path:
    """``FOLDER/image/<image_id>.jpg``; a :class:`DatasetError` for an id that is not a safe file name."""
    if not isinstance(image_id, str) or not is_safe_image_id(image_id):
        raise DatasetError(f"image id {image_id!r} in {folder} is not a safe file name (letters, digits, '_', "
                           "'-', '.'; no '..'): it is refused rather than read outside image/.")
    return Path(folder) / IMAGE_DIR / f"{image_id}.jpg"


# -- one caption, one score ---------------------------------------------------------------------------
def _score(value, where: str, counts: Counter):
    if value is None or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        counts["non_finite_score"] += 1
        return _DROP
    raise DatasetError(f"{where}: funny_score must be a number or null, got {value!r:.40}.")


def _caption(item, where: str, counts: Counter):
    """``[caption, score]`` (selected.jsonl), ``{"caption", "funny_score"}`` or a bare string."""
    if isinstance(item, str):
        return ScoredCaption(item, None)
    if isinstance(item, (list, tuple)) and len(item) == 2 and isinstance(item[0], str):
        caption, score = item
    elif isinstance(item, dict) and isinstance(item.get("caption"), str):
        caption, score = item["caption"], item.get("funny_score")
    else:
        raise DatasetError(f"{where}: a caption must be [caption, funny_score], {{'caption': ..., 'funny_score': "
                           f"...}} or a string; got {item!r:.80}.")
    score = _score(score, where, counts)
    return _DROP if score is _DROP else ScoredCaption(caption, score)


def _best_first(captions: list[ScoredCaption]) -> list[ScoredCaption]:
    return sorted(captions, key=lambda c: (c.funny_score is None, -(c.funny_score or 0)))


def _image_id(row, where: str) -> str:
    if not isinstance(row, dict) or "image_id" not in row:
        raise DatasetError(f"{where}: expected an object with an 'image_id'; got {row!r:.80}.")
    image_id = row["image_id"]
    if isinstance(image_id, bool) or not isinstance(image_id, (str, int)):
        raise DatasetError(f"{where}: image_id must be a string or an integer, got {image_id!r:.40}.")
    return str(image_id)


def _image(row, where: str, counts: Counter) -> SelectedImage:
    """One ``{"image_id", "captions": [...]}`` (or ``{"image_id", "caption", "funny_score"}``) entry."""
    image_id = _image_id(row, where)
    if isinstance(row.get("captions"), list):
        items = row["captions"]
    elif "caption" in row:
        items = [{"caption": row["caption"], "funny_score": row.get("funny_score")}]
    else:
        raise DatasetError(f"{where}: needs a 'captions' list (or a 'caption').")
    captions = [c for c in (_caption(item, where, counts) for item in items) if c is not _DROP]
    return SelectedImage(image_id, _best_first(captions))


def _warn_dropped(path, before: int, counts: Counter) -> None:
    dropped = counts["non_finite_score"] - before
    if dropped:
        logger.warning("%s: dropped %d caption(s) whose funny_score is NaN or infinite.", path, dropped)


# -- files --------------------------------------------------------------------------------------------
def _missing(path: Path, step: str) -> DatasetError:
    return DatasetError(f"{path} not found: run dataset/prepare_hic.py {step} first (see dataset/README_HIC.md).")


def read_selected(folder, counts: Counter | None = None) -> Iterator[SelectedImage]:
    """Every image of ``FOLDER/selected.jsonl`` with its kept captions, best first (streamed)."""
    path = Path(folder) / SELECTED_FILE
    if not path.is_file():
        raise _missing(path, "select")
    counts = Counter() if counts is None else counts
    before = counts["non_finite_score"]
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            where = f"{path}, line {number}"
            try:
                row = json.loads(line)
            except ValueError as err:  # JSONDecodeError, or an integer beyond Python's digit limit
                raise DatasetError(f"{where}: not JSON ({err}).") from None
            yield _image(row, where, counts)
    _warn_dropped(path, before, counts)


def _read_document(path: Path):
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise DatasetError(f"Cannot read {path}: {err}.") from None
    if not text.strip():
        raise DatasetError(f"{path} is empty.")
    try:
        return json.loads(text)
    except ValueError:  # not one JSON document: read it as JSON lines below
        rows = []
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except ValueError as err:
                raise DatasetError(f"{path}, line {number}: not JSON ({err}).") from None
    return rows


def _entries(data, path: Path) -> list:
    if isinstance(data, dict) and isinstance(data.get("images"), list):
        return data["images"]
    if isinstance(data, dict) and isinstance(data.get("annotations"), list):
        return data["annotations"]
    if isinstance(data, list):
        return data
    raise DatasetError(f"{path}: expected {{'images': [...]}} (HIC test split), {{'annotations': [...]}} "
                       "(cc_sbu_align layout) or JSON lines of {'image_id', 'captions'}.")


def _grouped(path: Path, entries: list, counts: Counter) -> dict[str, SelectedImage]:
    before = counts["non_finite_score"]
    images: dict[str, SelectedImage] = {}
    for n, row in enumerate(entries):
        image = _image(row, f"{path}, entry {n}", counts)
        images.setdefault(image.image_id, SelectedImage(image.image_id)).captions.extend(image.captions)
    for image in images.values():
        image.captions = _best_first(image.captions)
    _warn_dropped(path, before, counts)
    return images


def read_split(folder, split: str, counts: Counter | None = None) -> list[SelectedImage]:
    """The images of one split in file order: ``val``/``test`` from ``val.json``/``test.json``, ``train``
    from ``filter_cap.json`` (its one-caption annotations grouped per image), captions best first."""
    if split not in SPLIT_FILES:
        raise DatasetError(f"unknown split {split!r}; expected one of {', '.join(SPLIT_FILES)}.")
    path = Path(folder) / SPLIT_FILES[split]
    if not path.is_file():
        raise _missing(path, "split")
    data = _read_document(path)
    key = "annotations" if split == "train" else "images"
    if not isinstance(data, dict) or not isinstance(data.get(key), list):
        raise DatasetError(f"{path} must be a JSON object with an {key!r} list (as dataset/prepare_hic.py writes).")
    counts = Counter() if counts is None else counts
    return list(_grouped(path, data[key], counts).values())


def image_splits(folder) -> dict[str, str]:
    """``image_id -> "train" | "val" | "test"``: val/test ids from their files, every other id of
    ``selected.jsonl`` is train (``filter_cap.json`` holds only the top-k captions of each)."""
    held_out = {image.image_id: split for split in ("val", "test") for image in read_split(folder, split)}
    return {image.image_id: held_out.get(image.image_id, "train") for image in read_selected(folder)}


def read_references(path, counts: Counter | None = None) -> dict[str, list[ScoredCaption]]:
    """``image_id -> captions`` (best first) from any one of the files above (``test.json`` for
    evaluation); blank captions and images left without a caption are left out."""
    path = Path(path)
    counts = Counter() if counts is None else counts
    images = _grouped(path, _entries(_read_document(path), path), counts)
    refs = {k: [c for c in v.captions if c.caption.strip()] for k, v in images.items()}
    refs = {k: v for k, v in refs.items() if v}
    if not refs:
        raise DatasetError(f"{path} holds no reference captions.")
    return refs
