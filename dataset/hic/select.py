"""The select step: stream the caption CSV, clean and filter every row, group the captions per image
(hash partitions on disk, so memory stays bounded), rank them by funny_score -> ``selected.jsonl``."""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import re
import shutil
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from .files import AtomicTextWriter, InputError, json_number, log_run, say, update_stats
from .rows import checked_image_id, clean_caption, iter_csv, parse_score

_URL_RE = re.compile(r"(?i)\b(?:https?://|www\.)\S+")
_MENTION_RE = re.compile(r"(?<![\w@])@\w+")


@dataclass(frozen=True)
class SelectOptions:
    data_csv: Path
    min_score: float = 0
    min_words: int = 1
    max_words: int = 64  # 0: no bound
    drop_urls: bool = False
    drop_mentions: bool = False
    chunks: int = 0  # 0: about one per 48 MB of CSV
    skip_image_check: bool = False
    quiet: bool = False


def order_key(image_id: str) -> float:
    """Stable pseudo-random position in [0, 1) for an image id (output order, bucket choice)."""
    digest = hashlib.blake2b(image_id.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def quantiles_from_counter(counter: Counter, qs=(0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99, 1.0)) -> dict:
    """Exact (lower) quantiles of a value -> count histogram; memory is the number of distinct values."""
    total = sum(counter.values())
    if total == 0:
        return {}
    items = sorted(counter.items())
    out = {}
    for q in qs:
        rank = min(total - 1, int(math.floor(q * (total - 1))))
        seen = 0
        for value, count in items:
            seen += count
            if seen > rank:
                out[f"q{int(round(q * 100)):02d}"] = json_number(value)
                break
    out["mean"] = round(sum(v * c for v, c in items) / total, 4)
    return out


def available_images(out_dir: Path) -> set[str]:
    image_dir = out_dir / "image"
    if not image_dir.is_dir():
        return set()
    ids = set()
    with os.scandir(image_dir) as it:
        for entry in it:
            name = entry.name
            if name.endswith(".jpg") and not name.startswith("."):
                ids.add(name[:-4])
    return ids


def _drop_reason(opts: SelectOptions, caption: str, score) -> str | None:
    if not caption:
        return "empty_caption"
    n_words = caption.count(" ") + 1
    if n_words < opts.min_words:
        return "too_few_words"
    if opts.max_words and n_words > opts.max_words:
        return "too_many_words"
    if opts.drop_urls and _URL_RE.search(caption):
        return "has_url"
    if opts.drop_mentions and _MENTION_RE.search(caption):
        return "has_mention"
    if score < opts.min_score:
        return "below_min_score"
    return None


class _Counts:
    def __init__(self):
        self.bad, self.dropped, self.all_scores = Counter(), Counter(), Counter()
        self.kept_scores, self.captions_per_image = Counter(), Counter()
        self.rows_read = self.images_kept = self.captions_kept = 0


def _partition(opts: SelectOptions, work: Path, n_chunks: int, present: set | None, c: _Counts) -> None:
    """Pass 1: every kept row, cleaned, to the partition of its image (a hash of the id)."""
    files = [open(work / f"part-{i:04d}.csv", "w", encoding="utf-8", newline="") for i in range(n_chunks)]
    try:
        writers = [csv.writer(f, lineterminator="\n") for f in files]
        last_id, last_part = None, 0
        for row in iter_csv(opts.data_csv, ("image_id", "caption", "funny_score"), c.bad, "Caption CSV"):
            c.rows_read += 1
            image_id = checked_image_id(row, c.bad)
            if image_id is None:
                continue
            score = parse_score(row["funny_score"])
            if score is None:
                c.bad["missing_score" if not row["funny_score"].strip() else "bad_score"] += 1
                continue
            c.all_scores[score] += 1
            if present is not None and image_id not in present:
                c.dropped["no_image"] += 1
                continue
            caption = clean_caption(row["caption"])
            reason = _drop_reason(opts, caption, score)
            if reason:
                c.dropped[reason] += 1
                continue
            if image_id != last_id:
                last_id, last_part = image_id, int(order_key(image_id) * n_chunks)
            writers[last_part].writerow((image_id, score, caption))
    finally:
        for f in files:
            f.close()


def _rank(part: Path, out, c: _Counts) -> None:
    """Pass 2, one partition: exact duplicates keep their best score; captions ranked per image."""
    groups: dict[str, dict[str, list]] = {}
    with open(part, "r", encoding="utf-8", newline="") as fh:
        for n, (image_id, score_text, caption) in enumerate(csv.reader(fh)):
            score = parse_score(score_text)
            caps = groups.get(image_id)
            if caps is None:
                groups[image_id] = {caption: [score, n]}
                continue
            prev = caps.get(caption)
            if prev is None:
                caps[caption] = [score, n]
            else:
                c.dropped["duplicate_caption"] += 1
                if score > prev[0]:
                    prev[0] = score
    part.unlink()
    for image_id in sorted(groups, key=lambda k: (order_key(k), k)):
        ranked = sorted(groups[image_id].items(), key=lambda kv: (-kv[1][0], kv[1][1]))
        captions = [[caption, json_number(score)] for caption, (score, _) in ranked]
        out.write(json.dumps({"image_id": image_id, "captions": captions}, ensure_ascii=False) + "\n")
        c.images_kept += 1
        c.captions_kept += len(captions)
        c.captions_per_image[min(len(captions), 10)] += 1
        for _, score in captions:
            c.kept_scores[score] += 1


def _stats(opts: SelectOptions, c: _Counts, rows_bad: int) -> dict:
    return {
        "options": {
            "min_score": json_number(opts.min_score), "min_words": opts.min_words, "max_words": opts.max_words,
            "drop_urls": opts.drop_urls, "drop_mentions": opts.drop_mentions,
            "require_images": not opts.skip_image_check,
        },
        "caption_rows_read": c.rows_read,
        "caption_bad_rows": dict(sorted(c.bad.items())),
        "caption_bad_rows_total": rows_bad,
        "captions_dropped": dict(sorted(c.dropped.items())),
        "images_with_captions": c.images_kept,
        "captions_kept": c.captions_kept,
        "captions_per_image_hist": {("10+" if k == 10 else str(k)): v for k, v in sorted(c.captions_per_image.items())},
        "score_quantiles_all_rows": quantiles_from_counter(c.all_scores),
        "score_quantiles_kept": quantiles_from_counter(c.kept_scores),
        "score_counts_kept": {str(k): v for k, v in sorted(c.kept_scores.items())},
    }


def step_select(opts: SelectOptions, out_dir: Path) -> dict:
    """Write OUT/selected.jsonl: one line per image, its kept captions ranked by funny_score.

    Pass 1 streams the CSV row by row, cleans and filters each row and appends it to one of
    ``--chunks`` temporary partition files chosen by a hash of image_id. Pass 2 loads one partition at
    a time (all captions of an image are in the same one), dedupes and ranks. Peak memory is about one
    partition, not the whole CSV.
    """
    if not opts.skip_image_check and not (out_dir / "image").is_dir():
        raise InputError(
            f"{out_dir / 'image'} does not exist: run the download step first "
            "(or pass --skip-image-check to select captions without images)."
        )
    present = None if opts.skip_image_check else available_images(out_dir)
    n_chunks = opts.chunks or max(1, min(256, math.ceil(opts.data_csv.stat().st_size / (48 << 20))))
    work = Path(tempfile.mkdtemp(prefix=".select-", dir=out_dir))
    c = _Counts()
    started = time.monotonic()
    try:
        _partition(opts, work, n_chunks, present, c)
        rows_bad = sum(c.bad.values())
        c.rows_read += c.bad["malformed_row"] + c.bad["bad_encoding"] + c.bad["malformed_csv"]
        with AtomicTextWriter(out_dir / "selected.jsonl") as out:
            for i in range(n_chunks):
                _rank(work / f"part-{i:04d}.csv", out, c)
            stats = _stats(opts, c, rows_bad)  # before selected.jsonl is replaced: never a stale stats.json
    finally:
        shutil.rmtree(work, ignore_errors=True)
    elapsed = time.monotonic() - started
    update_stats(out_dir, "select", stats)
    record = {"step": "select", "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "seconds": round(elapsed, 3),
              "rows": c.rows_read, "rows_per_second": round(c.rows_read / elapsed, 1) if elapsed > 0 else None,
              "chunks": n_chunks}
    log_run(out_dir, record)
    say(opts.quiet, f"select: {c.rows_read} rows read, {c.captions_kept} captions kept for {c.images_kept} images "
                    f"in {elapsed:.1f}s")
    return record
