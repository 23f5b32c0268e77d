"""The numbers of the scorer card, from scored rows alone (the ``--scores-out`` lines), so anyone can
recompute them.

A row is ``{"scorer": "main"|"baseline", "kind": "human"|"mismatch"|"shuffled", "image_id" (the image
it was scored with), "caption_image_id", "caption_index", "caption", "funny_score", "score"}``.

On the human captions (``kind: human``) of the test images that have at least one pair:

* pairwise accuracy -- the within-image pairs of :mod:`minigpt4.datasets.hic_pairs` (the margin rule), the
  funnier caption scored higher (a tie counts half), pooled over pairs; also per margin bucket;
* Kendall tau-b between funny_score and score (images whose captions do not all share one funny_score;
  a constant scorer counts 0);
* NDCG over the image's captions, gain ``log1p(funny_score)``, tied scores sharing their positions'
  mean discount (so ties neither help nor hurt);
* top-1 accuracy -- the image's highest-scored caption is one of its best human captions (ties: the
  share of the tied captions that are);
* mismatch accuracy -- the image's best caption scored above a high-scoring caption of another test
  image (``kind: mismatch``), both with this image.

Each comes with a 95% percentile bootstrap CI over images (``bootstrap`` resamples, seeded).
"""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np
from scipy.stats import kendalltau

from minigpt4.datasets.hic_pairs import MARGIN_BUCKETS, PairOptions, log_margin, margin_bucket


def half_win(a: float, b: float) -> float:
    """1 when ``a > b``, 0.5 on a tie, 0 otherwise."""
    return 1.0 if a > b else 0.5 if a == b else 0.0


def image_pairs(captions: list[dict], options: PairOptions) -> list[tuple[dict, dict, float]]:
    """(winner, loser, log margin) rows of one image under the margin rule."""
    out = []
    for win in captions:
        for lose in captions:
            if win is lose or win["funny_score"] is None or lose["funny_score"] is None:
                continue
            margin = log_margin(win["funny_score"], lose["funny_score"])
            if win["funny_score"] >= options.min_winner_score and margin >= options.min_log_margin:
                out.append((win, lose, margin))
    return out


def tie_aware_ndcg(gains: list[float], scores: list[float]) -> float:
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    discounts = [1.0 / math.log2(rank + 2) for rank in range(len(scores))]
    dcg, rank = 0.0, 0
    while rank < len(order):
        group = [i for i in order[rank:] if scores[i] == scores[order[rank]]]
        mean_discount = sum(discounts[rank:rank + len(group)]) / len(group)
        dcg += mean_discount * sum(gains[i] for i in group)
        rank += len(group)
    ideal = sum(g * d for g, d in zip(sorted(gains, reverse=True), discounts))
    return dcg / ideal if ideal > 0 else math.nan


def per_image(captions: list[dict], options: PairOptions) -> dict:
    """Everything the card needs from one image's scored human captions."""
    pairs = image_pairs(captions, options)
    stats = {"pairs": len(pairs), "correct": sum(half_win(w["score"], l["score"]) for w, l, _ in pairs),
             "longer": sum(half_win(len(w["caption"].split()), len(l["caption"].split())) for w, l, _ in pairs)}
    for _, _, name in MARGIN_BUCKETS:
        mine = [(w, l) for w, l, m in pairs if margin_bucket(m) == name]
        stats[f"pairs_{name}"] = len(mine)
        stats[f"correct_{name}"] = sum(half_win(w["score"], l["score"]) for w, l in mine)
    scored = [c for c in captions if c["funny_score"] is not None]
    funny = [float(c["funny_score"]) for c in scored]
    scores = [float(c["score"]) for c in scored]
    ranked = len(scored) > 1 and len(set(funny)) > 1
    stats["kendall_tau"] = math.nan
    if ranked:
        stats["kendall_tau"] = 0.0 if len(set(scores)) == 1 else float(kendalltau(funny, scores).statistic)
    stats["ndcg"] = tie_aware_ndcg([math.log1p(f) for f in funny], scores) if ranked else math.nan
    if ranked:
        top = [i for i, s in enumerate(scores) if s == max(scores)]
        stats["top1"] = sum(funny[i] == max(funny) for i in top) / len(top)
    else:
        stats["top1"] = math.nan
    return stats


