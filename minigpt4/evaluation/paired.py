"""Paired comparison of several captions files of the same test images: ``evaluate.py --captions A.jsonl
B.jsonl --labels base humour-ft ...``.

Every per-image metric is compared on the images present in ALL files (the others are listed): for
each file after the first, the mean difference ``file - first`` over those images with a paired
bootstrap CI (:func:`minigpt4.evaluation.bootstrap.paired_ci`: each resample draws the same images
for both files), marked significant when the CI excludes 0. Images for which a metric is undefined
in either file (e.g. within-image distinct-n of a single caption) are left out of that metric; a
pass@k that some common image has too few captions for is omitted, as in one file's report.
"""

from __future__ import annotations

import math
import re

from minigpt4.common.errors import ConfigError
from minigpt4.evaluation.bootstrap import paired_ci

# (per-image key, label, group); the order of the report's table
PAIRED_METRICS = (
    ("percentile", "human percentile", "humour"),
    ("beats_top", "win rate vs top human caption", "humour"),
    ("beats_median", "win rate vs median human caption", "humour"),
    ("pass@1", "pass@1 (beats the top human caption)", "humour"),
    ("pass@3", "pass@3", "humour"),
    ("pass@5", "pass@5", "humour"),
    ("similarity", "image-caption similarity", "grounding"),
    ("mismatch_accuracy", "mismatch accuracy", "grounding"),
    ("distinct-1", "within-image distinct-1", "diversity"),
    ("distinct-2", "within-image distinct-2", "diversity"),
    ("repeated_trigram", "repeated 3-gram rate", "originality"),
    ("copy_exact", "exact copy rate (training captions)", "originality"),
    ("copy_near", "near copy rate (training captions)", "originality"),
    ("BLEU-4", "BLEU-4 (reference overlap, not a humour measure)", "reference overlap"),
    ("ROUGE-L", "ROUGE-L (reference overlap, not a humour measure)", "reference overlap"),
    ("CIDEr-D", "CIDEr-D (reference overlap, not a humour measure)", "reference overlap"),
)
_LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}")


def run_labels(paths: list[str], labels: list[str] | None) -> list[str]:
    """One label per captions file: ``--labels`` as given, else the file names' stems (made unique)."""
    if labels is not None:
        if len(labels) != len(paths):
            raise ConfigError(f"--labels gives {len(labels)} label(s) for {len(paths)} --captions file(s); give one "
                              "per file, in the same order.")
        bad = [label for label in labels if not _LABEL.fullmatch(label)]
        if bad:
            raise ConfigError(f"--labels {bad[0]!r} is not a usable folder name (letters, digits, '_', '-', '.'; "
                              "at most 64 characters, starting with a letter or digit).")
        if len(set(labels)) != len(labels):
            raise ConfigError(f"--labels repeats a label ({', '.join(labels)}); each file needs its own.")
        return list(labels)
    out = []
    for path in paths:
        stem = re.sub(r"[^A-Za-z0-9_.\-]", "_", path.rsplit("/", 1)[-1].rsplit(".", 1)[0]).lstrip("._-") or "run"
        label, n = stem[:60], 2
        while label in out:
            label, n = f"{stem[:60]}-{n}", n + 1
        out.append(label)
    return out


def _value(row: dict, key: str) -> float:
    value = row.get(key)
    return math.nan if value is None else float(value)


def compare(runs: list[tuple[str, dict[str, dict]]], resamples: int, seed: int) -> dict:
    """``runs``: ``(label, image_id -> per-image metrics)`` in order; every later run against the first."""
    common = sorted(set.intersection(*(set(per_image) for _, per_image in runs)))
    out = {"baseline": runs[0][0], "num_common_images": len(common),
           "left_out_images": {label: sorted(set(per_image) - set(common)) for label, per_image in runs},
           "comparisons": [], "omitted": {}}
    for label, per_image in runs[1:]:
        base = runs[0][1]
        metrics = {}
        for key, name, group in PAIRED_METRICS:
            a = [_value(base[i], key) for i in common]
            b = [_value(per_image[i], key) for i in common]
            if key.startswith("pass@") and any(math.isnan(x) for x in a + b):
                out["omitted"][key] = f"{key} omitted: some common image has fewer than {key[5:]} caption(s)"
                continue
            result = paired_ci(a, b, resamples, seed)
            if result["num_images"]:
                metrics[key] = {**result, "label": name, "group": group}
        out["comparisons"].append({"a": runs[0][0], "b": label, "metrics": metrics})
    return out
