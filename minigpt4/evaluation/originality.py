"""Diversity and originality of generated captions beyond corpus distinct-n and self-BLEU
(:func:`minigpt4.evaluation.metrics.diversity`):

* per-image distinct-1/2 -- unique / total n-grams over the image's n generated captions;
* repeated 3-gram -- whether a caption repeats one of its own word 3-grams ("the cat the cat the cat");
* top caption share -- the share of all captions taken by the single most frequent (normalised) caption;
* copy rate -- a caption that copies a TRAINING caption of the prepared folder, exactly (after
  :func:`normalise`: lower case, punctuation dropped, spaces collapsed) or nearly (the Jaccard
  similarity of the two normalised captions' character 5-gram sets is at least 0.8; an exact copy is
  also a near copy).

Near copies are found exactly, not approximately: a training caption is a candidate only if it shares
one of the "prefix" 5-grams (rarest first) that any caption with Jaccard >= 0.8 must share, and the
Jaccard of each candidate is then computed.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections import Counter, defaultdict
from typing import Iterable

from minigpt4.evaluation.metrics import ngrams, tokenize

NEAR_JACCARD = 0.8
CHAR_N = 5
_PUNCT = re.compile(r"[^\w\s]|_")
_SPACES = re.compile(r"\s+")


def normalise(caption: str) -> str:
    """Lower case, punctuation dropped, runs of white space as one space, trimmed."""
    text = unicodedata.normalize("NFKC", str(caption)).lower()
    return _SPACES.sub(" ", _PUNCT.sub(" ", text)).strip()


def char_grams(text: str, n: int = CHAR_N) -> frozenset[str]:
    """The set of character n-grams of a normalised caption (a shorter one is its own single gram)."""
    if len(text) <= n:
        return frozenset([text]) if text else frozenset()
    return frozenset(text[i:i + n] for i in range(len(text) - n + 1))


def jaccard(a: frozenset, b: frozenset) -> float:
    union = len(a | b)
    return len(a & b) / union if union else 1.0


def _prefix_length(size: int, threshold: float) -> int:
    # |A & B| >= t * |A| is needed for J >= t, so B must hold one of any |A| - ceil(t|A|) + 1 grams of A
    return size - math.ceil(threshold * size - 1e-9) + 1


class CopyIndex:
    """The training captions, indexed for exact and near-copy look-ups."""

    def __init__(self, captions: Iterable[str], threshold: float = NEAR_JACCARD):
        self.threshold = threshold
        texts = sorted({normalise(c) for c in captions} - {""})
        self.exact = set(texts)
        self.grams = [char_grams(t) for t in texts]
        self.frequency = Counter(g for grams in self.grams for g in grams)
        self.postings: dict[str, list[int]] = defaultdict(list)
        for i, grams in enumerate(self.grams):
            for gram in self._prefix(grams):
                self.postings[gram].append(i)

    def __len__(self) -> int:
        return len(self.grams)

    def _prefix(self, grams: frozenset) -> list[str]:
        ordered = sorted(grams, key=lambda g: (self.frequency.get(g, 0), g))  # one global order: rarest first
        return ordered[:_prefix_length(len(ordered), self.threshold)]

    def best_match(self, caption: str) -> float:
        """The highest 5-gram Jaccard of ``caption`` with a training caption at or above the threshold (else 0)."""
        text = normalise(caption)
        if text in self.exact:
            return 1.0
        grams = char_grams(text)
        if not grams:
            return 0.0
        low, high = self.threshold * len(grams), len(grams) / self.threshold  # sizes J >= t allows
        candidates = {i for gram in self._prefix(grams) for i in self.postings.get(gram, ())}
        best = 0.0
        for i in candidates:
            if low - 1e-9 <= len(self.grams[i]) <= high + 1e-9:
                best = max(best, jaccard(grams, self.grams[i]))
        return best if best >= self.threshold else 0.0

    def copy_flags(self, caption: str) -> dict:
        """``{"copy_exact": 0|1, "copy_near": 0|1, "copy_jaccard": best Jaccard >= threshold or 0}``."""
        best = self.best_match(caption)
        return {"copy_exact": float(normalise(caption) in self.exact), "copy_near": float(best >= self.threshold),
                "copy_jaccard": best}


def has_repeated_trigram(caption: str) -> bool:
    grams = ngrams(tokenize(caption), 3)
    return len(grams) != len(set(grams))


def distinct_n(captions: list[str], n: int) -> float:
    """Unique / total word n-grams over ``captions`` (NaN when they hold none)."""
    grams = [g for c in captions for g in ngrams(tokenize(c), n)]
    return len(set(grams)) / len(grams) if grams else math.nan


def image_originality(captions: list[str], flags: list[dict]) -> dict:
    """One image's per-image values: distinct-1/2 over its captions (NaN for a single caption), the
    share of its captions with a repeated 3-gram, and its exact and near copy rates."""
    several = len(captions) > 1
    return {"distinct-1": distinct_n(captions, 1) if several else math.nan,
            "distinct-2": distinct_n(captions, 2) if several else math.nan,
            "repeated_trigram": sum(has_repeated_trigram(c) for c in captions) / len(captions),
            "copy_exact": sum(f["copy_exact"] for f in flags) / len(flags),
            "copy_near": sum(f["copy_near"] for f in flags) / len(flags)}


def top_caption_share(captions: list[str]) -> dict:
    counts = Counter(normalise(c) for c in captions)
    if not counts:
        return {"share": None, "caption": None, "count": 0}
    caption, count = counts.most_common(1)[0]
    return {"share": count / len(captions), "caption": caption, "count": count}
