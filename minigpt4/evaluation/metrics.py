"""Caption metrics: reference-based scores from pycocoevalcap (BLEU-1..4, ROUGE-L, CIDEr-D: its
``Cider`` scorer is the CIDEr-D variant with clipping and the Gaussian length penalty, sigma 6),
diversity and length statistics. The COCO pipeline's PTB tokenizer needs Java; :func:`tokenize` is a
Java-free approximation (lower case, punctuation dropped).
"""

from __future__ import annotations

import random
import re
import statistics

from minigpt4.common.errors import EvaluationError

_TOKEN = re.compile(r"[a-z0-9]+(?:'[a-z]+)?|[^\sa-z0-9]", re.IGNORECASE)
METRIC_NAMES = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "ROUGE-L", "CIDEr-D")


def tokenize(text: str) -> list[str]:
    """Lower-cased word tokens; punctuation is dropped (as the PTB tokenizer step of the COCO scripts)."""
    return [t for t in _TOKEN.findall(str(text).lower()) if t[0].isalnum()]


def reference_scores(candidates, references: dict):
    """Corpus and per-candidate BLEU-1..4, ROUGE-L and CIDEr-D -> ``(corpus: dict, per_key: dict)``.
    Each candidate has ``key``, ``image_id`` and ``caption``; ``references`` maps image ids to
    items with a ``caption``."""
    try:
        from pycocoevalcap.bleu.bleu import Bleu
        from pycocoevalcap.cider.cider import Cider
        from pycocoevalcap.rouge.rouge import Rouge
    except ImportError as err:
        raise EvaluationError("The caption metrics need pycocoevalcap: pip install -e '.[eval]'.") from err

    gts = {c.key: [" ".join(tokenize(r.caption)) for r in references[c.image_id]] for c in candidates}
    res = {c.key: [" ".join(tokenize(c.caption))] for c in candidates}
    keys = list(gts)
    corpus: dict[str, float] = {}
    per_key: dict[str, dict[str, float]] = {k: {} for k in keys}
    # pycocoevalcap iterates over gts' keys; an empty hypothesis breaks ROUGE-L, so it scores 0 here.
    bleu, bleu_each = Bleu(4).compute_score(gts, res, verbose=0)
    for n in range(4):
        corpus[f"BLEU-{n + 1}"] = float(bleu[n])
        for k, value in zip(gts.keys(), bleu_each[n]):
            per_key[k][f"BLEU-{n + 1}"] = float(value)
    rouge_each = []
    for k in keys:
        if res[k][0].strip():
            rouge_each.append(float(Rouge().calc_score(res[k], gts[k])))
        else:
            rouge_each.append(0.0)
        per_key[k]["ROUGE-L"] = rouge_each[-1]
    corpus["ROUGE-L"] = float(sum(rouge_each) / len(rouge_each))
    cider, cider_each = Cider().compute_score(gts, res)
    corpus["CIDEr-D"] = float(cider)
    for k, value in zip(gts.keys(), cider_each):
        per_key[k]["CIDEr-D"] = float(value)
    return corpus, per_key


def ngrams(tokens: list[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i: i + n]) for i in range(len(tokens) - n + 1)]


def diversity(captions: list[str], image_ids: list[str], self_bleu_sample: int = 500, seed: int = 0) -> dict:
    """distinct-1/2 (unique / total n-grams over all captions), vocabulary size, and self-BLEU-4: each
    caption scored against the captions of the *other* images (on a seeded sample of at most
    ``self_bleu_sample`` captions; lower is more diverse; ``None``, not computed, for a sample of 0
    or fewer than two captioned images)."""
    from pycocoevalcap.bleu.bleu import Bleu

    tokens = [tokenize(c) for c in captions]
    out = {"vocabulary_size": len({t for toks in tokens for t in toks})}
    for n in (1, 2):
        grams = [g for toks in tokens for g in ngrams(toks, n)]
        out[f"distinct-{n}"] = len(set(grams)) / len(grams) if grams else 0.0
    index = [i for i, toks in enumerate(tokens) if toks]
    if self_bleu_sample == 0 or len(set(image_ids[i] for i in index)) < 2:
        out["self-BLEU-4"] = None  # not computed: switched off, or fewer than two captioned images
        out["self_bleu_sample"] = 0
        return out
    sample = sorted(random.Random(seed).sample(index, min(self_bleu_sample, len(index))))
    gts, res = {}, {}
    for i in sample:
        others = [" ".join(tokens[j]) for j in sample if image_ids[j] != image_ids[i]]
        if others:
            gts[str(i)], res[str(i)] = others, [" ".join(tokens[i])]
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    out["self-BLEU-4"] = float(bleu[3])
    out["self_bleu_sample"] = len(gts)
    return out


def length_stats(lengths: list[int]) -> dict:
    if not lengths:
        return {"count": 0}
    return {"count": len(lengths), "mean": statistics.fmean(lengths), "median": statistics.median(lengths),
            "std": statistics.pstdev(lengths), "min": min(lengths), "max": max(lengths)}
