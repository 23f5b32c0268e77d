"""Humour numbers of generated captions relative to the image's own human captions, all scored by the
same humour scorer (:class:`minigpt4.humour.HumourScorer`).

Per generated caption ``g`` of an image with human TEST captions ``h_1..h_m`` (best ``funny_score``
first) and scorer scores ``s``:

* ``percentile`` -- the share of the image's human captions scoring below ``g`` (a tie counts half);
* ``beats_top`` -- 1 when ``s(g) > s(h_1)`` (the image's top human caption by funny_score), 0.5 on a
  tie, 0 otherwise; ``beats_median`` the same against the median human caption ``h_{floor(m/2)+1}``
  (the middle one by funny_score; of two middles, the less funny).

Per image (its ``n`` generated captions, e.g. ``caption.py --num-captions n``): the mean of each, and
the unbiased pass@k for k <= n, ``1 - C(n - c, k) / C(n, k)`` with ``c`` the number of its captions
that strictly beat its top human caption. Each is then averaged over images with a 95% bootstrap CI
over images (:mod:`.bootstrap`); a k larger than some image's ``n`` is left out and said so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from minigpt4.evaluation.bootstrap import mean_ci
from minigpt4.humour.metrics import half_win

PASS_KS = (1, 3, 5)


def percentile(score: float, human_scores: list[float]) -> float:
    """The share of ``human_scores`` below ``score``, ties counting half."""
    arr = np.asarray(human_scores, dtype=float)
    return float(((arr < score).sum() + 0.5 * (arr == score).sum()) / len(arr))


def median_index(num_human: int) -> int:
    """The position (best first) of an image's median human caption."""
    return num_human // 2


def pass_at_k(n: int, c: int, k: int) -> float:
    """The unbiased pass@k: the chance that k of n captions drawn without replacement hold one of the c good ones."""
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} captions; got {n}")
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


@dataclass
class HumanCaption:
    caption: str
    funny_score: float | None
    score: float  # the humour scorer's


def caption_numbers(score: float, human: list[HumanCaption]) -> dict:
    """``percentile``, ``beats_top``, ``beats_median`` of one generated caption (``human`` best first)."""
    scores = [h.score for h in human]
    return {"percentile": percentile(score, scores), "beats_top": half_win(score, human[0].score),
            "beats_median": half_win(score, human[median_index(len(human))].score)}


def image_numbers(scores: list[float], human: list[HumanCaption], ks=PASS_KS) -> dict:
    """One image's means over its generated captions and its pass@k (k <= len(scores))."""
    rows = [caption_numbers(s, human) for s in scores]
    out = {key: float(np.mean([r[key] for r in rows])) for key in ("percentile", "beats_top", "beats_median")}
    good = sum(s > human[0].score for s in scores)
    for k in ks:
        if k <= len(scores):
            out[f"pass@{k}"] = pass_at_k(len(scores), good, k)
    out["num_captions"], out["num_beating_top"] = len(scores), int(good)
    return out


PER_IMAGE_HUMOUR = (("percentile", "human percentile (share of the image's human captions scored below; ties half)"),
                    ("beats_top", "win rate against the image's top human caption"),
                    ("beats_median", "win rate against the image's median human caption"))


def humour_summary(per_image: dict[str, dict], resamples: int, seed: int, ks=PASS_KS) -> dict:
    """Averages over images with CIs; ``omitted_k`` names each k some image has too few captions for."""
    counts = [row["num_captions"] for row in per_image.values()]
    out = {"num_images": len(per_image), "num_captions": int(sum(counts)),
           "captions_per_image": {"min": min(counts), "max": max(counts)} if counts else None}
    for key, label in PER_IMAGE_HUMOUR:
        out[key] = {**mean_ci([row[key] for row in per_image.values()], resamples, seed), "label": label}
    out["pass_at_k"], out["omitted_k"] = {}, {}
    for k in ks:
        if counts and min(counts) >= k:
            out["pass_at_k"][str(k)] = mean_ci([row[f"pass@{k}"] for row in per_image.values()], resamples, seed)
        else:
            out["omitted_k"][str(k)] = (f"pass@{k} omitted: some images have only {min(counts) if counts else 0} "
                                        f"caption(s) (caption.py --num-captions {k} or more)")
    return out
