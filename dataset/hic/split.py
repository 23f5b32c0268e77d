"""The split step: every image to train, val or test by a hash of (seed, image_id); the training
captions capped at ``--top-k`` -> ``filter_cap.json``, ``val.json``, ``test.json``."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from .files import AtomicTextWriter, InputError, say, update_stats


@dataclass(frozen=True)
class SplitOptions:
    seed: int = 0
    val_fraction: float = 0.05
    test_fraction: float = 0.05
    top_k: int = 1  # training captions per image, best first (0: all)
    eval_top_k: int = 0  # reference captions per val/test image (0: all)
    quiet: bool = False


def split_of(image_id: str, seed: int, val_fraction: float, test_fraction: float) -> str:
    """Deterministic split from a hash of (seed, image_id): every caption of an image goes together."""
    digest = hashlib.sha256(f"{seed}\x00{image_id}".encode("utf-8")).digest()
    u = int.from_bytes(digest[:8], "big") / 2.0**64
    if u < test_fraction:
        return "test"
    if u < test_fraction + val_fraction:
        return "val"
    return "train"


def iter_selected(out_dir: Path) -> Iterator[dict]:
    path = out_dir / "selected.jsonl"
    if not path.is_file():
        raise InputError(f"{path} not found: run the select step first (python dataset/prepare_hic.py select ...).")
    with open(path, "r", encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                yield json.loads(line)


def iter_splits(opts: SplitOptions, out_dir: Path) -> Iterator[tuple[str, str, list]]:
    """(split, image_id, captions) with --top-k applied to train and --eval-top-k to val/test."""
    for rec in iter_selected(out_dir):
        image_id = rec["image_id"]
        split = split_of(image_id, opts.seed, opts.val_fraction, opts.test_fraction)
        caps = rec["captions"]
        k = opts.top_k if split == "train" else opts.eval_top_k
        if k:
            caps = caps[:k]
        yield split, image_id, caps


def step_split(opts: SplitOptions, out_dir: Path) -> dict:
    counts = {s: Counter() for s in ("train", "val", "test")}
    with AtomicTextWriter(out_dir / "filter_cap.json") as train, \
            AtomicTextWriter(out_dir / "val.json") as val, \
            AtomicTextWriter(out_dir / "test.json") as test:
        train.write('{"annotations": [')
        val.write('{"split": "val", "images": [')
        test.write('{"split": "test", "images": [')
        handles = {"val": val, "test": test}
        for split, image_id, caps in iter_splits(opts, out_dir):
            c = counts[split]
            if split == "train":
                for caption, score in caps:
                    item = {"image_id": image_id, "caption": caption, "funny_score": score}
                    train.write(("\n" if c["captions"] == 0 else ",\n") + json.dumps(item, ensure_ascii=False))
                    c["captions"] += 1
            else:
                item = {"image_id": image_id,
                        "captions": [{"caption": cap, "funny_score": score} for cap, score in caps]}
                handles[split].write(("\n" if c["images"] == 0 else ",\n") + json.dumps(item, ensure_ascii=False))
                c["captions"] += len(caps)
            c["images"] += 1
        train.write("\n]}\n")
        val.write("\n]}\n")
        test.write("\n]}\n")
    stats = {
        "options": {"seed": opts.seed, "val_fraction": opts.val_fraction, "test_fraction": opts.test_fraction,
                    "top_k": opts.top_k, "eval_top_k": opts.eval_top_k},
        **{s: {"images": counts[s]["images"], "captions": counts[s]["captions"]} for s in counts},
    }
    update_stats(out_dir, "split", stats)
    say(opts.quiet, "split: " + ", ".join(f"{s} {counts[s]['images']} images / {counts[s]['captions']} captions"
                                          for s in counts))
    return stats
