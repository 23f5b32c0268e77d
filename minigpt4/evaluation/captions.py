"""Caption evaluation: read generated captions (through :mod:`minigpt4.inference.records`) and the
HIC references (through :mod:`minigpt4.datasets.hic_format`), score them (:mod:`.metrics`), summarise.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field

from minigpt4.common.errors import DatasetError, EvaluationError
from minigpt4.datasets.hic_format import read_references
from minigpt4.evaluation.metrics import METRIC_NAMES, diversity, length_stats, reference_scores, tokenize
from minigpt4.inference.records import read_caption_file

__all__ = ["METRIC_NAMES", "Candidate", "CaptionSet", "EvaluationError", "EvaluationResult", "Reference",
           "as_references", "evaluate", "load_captions", "load_references", "tokenize"]
logger = logging.getLogger(__name__)


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


@dataclass
class CaptionSet:
    """What a captions file holds, once: each (image_id, prompt, caption_index) counted once."""

    candidates: list[Candidate]
    errors: list[dict]  # one per unreadable image: image_id, image, error
    duplicates: Counter = field(default_factory=Counter)  # (image_id, prompt, caption_index) -> extra copies
    torn_line: int | None = None  # an interrupted last line, skipped

    def file_notes(self) -> dict:
        shown = [{"image_id": i, "prompt": p, "caption_index": k, "copies": n + 1}
                 for (i, p, k), n in sorted(self.duplicates.items())[:20]]
        return {"duplicate_lines": sum(self.duplicates.values()), "duplicates": shown,
                "torn_last_line": self.torn_line}


def load_references(path) -> dict[str, list[Reference]]:
    """``image_id -> references`` (best ``funny_score`` first), read through
    :func:`minigpt4.datasets.hic_format.read_references`: the ``test.json`` / ``val.json`` of
    ``dataset/prepare_hic.py`` (``{"images": [{"image_id", "captions": [{"caption", "funny_score"}]}]}``),
    its ``selected.jsonl`` (JSON lines), or the ``cc_sbu_align`` layout (``{"annotations": [{"image_id",
    "caption", "funny_score"?}]}``, grouped by ``image_id``). NaN/inf scores are dropped with a warning."""
    try:
        return as_references(read_references(path))
    except DatasetError as err:
        raise EvaluationError(str(err)) from None


def as_references(captions: dict[str, list]) -> dict[str, list[Reference]]:
    """``image_id -> [Reference]`` of already read human captions (``caption``, ``funny_score``)."""
    return {image_id: [Reference(c.caption, c.funny_score) for c in caps] for image_id, caps in captions.items()}


def load_captions(path, strict: bool = False) -> CaptionSet:
    """Generated captions from ``caption.py``'s JSONL. A repeated (image_id, prompt, caption_index)
    counts once (reported); a torn last line (an interrupted write) is skipped with a warning.
    ``strict`` makes either an error."""
    captions = read_caption_file(path)
    result = CaptionSet([], [], torn_line=captions.torn)
    if captions.torn is not None:
        if strict:
            raise EvaluationError(f"{path}, line {captions.torn}: not JSON (an interrupted write?); "
                                  "--strict refuses it. Rerun caption.py with the same --out to complete it.")
        logger.warning("%s, line %d: not JSON (an interrupted write?); skipped.", path, captions.torn)
    seen, errored = set(), set()
    for line in captions.lines:
        record = line.record
        if record.is_error:
            if record.image_id not in errored:
                errored.add(record.image_id)
                result.errors.append({"image_id": record.image_id, "image": record.image, "error": record.error})
            continue
        key = (record.image_id, record.prompt, record.caption_index)
        if key in seen:
            result.duplicates[key] += 1
            continue
        seen.add(key)
        result.candidates.append(Candidate(
            image_id=record.image_id, caption=record.caption, image=record.image, prompt=record.prompt,
            caption_index=record.caption_index, line=line.number,
            extra={k: v for k, v in (("settings", record.settings), ("model", record.model), ("scorer", record.scorer),
                                     ("chosen", record.chosen), ("humour_score", record.humour_score))
                   if v is not None}))
    if result.duplicates:
        (image_id, prompt, index), _ = next(iter(result.duplicates.items()))
        message = (f"{path} repeats {sum(result.duplicates.values())} caption line(s) (same image_id, prompt and "
                   f"caption_index), e.g. {image_id!r} caption {index} for {prompt!r}")
        if strict:
            raise EvaluationError(message + "; --strict refuses them.")
        logger.warning("%s; each is counted once.", message)
    if not result.candidates and not result.errors:
        raise EvaluationError(f"{path} holds no captions (empty file).")
    return result


# -- scoring ----------------------------------------------------------------------------------------
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
