"""Caption evaluation: read generated captions and HIC references, score them, summarise.

Reference-based metrics come from pycocoevalcap (BLEU-1..4, ROUGE-L, CIDEr-D: its ``Cider`` scorer is
the CIDEr-D variant with clipping and the Gaussian length penalty, sigma 6). The COCO pipeline's PTB
tokenizer needs Java; ``tokenize`` is a Java-free approximation (lower case, punctuation dropped).
"""

from __future__ import annotations

import json
import random
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from minigpt4.common.errors import DatasetError, EvaluationError
from minigpt4.datasets.hic_format import read_references

_TOKEN = re.compile(r"[a-z0-9]+(?:'[a-z]+)?|[^\sa-z0-9]", re.IGNORECASE)
METRIC_NAMES = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "ROUGE-L", "CIDEr-D")


def tokenize(text: str) -> list[str]:
    """Lower-cased word tokens; punctuation is dropped (as the PTB tokenizer step of the COCO scripts)."""
    return [t for t in _TOKEN.findall(str(text).lower()) if t[0].isalnum()]


# -- inputs -----------------------------------------------------------------------------------------
@dataclass
class Reference:
    caption: str
    funny_score: float | None = None


@dataclass
class Candidate:
    """One generated caption (one JSONL line)."""

    image_id: str
    caption: str
    image: str = ""
    prompt: str = ""
    caption_index: int = 0
    line: int = 0
    extra: dict = field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{self.image_id}#{self.line}"


def load_references(path) -> dict[str, list[Reference]]:
    """``image_id -> references`` (best ``funny_score`` first), read through
    :func:`minigpt4.datasets.hic_format.read_references`: the ``test.json`` / ``val.json`` of
    ``dataset/prepare_hic.py`` (``{"images": [{"image_id", "captions": [{"caption", "funny_score"}]}]}``),
    its ``selected.jsonl`` (JSON lines), or the ``cc_sbu_align`` layout (``{"annotations": [{"image_id",
    "caption", "funny_score"?}]}``, grouped by ``image_id``). NaN/inf scores are dropped with a warning."""
    try:
        refs = read_references(path)
    except DatasetError as err:
        raise EvaluationError(str(err)) from None
    return {image_id: [Reference(c.caption, c.funny_score) for c in caps] for image_id, caps in refs.items()}


def load_captions(path) -> tuple[list[Candidate], list[dict]]:
    """Generated captions from ``caption.py``'s JSONL -> ``(candidates, error_lines)``."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise EvaluationError(f"Cannot read {path}: {err}.") from err
    candidates, errors = [], []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise EvaluationError(f"{path}, line {number}: not JSON ({err.msg}).") from err
        if not isinstance(row, dict) or "image_id" not in row:
            raise EvaluationError(f"{path}, line {number}: no image_id.")
        if "error" in row:
            errors.append({"image_id": str(row["image_id"]), "image": row.get("image", ""), "error": row["error"]})
            continue
        if not isinstance(row.get("caption"), str):
            raise EvaluationError(f"{path}, line {number}: no caption.")
        candidates.append(Candidate(
            image_id=str(row["image_id"]), caption=row["caption"], image=str(row.get("image", "")),
            prompt=str(row.get("prompt", "")), caption_index=int(row.get("caption_index", 0)), line=number,
            extra={k: row[k] for k in ("settings", "model") if k in row}))
    if not candidates and not errors:
        raise EvaluationError(f"{path} holds no captions (empty file).")
    return candidates, errors


# -- metrics ----------------------------------------------------------------------------------------
def reference_scores(candidates: list[Candidate], references: dict[str, list[Reference]]):
    """Corpus and per-candidate BLEU-1..4, ROUGE-L and CIDEr-D -> ``(corpus: dict, per_key: dict)``."""
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
    ``self_bleu_sample`` captions; lower is more diverse)."""
    from pycocoevalcap.bleu.bleu import Bleu

    tokens = [tokenize(c) for c in captions]
    out = {"vocabulary_size": len({t for toks in tokens for t in toks})}
    for n in (1, 2):
        grams = [g for toks in tokens for g in ngrams(toks, n)]
        out[f"distinct-{n}"] = len(set(grams)) / len(grams) if grams else 0.0
    index = [i for i, toks in enumerate(tokens) if toks]
    if len(set(image_ids[i] for i in index)) < 2:
        out["self-BLEU-4"] = None
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


@dataclass
class EvaluationResult:
    metrics: dict
    per_caption: list[dict]


def evaluate(candidates: list[Candidate], references: dict[str, list[Reference]], errors=(),
             self_bleu_sample: int = 500, strict: bool = False) -> EvaluationResult:
    """Score ``candidates`` against ``references``. Captions whose image has no reference and
    references never captioned are reported in ``metrics["unmatched"]``; ``strict`` makes the first an error."""
    without_refs = sorted({c.image_id for c in candidates if c.image_id not in references})
    matched = [c for c in candidates if c.image_id in references]
    if not matched:
        shown = ", ".join(without_refs[:5]) + (" ..." if len(without_refs) > 5 else "")
        raise EvaluationError(
            f"None of the {len(candidates)} captions has a reference (caption image ids: {shown or 'none'}; "
            f"reference ids look like {', '.join(list(references)[:3])}). Are the captions for this split?")
    if without_refs and strict:
        raise EvaluationError(f"{len(without_refs)} captioned image(s) have no reference: "
                              f"{', '.join(without_refs[:10])}{' ...' if len(without_refs) > 10 else ''}.")
    captioned = {c.image_id for c in matched}
    refs_without_captions = sorted(set(references) - captioned)

    corpus, per_key = reference_scores(matched, references)
    generated_lengths = [len(tokenize(c.caption)) for c in matched]
    reference_lengths = [len(tokenize(r.caption)) for i in sorted(captioned) for r in references[i]]
    metrics = {
        "num_captions": len(matched),
        "num_images": len(captioned),
        "metrics": corpus,
        "diversity": diversity([c.caption for c in matched], [c.image_id for c in matched], self_bleu_sample),
        "length": {"generated": length_stats(generated_lengths), "references": length_stats(reference_lengths)},
        "unmatched": {
            "captions_without_references": len(without_refs),
            "captions_without_references_ids": without_refs,
            "references_without_captions": len(refs_without_captions),
            "references_without_captions_ids": refs_without_captions[:1000],
            "caption_errors": len(errors),
            "caption_error_ids": sorted({e["image_id"] for e in errors}),
        },
        "tokenizer": "lower case, punctuation dropped (Java-free PTB approximation)",
        "metric_implementation": "pycocoevalcap (BLEU corpus-level with closest ref length; CIDEr-D sigma 6)",
    }
    first = matched[0].extra
    if "model" in first:
        metrics["model"] = first["model"]
    if "settings" in first:
        metrics["generation_settings"] = first["settings"]
    per_caption = []
    for c, length in zip(matched, generated_lengths):
        refs = references[c.image_id]
        per_caption.append({
            "image_id": c.image_id, "image": c.image, "prompt": c.prompt, "caption_index": c.caption_index,
            "caption": c.caption, "length": length, **per_key[c.key],
            "references": [{"caption": r.caption, "funny_score": r.funny_score} for r in refs],
        })
    return EvaluationResult(metrics=metrics, per_caption=per_caption)
