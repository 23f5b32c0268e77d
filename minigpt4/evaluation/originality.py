"""Diversity and originality of generated captions beyond corpus distinct-n and self-BLEU
(:func:`minigpt4.evaluation.metrics.diversity`):

* per-image distinct-1/2 -- unique / total n-grams over the image's n generated captions;
* repeated 3-gram -- whether a caption repeats one of its own word 3-grams ("the cat the cat the cat");
* top caption share -- the share of all captions taken by the single most frequent (normalised) caption;
* copy rate -- a caption that copies a TRAINING caption of the prepared folder (``filter_cap.json``,
  what the stage-2 finetune learns from), exactly (after
  :func:`normalise`: lower case, punctuation dropped, spaces collapsed) or nearly (the Jaccard
  similarity of the two normalised captions' character 5-gram sets is at least 0.8; an exact copy is
  also a near copy).

Near copies are found exactly, not approximately: a training caption is a candidate only if its size
allows Jaccard >= 0.8 and it shares one of the "prefix" 5-grams (rarest first) that any such caption
must share; the candidates' overlaps come from one sparse matrix product.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections import Counter, defaultdict
from typing import Iterable

import numpy as np
from scipy.sparse import csr_matrix

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


def _prefix_length(size: int, threshold: float) -> int:
    # |A & B| >= t * |A| is needed for J >= t, so B must hold one of any |A| - ceil(t|A|) + 1 grams of A
    return size - math.ceil(threshold * size - 1e-9) + 1


class CopyIndex:
    """The training captions, indexed for exact and near-copy look-ups: a sparse caption x 5-gram
    matrix (for the overlaps) and, per 5-gram, the captions whose prefix holds it, by size."""

    def __init__(self, captions: Iterable[str], threshold: float = NEAR_JACCARD):
        self.threshold = threshold
        texts = sorted({normalise(c) for c in captions} - {""})
        self.exact = set(texts)
        grams = [char_grams(t) for t in texts]
        frequency = Counter(g for caption in grams for g in caption)
        # one global order of the 5-grams, rarest first; a gram's rank is also its matrix column
        self.column = {g: k for k, g in enumerate(sorted(frequency, key=lambda g: (frequency[g], g)))}
        rows = np.repeat(np.arange(len(grams)), [len(g) for g in grams])
        cols = np.fromiter((self.column[g] for caption in grams for g in caption), dtype=np.int64, count=len(rows))
        self.matrix = csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, cols)),
                                 shape=(len(grams), len(self.column)))
        self.sizes = np.array([len(g) for g in grams], dtype=np.int64)
        postings: dict[str, list[int]] = defaultdict(list)
        for i in np.argsort(self.sizes, kind="stable"):  # each posting list ordered by size
            ordered = sorted(grams[i], key=self.column.__getitem__)
            for gram in ordered[:_prefix_length(len(ordered), self.threshold)]:
                postings[gram].append(int(i))
        self.postings = {g: (self.sizes[ids], np.array(ids, dtype=np.int64)) for g, ids in postings.items()}

    def __len__(self) -> int:
        return len(self.sizes)

    def _prefix(self, grams: frozenset) -> list[str]:
        """A caption's prefix in the global order (grams no training caption has come first, in any order)."""
        ordered = sorted(grams, key=lambda g: self.column.get(g, -1))
        return ordered[:_prefix_length(len(ordered), self.threshold)]

    def best_match(self, caption: str) -> float:
        """The highest 5-gram Jaccard of ``caption`` with a training caption at or above the threshold (else 0)."""
        text = normalise(caption)
        if text in self.exact:
            return 1.0
        grams = char_grams(text)
        if not grams:
            return 0.0
        low = math.ceil(self.threshold * len(grams) - 1e-9)  # the sizes J >= t allows
        high = math.floor(len(grams) / self.threshold + 1e-9)
        found = []
        for gram in self._prefix(grams):
            if gram in self.postings:
                sizes, ids = self.postings[gram]
                found.append(ids[np.searchsorted(sizes, low, "left"):np.searchsorted(sizes, high, "right")])
        ids = np.unique(np.concatenate(found)) if found else np.empty(0, dtype=np.int64)
        if not len(ids):
            return 0.0
        known = np.array([self.column[g] for g in grams if g in self.column], dtype=np.int64)
        query = csr_matrix((np.ones(len(known), dtype=np.float32), (known, np.zeros(len(known), dtype=np.int64))),
                           shape=(len(self.column), 1))
        shared = np.asarray((self.matrix[ids] @ query).todense()).ravel()
        best = float((shared / (len(grams) + self.sizes[ids] - shared)).max())
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
    """One image's per-image values: distinct-1/2 over its captions (NaN for a single caption), and
    the share of its captions flagged (per caption: ``repeated_trigram``, ``copy_exact``, ``copy_near``)."""
    several = len(captions) > 1
    return {"distinct-1": distinct_n(captions, 1) if several else math.nan,
            "distinct-2": distinct_n(captions, 2) if several else math.nan,
            **{key: sum(f[key] for f in flags) / len(flags) for key in ("repeated_trigram", "copy_exact", "copy_near")}}


def top_caption_share(captions: list[str]) -> dict:
    counts = Counter(normalise(c) for c in captions)
    if not counts:
        return {"share": None, "caption": None, "count": 0}
    caption, count = counts.most_common(1)[0]
    return {"share": count / len(captions), "caption": caption, "count": count}