def bootstrap_ci(numerator: np.ndarray, denominator: np.ndarray | None, resamples: int, seed: int) -> list[float]:
    """95% percentile CI over images of ``sum(num)/sum(den)`` (``den`` None: the mean of ``num``)."""
    n = len(numerator)
    if n == 0:
        return [math.nan, math.nan]
    idx = np.random.default_rng(seed).integers(0, n, size=(resamples, n))
    if denominator is None:
        values = numerator[idx].mean(axis=1)
    else:
        den = denominator[idx].sum(axis=1)
        values = np.where(den > 0, numerator[idx].sum(axis=1) / np.maximum(den, 1e-12), np.nan)
    low, high = np.nanpercentile(values, [2.5, 97.5])
    return [float(low), float(high)]


def _mean_with_ci(values: list[float], resamples: int, seed: int) -> tuple[float, list[float], int]:
    arr = np.array([v for v in values if not math.isnan(v)], dtype=float)
    if not len(arr):
        return math.nan, [math.nan, math.nan], 0
    return float(arr.mean()), bootstrap_ci(arr, None, resamples, seed), len(arr)


def group_rows(rows: list[dict], scorer: str, kind: str) -> dict[str, list[dict]]:
    grouped = defaultdict(list)
    for row in rows:
        if row["scorer"] == scorer and row["kind"] == kind:
            grouped[row["image_id"]].append(row)
    return {k: sorted(v, key=lambda r: r["caption_index"]) for k, v in sorted(grouped.items())}


def ranking_numbers(by_image: dict[str, list[dict]], options: PairOptions, resamples: int, seed: int) -> dict:
    """Pairwise accuracy (overall, per margin bucket, with CIs), Kendall tau, NDCG and top-1 of one scorer."""
    stats = [per_image(caps, options) for caps in by_image.values()]
    stats = [s for s in stats if s["pairs"]] or stats
    pairs = np.array([s["pairs"] for s in stats], dtype=float)
    correct = np.array([s["correct"] for s in stats], dtype=float)
    total = pairs.sum()
    out = {"pairwise_accuracy": float(correct.sum() / total) if total else math.nan,
           "ci95": bootstrap_ci(correct, pairs, resamples, seed), "num_pairs": int(total),
           "num_images": int((pairs > 0).sum()), "by_margin": {}}
    for _, _, name in MARGIN_BUCKETS:
        n = np.array([s[f"pairs_{name}"] for s in stats], dtype=float)
        c = np.array([s[f"correct_{name}"] for s in stats], dtype=float)
        out["by_margin"][name] = {"pairwise_accuracy": float(c.sum() / n.sum()) if n.sum() else math.nan,
                                  "ci95": bootstrap_ci(c, n, resamples, seed), "num_pairs": int(n.sum())}
    for key, name in (("kendall_tau", "kendall_tau"), ("ndcg", "ndcg"), ("top1", "top1_accuracy")):
        value, ci, count = _mean_with_ci([s[key] for s in stats], resamples, seed)
        out[name], out[f"{name}_ci95"], out[f"{name}_num_images"] = value, ci, count
    longer = np.array([s["longer"] for s in stats], dtype=float)
    longer_acc = float(longer.sum() / total) if total else math.nan
    rule = "longer wins" if longer_acc >= 0.5 else "shorter wins"
    chosen = longer if longer_acc >= 0.5 else pairs - longer
    out["_length"] = {"pairwise_accuracy": max(longer_acc, 1 - longer_acc), "rule": rule,
                      "longer_wins": longer_acc, "ci95": bootstrap_ci(chosen, pairs, resamples, seed)}
    return out


def mismatch_numbers(human: dict[str, list[dict]], mismatch: dict[str, list[dict]], resamples: int, seed: int) -> dict:
    """Own best caption vs another image's high-scoring caption, both scored with the image."""
    values = []
    for image_id, rows in mismatch.items():
        best = human.get(image_id, [])
        best = [r for r in best if r["caption_index"] == 0]
        if best:
            values += [half_win(best[0]["score"], r["score"]) for r in rows]
    value, ci, count = _mean_with_ci(values, resamples, seed)
    return {"mismatch_accuracy": value, "mismatch_accuracy_ci95": ci, "mismatch_pairs": count}
