"""One ``evaluate.py`` run over one or several captions files: reference overlap (always), and with
``--data-dir`` the originality block, with ``--scorer-cfg`` also the humour and grounding blocks
(:mod:`.humour_eval`); several files add the paired comparison (:mod:`.paired`).

Everything is read and checked first (captions files, the prepared folder, the scorer), then
computed, and only then written (:mod:`.humour_report`), so a bad input leaves no report behind.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

from minigpt4.common.errors import EvaluationError
from minigpt4.evaluation.captions import CaptionSet, EvaluationResult, evaluate, load_captions
from minigpt4.evaluation.humour_eval import (
    HumourEvaluator,
    TestSplit,
    check_unique,
    humour_metrics,
    originality_block,
)
from minigpt4.evaluation.originality import CopyIndex
from minigpt4.humour.scorer import file_sha256

logger = logging.getLogger(__name__)
OVERLAP_LABEL = "reference overlap (not a humour measure)"
OVERLAP_KEYS = ("BLEU-4", "ROUGE-L", "CIDEr-D")


@dataclass
class RunResult:
    """One captions file, evaluated: ``result`` is the report's (metrics, per-image overlap rows);
    ``rows`` the ``per_caption.jsonl`` lines; ``per_image`` every per-image metric (for pairing);
    ``human`` the scored human captions of its test images (``human_captions.jsonl``)."""

    label: str
    source: str
    result: EvaluationResult
    rows: list[dict] = field(default_factory=list)
    per_image: dict[str, dict] = field(default_factory=dict)
    human: dict[str, list] = field(default_factory=dict)  # image_id -> [{caption, funny_score, humour_score}]


def read_captions(path: str, strict: bool, with_data_dir: bool) -> CaptionSet:
    captions = load_captions(path, strict=strict)
    if not captions.candidates:
        raise EvaluationError(f"{path} holds only error lines ({len(captions.errors)} unreadable images): "
                              "nothing to evaluate.")
    if with_data_dir:
        if captions.duplicates:
            (image_id, _, index), _ = sorted(captions.duplicates.items())[0]
            raise EvaluationError(f"{path} repeats {sum(captions.duplicates.values())} caption line(s), e.g. "
                                  f"{image_id} #{index}: each (image_id, caption_index) may appear once. Remove the "
                                  "repeated lines.")
        check_unique(captions.candidates, path)
    return captions


def _scorer_identity(info: dict) -> tuple:
    """What makes two scorers the same: the head checkpoint's sha256 (an untrained head: its config)."""
    if info.get("ckpt_sha256"):
        return (info["ckpt_sha256"],)
    return ("untrained", info.get("cfg"), info.get("model_type"))


def self_evaluation_warning(captions: CaptionSet, scorer_info: dict) -> str | None:
    """A warning when the captions were reranked by the scorer checkpoint that now evaluates them."""
    used = {_scorer_identity(c.extra["scorer"]) for c in captions.candidates if isinstance(c.extra.get("scorer"), dict)}
    if _scorer_identity(scorer_info) not in used:
        return None
    return (f"These captions were reranked (caption.py --rerank-cfg) by the same scorer checkpoint (sha256 "
            f"{scorer_info.get('ckpt_sha256') or 'none: an untrained head'}) that evaluates them: their humour numbers "
            "are inflated by construction. The fair check is a second scorer trained on disjoint train images, or a "
            "human study (evaluate.py --human-study).")


def _per_image_overlap(result: EvaluationResult) -> dict[str, dict]:
    sums: dict[str, dict] = {}
    for row in result.per_caption:
        entry = sums.setdefault(row["image_id"], {k: [] for k in OVERLAP_KEYS})
        for key in OVERLAP_KEYS:
            entry[key].append(row[key])
    return {i: {k: sum(v) / len(v) for k, v in entry.items()} for i, entry in sums.items()}


