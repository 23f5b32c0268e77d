"""The humour, grounding and originality blocks of ``evaluate.py --data-dir PREPARED [--scorer-cfg CFG]``.

:class:`TestSplit` is what the prepared HIC folder gives (its TEST images with their human captions,
and its TRAINING captions, ``filter_cap.json``, what a stage-2 finetune learns from, for the copy
rate); :class:`HumourEvaluator` scores, with one humour scorer, the generated captions of the test
images and those images' human captions (once, shared by every captions file of a paired
comparison); :func:`originality_block` needs no scorer.

Grounding uses the scorer's BLIP-2 ITC similarity: the mean image-caption similarity of the
generated captions and, as the reference level, of the human captions; and the mismatch accuracy,
how often a caption is closer to its own image than to another test image (one per image, a seeded
choice among all test images of the folder, so every captions file meets the same one; a tie counts half).
"""

from __future__ import annotations

import logging
import random
import warnings
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from minigpt4.common.errors import DatasetError, EvaluationError
from minigpt4.datasets.hic_format import SPLIT_FILES, image_path, read_split
from minigpt4.datasets.hic_pairs import PairOptions
from minigpt4.evaluation.bootstrap import mean_ci
from minigpt4.evaluation.captions import Candidate
from minigpt4.evaluation.humour import PASS_KS, HumanCaption, caption_numbers, humour_summary, image_numbers
from minigpt4.evaluation.originality import CopyIndex, has_repeated_trigram, image_originality, top_caption_share
from minigpt4.humour.metrics import half_win, ranking_numbers
from minigpt4.humour.scorer import HumourScorer, file_sha256

logger = logging.getLogger(__name__)


@dataclass
class TestSplit:
    folder: Path
    images: dict[str, list]  # test image id -> human captions (ScoredCaption, best first), with a file
    without_file: list[str]  # test images whose file under image/ is missing
    train_captions: list[str]  # filter_cap.json: the captions a stage-2 finetune trains on
    sha256: dict = field(default_factory=dict)
    references: dict[str, list] = field(default_factory=dict)  # every test image with a human caption, file or not

    @classmethod
    def load(cls, folder) -> "TestSplit":
        folder = Path(folder)
        if not folder.is_dir():
            raise DatasetError(f"--data-dir {folder} is not a folder: name the prepared HIC folder "
                               "(dataset/prepare_hic.py --out-dir).")
        test = read_split(folder, "test")
        references, images, without_file = {}, {}, []
        for image in test:
            captions = [c for c in image.captions if c.caption.strip()]
            if not captions:
                continue
            references[image.image_id] = captions
            if image_path(folder, image.image_id).is_file():
                images[image.image_id] = captions
            else:
                without_file.append(image.image_id)
        if not images:
            raise DatasetError(f"{folder / SPLIT_FILES['test']} has no test image with human captions and a file "
                               f"under {folder / 'image'}: nothing to compare with (run dataset/prepare_hic.py).")
        train = [c.caption for image in read_split(folder, "train") for c in image.captions]
        sha = {name: file_sha256(folder / name) for name in (SPLIT_FILES["train"], SPLIT_FILES["test"])}
        return cls(folder, images, without_file, train, sha, references)

    def restrict(self, candidates: list[Candidate]) -> tuple[list[Candidate], list[str]]:
        """The candidates of test images with a file, and the other captioned image ids (sorted)."""
        kept = [c for c in candidates if c.image_id in self.images]
        return kept, sorted({c.image_id for c in candidates} - set(self.images))


def check_unique(candidates: list[Candidate], source: str) -> None:
    """Two rows with the same (image_id, caption_index) cannot both count: an error naming them."""
    counts = Counter((c.image_id, c.caption_index) for c in candidates)
    repeated = sorted(key for key, n in counts.items() if n > 1)
    if repeated:
        shown = ", ".join(f"{i} #{k}" for i, k in repeated[:10]) + (" ..." if len(repeated) > 10 else "")
        raise EvaluationError(f"{source} holds {len(repeated)} (image_id, caption_index) pair(s) more than once "
                              f"({shown}): each caption of an image needs its own caption_index. Remove the repeats "
                              "(or caption each prompt into its own file).")


