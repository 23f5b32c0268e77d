"""Caption pairs from the prepared Oxford HIC folder: which caption of an image is the funnier one.

Raw ``funny_score`` counts depend on how popular a picture was, so captions are compared only within
one image: a pair (winner, loser) of captions of the SAME image counts when

    log1p(s_win) - log1p(s_lose) >= min_log_margin   (default log 2: at least about twice the votes)
    s_win >= min_winner_score                        (default 1: the winner got a vote at all)

At most ``max_pairs_per_image`` pairs are kept per image (a seeded choice per image, so an image's
pairs do not change when other images come or go). ``pair_weight: margin`` weighs a pair by its log
margin instead of 1. Hard negatives (``mismatch_fraction`` of the within-image pair count): an image's
best caption must beat the best caption of another image of the same split, for that image.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from dataclasses import dataclass
from typing import Iterable, Literal

from minigpt4.common.errors import DatasetError
from minigpt4.datasets.hic_format import SelectedImage

WITHIN, MISMATCH = "within", "mismatch"
# pairwise accuracy is also reported per log-margin bucket (about 2-4x, 4-8x, 8x+ the votes)
MARGIN_BUCKETS = ((math.log(2), math.log(4), "2-4x"), (math.log(4), math.log(8), "4-8x"), (math.log(8), math.inf, "8x+"))


@dataclass(frozen=True)
class Pair:
    image_id: str  # the image both captions are scored with
    win: str
    lose: str
    weight: float
    margin: float  # log1p(s_win) - log1p(s_lose); nan for a mismatch pair
    kind: str = WITHIN  # or MISMATCH: ``lose`` is the best caption of ``lose_image_id``
    lose_image_id: str = ""


@dataclass
class PairOptions:
    min_log_margin: float = math.log(2)
    min_winner_score: float = 1.0
    max_pairs_per_image: int = 16  # 0: every pair
    pair_weight: Literal["uniform", "margin"] = "uniform"
    mismatch_fraction: float = 0.1
    seed: int = 0


def log_margin(s_win: float, s_lose: float) -> float:
    return math.log1p(s_win) - math.log1p(s_lose)


def margin_bucket(margin: float) -> str | None:
    for low, high, name in MARGIN_BUCKETS:
        if low <= margin < high:
            return name
    return None


def within_image_pairs(image: SelectedImage, options: PairOptions) -> list[Pair]:
    """Every pair of the image's captions that passes the margin, best winner first."""
    scored = [(c.caption, float(c.funny_score)) for c in image.captions if c.funny_score is not None]
    pairs = []
    for i, (win, s_win) in enumerate(scored):
        if s_win < options.min_winner_score:
            continue
        for lose, s_lose in scored[i + 1:]:
            margin = log_margin(s_win, s_lose)
            if margin >= options.min_log_margin and win != lose:
                weight = margin if options.pair_weight == "margin" else 1.0
                pairs.append(Pair(image.image_id, win, lose, weight, margin))
    return pairs


def _capped(pairs: list[Pair], image_id: str, options: PairOptions) -> list[Pair]:
    cap = options.max_pairs_per_image
    if not cap or len(pairs) <= cap:
        return pairs
    keep = sorted(random.Random(f"{options.seed}:{image_id}").sample(range(len(pairs)), cap))
    return [pairs[i] for i in keep]


def mismatch_pairs(images: list[SelectedImage], count: int, options: PairOptions) -> list[Pair]:
    """``count`` pairs: an image's best caption beats another image's best caption (seeded)."""
    best = [(img.image_id, img.captions[0].caption) for img in images
            if img.captions and img.captions[0].funny_score is not None
            and img.captions[0].funny_score >= options.min_winner_score]
    if len(best) < 2 or count <= 0:
        return []
    rng = random.Random(f"{options.seed}:mismatch")
    pairs = []
    for _ in range(count):
        (own, win), (other, lose) = rng.sample(best, 2)
        if win != lose:
            pairs.append(Pair(own, win, lose, 1.0, math.nan, MISMATCH, other))
    return pairs


@dataclass
class PairSet:
    pairs: list[Pair]
    counts: Counter  # images, captions, images_with_pairs, within_pairs, mismatch_pairs


def make_pairs(images: Iterable[SelectedImage], options: PairOptions, where: str = "the prepared folder") -> PairSet:
    """The training/selection/evaluation pairs of ``images`` (one split); deterministic for a seed.
    No within-image pair at all is a :class:`DatasetError` saying what was seen and what to relax."""
    images = list(images)
    counts = Counter(images=len(images), captions=sum(len(img.captions) for img in images))
    pairs = []
    for image in images:
        mine = _capped(within_image_pairs(image, options), image.image_id, options)
        counts["images_with_pairs"] += bool(mine)
        pairs += mine
    counts["within_pairs"] = len(pairs)
    if not pairs:
        raise DatasetError(
            f"{where}: no caption pair passes the margin: saw {counts['captions']} captions of {counts['images']} "
            f"images ({sum(len(i.captions) > 1 for i in images)} with 2+ captions). Pairs need "
            f"log1p(s_win) - log1p(s_lose) >= min_log_margin ({options.min_log_margin:.3g}) and s_win >= "
            f"min_winner_score ({options.min_winner_score:g}): relax min_log_margin or min_winner_score."
        )
    extra = mismatch_pairs(images, round(options.mismatch_fraction * len(pairs)), options)
    counts["mismatch_pairs"] = len(extra)
    return PairSet(pairs + extra, counts)