def evaluate_run(label: str, source: str, captions: CaptionSet, references: dict, split: TestSplit | None,
                 evaluator: HumourEvaluator | None, copy_index: CopyIndex | None, resamples: int, seed: int,
                 self_bleu_sample: int = 500, strict: bool = False) -> RunResult:
    if split is not None:
        test, outside = split.restrict(captions.candidates)
        if not test:
            shown = ", ".join(outside[:5]) + (" ..." if len(outside) > 5 else "")
            raise EvaluationError(f"None of the images captioned in {source} is a test image of {split.folder} with a "
                                  f"file (captioned: {shown}); caption the test split (its images are listed in "
                                  f"{split.folder / 'test.json'}).")
    result = evaluate(captions.candidates, references, captions.errors, self_bleu_sample=self_bleu_sample,
                      strict=strict)
    metrics = result.metrics
    metrics["captions_file"] = captions.file_notes()
    metrics["reference_overlap_label"] = OVERLAP_LABEL
    metrics["inputs"] = {"captions": {"path": str(source), "sha256": file_sha256(source)}}
    metrics.setdefault("warnings", [])
    run = RunResult(label, source, result, per_image=_per_image_overlap(result))
    if split is None:
        return run
    metrics["inputs"]["data_dir"] = {"path": str(split.folder), **split.sha256}
    metrics["test_split"] = {"captioned_test_images": len({c.image_id for c in test}),
                             "test_images": len(split.images) + len(split.without_file),
                             "not_in_test_split": len(outside), "not_in_test_split_ids": outside[:1000],
                             "test_images_without_file": len(split.without_file),
                             "test_images_without_file_ids": split.without_file[:1000]}
    if outside:
        logger.warning("%s: %d captioned image(s) are not test images of %s and are left out of the humour "
                       "numbers: %s", source, len(outside), split.folder, ", ".join(outside[:10]))
    summary, originality, flags = originality_block(test, copy_index, resamples, seed)
    metrics["originality"] = summary
    if evaluator is not None:
        per_image, rows = evaluator.evaluate(test)
        metrics.update(humour_metrics(evaluator, per_image, resamples))
        warning = self_evaluation_warning(captions, evaluator.scorer.info)
        if warning:
            metrics["warnings"].insert(0, warning)
            logger.warning(warning)
        run.human = {i: [{"caption": h.caption, "funny_score": h.funny_score, "humour_score": h.score,
                          "similarity": sim, "closer_to_own_image": closer}
                         for h, sim, closer in zip(evaluator.human[i]["captions"], evaluator.human[i]["similarity"],
                                                   evaluator.human[i]["closer"])] for i in per_image}
    else:
        per_image = {}
        rows = [{"image_id": c.image_id, "caption_index": c.caption_index, "prompt": c.prompt, "caption": c.caption}
                for c in sorted(test, key=lambda c: (c.image_id, c.caption_index))]
        run.human = {i: [{"caption": c.caption, "funny_score": c.funny_score, "humour_score": None}
                         for c in split.images[i]] for i in sorted({c.image_id for c in test})}
    for row in rows:
        row.update(flags[(row["image_id"], row["caption_index"])])
    for image_id, values in originality.items():
        run.per_image.setdefault(image_id, {}).update(values)
        run.per_image[image_id].update(per_image.get(image_id, {}))
    run.per_image = {i: v for i, v in run.per_image.items() if i in originality}  # test images only
    run.rows = rows
    return run


def clean(value):
    """NaN and infinities as JSON null (a number with no data), recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    return value


def settings_of(args) -> dict:
    return {"bootstrap": args.bootstrap, "seed": args.seed, "ci": "95% percentile bootstrap over images",
            "self_bleu_sample": args.self_bleu_sample, "strict": args.strict,
            "data_dir": str(args.data_dir) if args.data_dir else None,
            "scorer_cfg": args.scorer_cfg, "scorer_options": list(args.options or []),
            "scorer_cfg_sha256": file_sha256(args.scorer_cfg) if args.scorer_cfg and Path(args.scorer_cfg).is_file()
            else None}