def group(candidates: list[Candidate]) -> dict[str, list[Candidate]]:
    by_image = defaultdict(list)
    for c in candidates:
        by_image[c.image_id].append(c)
    return {k: sorted(v, key=lambda c: c.caption_index) for k, v in sorted(by_image.items())}


class HumourEvaluator:
    """One scorer on one test split; human captions are scored once per image and kept."""

    def __init__(self, scorer: HumourScorer, split: TestSplit, batch_size: int = 64, seed: int = 0):
        self.scorer, self.split, self.batch_size, self.seed = scorer, split, batch_size, seed
        self.grounding = scorer.model.config.use_image
        self.human: dict[str, dict] = {}
        ids = sorted(split.images)
        self.other: dict[str, str | None] = {}
        for position, image_id in enumerate(ids):  # a seeded choice among the other test images
            k = random.Random(f"{seed}:mismatch:{image_id}").randrange(len(ids) - 1) if len(ids) > 1 else None
            self.other[image_id] = None if k is None else ids[k if k < position else k + 1]

    def _path(self, image_id: str) -> Path:
        return image_path(self.split.folder, image_id)

    def _score(self, image_ids: list[str], captions: list[str]) -> list[float]:
        if not captions:
            return []
        images = [self._path(i) for i in image_ids] if self.grounding else None
        return self.scorer.score(images, captions, self.batch_size).tolist()

    def _closer(self, image_ids: list[str], captions: list[str]) -> tuple[list, list, list]:
        """Per row: similarity with its own image, with the image's mismatch image, own-closer (1/0.5/0)."""
        if not self.grounding or not captions:
            return [None] * len(captions), [None] * len(captions), [None] * len(captions)
        own = self.scorer.similarity([self._path(i) for i in image_ids], captions, self.batch_size).tolist()
        rows = [k for k, i in enumerate(image_ids) if self.other[i] is not None]
        other = [None] * len(captions)
        if rows:
            sims = self.scorer.similarity([self._path(self.other[image_ids[k]]) for k in rows],
                                          [captions[k] for k in rows], self.batch_size).tolist()
            for k, sim in zip(rows, sims):
                other[k] = sim
        closer = [None if o is None else half_win(s, o) for s, o in zip(own, other)]
        return own, other, closer

    def score_human(self, image_ids) -> None:
        todo = [i for i in sorted(set(image_ids)) if i not in self.human]
        ids = [i for i in todo for _ in self.split.images[i]]
        captions = [c.caption for i in todo for c in self.split.images[i]]
        logger.info("Scoring %d human captions of %d test images.", len(captions), len(todo))
        scores = self._score(ids, captions)
        own, _, closer = self._closer(ids, captions)
        k = 0
        for image_id in todo:
            human, sims, near = [], [], []
            for caption in self.split.images[image_id]:
                human.append(HumanCaption(caption.caption, caption.funny_score, scores[k]))
                sims.append(own[k])
                near.append(closer[k])
                k += 1
            self.human[image_id] = {"captions": human, "similarity": sims, "closer": near}

    def evaluate(self, candidates: list[Candidate]) -> tuple[dict[str, dict], list[dict]]:
        """Per image and per caption humour and grounding numbers of ``candidates`` (test images only)."""
        by_image = group(candidates)
        self.score_human(by_image)
        flat = [c for caps in by_image.values() for c in caps]
        ids, captions = [c.image_id for c in flat], [c.caption for c in flat]
        logger.info("Scoring %d generated captions of %d test images.", len(flat), len(by_image))
        scores = self._score(ids, captions)
        own, other, closer = self._closer(ids, captions)
        rows, per_image, k = [], {}, 0
        for image_id, caps in by_image.items():
            human = self.human[image_id]
            mine = list(range(k, k + len(caps)))
            k += len(caps)
            for j, cand in zip(mine, caps):
                rows.append({"image_id": image_id, "caption_index": cand.caption_index, "prompt": cand.prompt,
                             "caption": cand.caption, "humour_score": scores[j],
                             **caption_numbers(scores[j], human["captions"]), "similarity": own[j],
                             "similarity_other_image": other[j], "closer_to_own_image": closer[j],
                             "mismatch_image_id": self.other[image_id] if self.grounding else None})
            stats = image_numbers([scores[j] for j in mine], human["captions"])
            if self.grounding:
                stats["similarity"] = _mean([own[j] for j in mine])
                stats["mismatch_accuracy"] = _mean([closer[j] for j in mine])
                stats["human_similarity"] = _mean(human["similarity"])
                stats["human_mismatch_accuracy"] = _mean(human["closer"])
            per_image[image_id] = stats
        return per_image, rows

    def card_headline(self, image_ids, resamples: int) -> dict:
        """The scorer card's headline on the human captions of these test images (pairwise accuracy)."""
        by_image = {i: [{"image_id": i, "caption_index": n, "caption": h.caption, "funny_score": h.funny_score,
                         "score": h.score} for n, h in enumerate(self.human[i]["captions"])] for i in sorted(image_ids)}
        with warnings.catch_warnings():  # a margin bucket without pairs has no CI (NaN), which is said as null
            warnings.simplefilter("ignore", RuntimeWarning)
            numbers = ranking_numbers(by_image, PairOptions(max_pairs_per_image=0, mismatch_fraction=0.0), resamples,
                                      self.seed)
        keys = ("pairwise_accuracy", "ci95", "num_pairs", "num_images", "top1_accuracy", "top1_accuracy_ci95")
        return {**{key: numbers[key] for key in keys},
                "note": "on the human captions of the evaluated test images (evaluate.py --scorer-card for the card)"}


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def _nan(value):
    return float("nan") if value is None else value


def humour_metrics(evaluator: HumourEvaluator, per_image: dict[str, dict], resamples: int) -> dict:
    seed = evaluator.seed
    out = {"humour": humour_summary(per_image, resamples, seed, PASS_KS),
           "scorer": evaluator.scorer.info,
           "scorer_card_headline": evaluator.card_headline(per_image, resamples)}
    if evaluator.grounding:
        out["grounding"] = {key: {**mean_ci([_nan(r[key]) for r in per_image.values()], resamples, seed),
                                  "label": label} for key, label in GROUNDING}
    else:
        out["grounding"] = {"note": "not computed: the scorer is caption-only (model.use_image=False), it has no "
                                    "image-caption similarity"}
    return out


GROUNDING = (("similarity", "image-caption ITC similarity of the generated captions"),
             ("human_similarity", "image-caption ITC similarity of the human captions (reference level)"),
             ("mismatch_accuracy", "generated caption closer to its own image than to another test image"),
             ("human_mismatch_accuracy", "human caption closer to its own image than to another test image"))
ORIGINALITY = (("distinct-1", "distinct-1 within an image's captions (images with 2+ captions)"),
               ("distinct-2", "distinct-2 within an image's captions (images with 2+ captions)"),
               ("repeated_trigram", "captions repeating one of their own word 3-grams"),
               ("copy_exact", "exact copies of a training caption (case, spaces, punctuation normalised)"),
               ("copy_near", "near copies of a training caption (character 5-gram Jaccard >= 0.8)"))


def originality_block(candidates: list[Candidate], index: CopyIndex, resamples: int, seed: int
                      ) -> tuple[dict, dict[str, dict], dict[tuple, dict]]:
    """Per-image originality numbers (with CIs), corpus shares, and per (image_id, caption_index) flags."""
    flags = {(c.image_id, c.caption_index): {**index.copy_flags(c.caption),
                                             "repeated_trigram": float(has_repeated_trigram(c.caption))}
             for c in candidates}
    per_image = {image_id: image_originality([c.caption for c in caps],
                                             [flags[(c.image_id, c.caption_index)] for c in caps])
                 for image_id, caps in group(candidates).items()}
    n = len(candidates)
    summary = {key: {**mean_ci([r[key] for r in per_image.values()], resamples, seed), "label": label}
               for key, label in ORIGINALITY}
    summary["share_of_captions"] = {key: sum(f[key] for f in flags.values()) / n
                                    for key in ("repeated_trigram", "copy_exact", "copy_near")}
    summary["top_caption_share"] = top_caption_share([c.caption for c in candidates])
    summary["training_captions"] = len(index)
    summary["near_copy_rule"] = "normalised captions, character 5-gram Jaccard >= 0.8 (exact copies included)"
    return summary, per_image, flags
