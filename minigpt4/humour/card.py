"""The scorer card: how well a humour scorer agrees with the HIC votes on the TEST images.

    python evaluate.py --scorer-card --scorer-cfg eval_configs/hic_scorer_eval.yaml \
        --options model.ckpt=output/hic_scorer/<job>/checkpoint_best.pth \
        --data-dir data/oxford_hic --out report/ [--baseline-cfg CFG] [--scores-out scores.jsonl]
    python -m minigpt4.humour.card --scorer-cfg ... (the same flags)

Writes ``REPORT/scorer_card.json`` and ``REPORT/scorer_card.html``; ``--scores-out FILE`` one JSON
line per scored (image, caption) row, from which :mod:`minigpt4.humour.metrics` recomputes every
number. Baselines on the same pairs: random (0.5 exactly), length (the better of longer-wins and
shorter-wins), shuffled images (the scorer with image inputs permuted across test images: no image
scores its own captions) and, with ``--baseline-cfg``, a caption-only scorer.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import random
from collections import Counter
from pathlib import Path

from minigpt4.cli.errors import add_debug_flag, run_cli
from minigpt4.common.atomic import atomic_path, atomic_write_text
from minigpt4.common.errors import ConfigError, DatasetError
from minigpt4.common.logger import console_logging
from minigpt4.datasets.builders.hic_pairs_builder import images_by_split
from minigpt4.datasets.hic_format import SELECTED_FILE, image_path
from minigpt4.humour.card_page import render_card
from minigpt4.humour.metrics import group_rows, mismatch_numbers, ranking_numbers
from minigpt4.datasets.hic_pairs import PairOptions, within_image_pairs
from minigpt4.humour.scorer import HumourScorer, file_sha256
from minigpt4.inference.inputs import open_image

logger = logging.getLogger(__name__)

CARD_FILE, PAGE_FILE = "scorer_card.json", "scorer_card.html"
CAVEAT = ("A scorer trained on HIC votes measures agreement with those votes (who voted, on which platform, "
          "for which pictures), not humour itself; check a claimed gain with people (a human study).")


def derangement(n: int, rng: random.Random) -> list[int]:
    """A seeded permutation of range(n) with no fixed point (n >= 2): image i is scored as image perm[i]."""
    perm = list(range(n))
    rng.shuffle(perm)
    for i in range(n):
        if perm[i] == i:
            j = (i + 1) % n
            perm[i], perm[j] = perm[j], perm[i]
    return perm


def _row(scorer, kind, image_id, caption_image, index, caption, score=None) -> dict:
    return {"scorer": scorer, "kind": kind, "image_id": image_id, "caption_image_id": caption_image.image_id,
            "caption_index": index, "caption": caption.caption, "funny_score": caption.funny_score, "score": score}


def plan_rows(images: list, options: PairOptions, seed: int, shuffled: bool) -> list[dict]:
    """Every (image, caption) row the card scores with the main scorer (scores still None)."""
    rng = random.Random(f"{seed}:card")
    rows = [_row("main", "human", img.image_id, img, i, c) for img in images for i, c in enumerate(img.captions)]
    best = [k for k, img in enumerate(images) if img.captions and img.captions[0].funny_score is not None
            and img.captions[0].funny_score >= options.min_winner_score]
    for k in best if len(best) > 1 else []:
        other = images[rng.choice([j for j in best if j != k])]
        if other.captions[0].caption != images[k].captions[0].caption:
            rows.append(_row("main", "mismatch", images[k].image_id, other, 0, other.captions[0]))
    if shuffled and len(images) > 1:
        perm = derangement(len(images), rng)
        rows += [_row("main", "shuffled", images[perm[k]].image_id, img, i, c)
                 for k, img in enumerate(images) for i, c in enumerate(img.captions)]
    return rows


def readable_images(folder: str, images: list, options: PairOptions) -> tuple[list, dict]:
    """The test images whose file opens; the others are left out with their pairs, and counted."""
    good, bad, lost_pairs = [], [], 0
    for image in images:
        try:
            open_image(image_path(folder, image.image_id))
            good.append(image)
        except DatasetError as err:
            logger.warning("Leaving out test image %s and its captions: %s", image.image_id, err)
            bad.append(image.image_id)
            lost_pairs += len(within_image_pairs(image, options))
    return good, {"unreadable_images": len(bad), "unreadable_image_ids": bad[:50], "pairs_of_unreadable_images": lost_pairs}


def score_rows(scorer: HumourScorer, folder: str, rows: list[dict], batch_size: int, with_images: bool = True) -> None:
    """Fill in ``score`` of every row, batched, each distinct image of a batch encoded once."""
    rows = sorted(rows, key=lambda r: r["image_id"]) if with_images else rows
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        images = [image_path(folder, r["image_id"]) for r in chunk] if with_images else None
        for row, score in zip(chunk, scorer.score(images, [r["caption"] for r in chunk], batch_size).tolist()):
            row["score"] = score


def _clean(value):
    """NaN (a number with no data, e.g. no image with two distinct scores) as JSON null."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def card_numbers(rows: list[dict], options: PairOptions, bootstrap: int, seed: int) -> dict:
    """The card's metrics and baselines from scored rows (what ``--scores-out`` holds)."""
    human = group_rows(rows, "main", "human")
    card = ranking_numbers(human, options, bootstrap, seed)
    length = card.pop("_length")
    card.update(mismatch_numbers(human, group_rows(rows, "main", "mismatch"), bootstrap, seed))
    baselines = {"random": {"pairwise_accuracy": 0.5, "ci95": [0.5, 0.5], "note": "expected value, exact"},
                 "length": length}
    shuffled = group_rows(rows, "main", "shuffled")
    if shuffled:  # regrouped by whose captions they are, so the pairs are the same as above
        by_caption = {}
        for row_list in shuffled.values():
            for row in row_list:
                by_caption.setdefault(row["caption_image_id"], []).append(row)
        by_caption = {k: sorted(v, key=lambda r: r["caption_index"]) for k, v in sorted(by_caption.items())}
        numbers = ranking_numbers(by_caption, options, bootstrap, seed)
        baselines["shuffled_images"] = {k: numbers[k] for k in ("pairwise_accuracy", "ci95", "num_pairs")}
    baseline = group_rows(rows, "baseline", "human")
    if baseline:
        numbers = ranking_numbers(baseline, options, bootstrap, seed)
        numbers.pop("_length")
        baselines["caption_only"] = numbers
    card["baselines"] = baselines
    return card


def build_card(scorer_cfg: str, data_dir: str, out: str, options=None, baseline_cfg: str | None = None,
               baseline_options=None, scores_out: str | None = None, bootstrap: int = 1000, seed: int = 0,
               device=None, batch_size: int = 64, pair_options: PairOptions | None = None) -> dict:
    """Score the test split, write the card (JSON + HTML) and, optionally, the rows; returns the card."""
    if bootstrap < 1:
        raise ConfigError(f"--bootstrap must be 1 or more; got {bootstrap}.")
    out_dir = Path(out)
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"--out {out} exists and is not a folder.")
    pair_options = pair_options or PairOptions(max_pairs_per_image=0, mismatch_fraction=0.0)
    counts = Counter()
    images = images_by_split(data_dir, counts)["test"]  # a bad folder fails before any model is loaded
    if not images:
        raise DatasetError(f"{data_dir} has no test image with a file under image/: nothing to evaluate "
                           "(run dataset/prepare_hic.py split, or check --data-dir).")
    scorer = HumourScorer.from_config(scorer_cfg, options, device)
    baseline = HumourScorer.from_config(baseline_cfg, baseline_options, device) if baseline_cfg else None
    images, skipped = readable_images(data_dir, images, pair_options)
    skipped["missing_images"] = counts["missing_images"]
    rows = plan_rows(images, pair_options, seed, shuffled=scorer.model.config.use_image)
    logger.info("Scoring %d rows of %d test images.", len(rows), len(images))
    score_rows(scorer, data_dir, rows, batch_size, with_images=scorer.model.config.use_image)
    if baseline is not None:
        extra = [dict(r, scorer="baseline") for r in rows if r["kind"] == "human"]
        score_rows(baseline, data_dir, extra, batch_size, with_images=baseline.model.config.use_image)
        rows += extra
    card = card_numbers(rows, pair_options, bootstrap, seed)
    skipped.update(truncated_captions=scorer.truncated_captions, max_txt_len=scorer.model.config.max_txt_len)
    card.update(
        scorer=scorer.info, baseline_scorer=baseline.info if baseline else None, skipped=skipped,
        data={"data_dir": str(data_dir), "selected_sha256": file_sha256(Path(data_dir) / SELECTED_FILE),
              "test_images": len(images) + skipped["unreadable_images"], "scored_images": len(images)},
        settings={"min_log_margin": pair_options.min_log_margin, "min_winner_score": pair_options.min_winner_score,
                  "bootstrap": bootstrap, "seed": seed},
        caveat=CAVEAT,
    )
    card = _clean(card)
    out_dir.mkdir(parents=True, exist_ok=True)
    if scores_out:
        with atomic_path(scores_out) as tmp, open(tmp, "w", encoding="utf-8") as fh:
            for row in rows:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    atomic_write_text(out_dir / PAGE_FILE, render_card(card))
    atomic_write_text(out_dir / CARD_FILE, json.dumps(card, indent=2, ensure_ascii=False) + "\n")
    logger.info("Scorer card: pairwise accuracy %.4f [%.4f, %.4f] on %d pairs of %d images -> %s",
                card["pairwise_accuracy"] or math.nan, *(card["ci95"] or [math.nan] * 2), card["num_pairs"],
                card["num_images"], out_dir / CARD_FILE)
    return card


def add_card_arguments(p: argparse.ArgumentParser, with_options: bool = True) -> None:
    """The scorer-card flags (shared with ``evaluate.py --scorer-card``)."""
    p.add_argument("--scorer-cfg", required=True, help="eval config of the humour scorer (model.arch hic_scorer)")
    if with_options:
        p.add_argument("--options", nargs="+", help="overrides of the scorer config, key=value")
    p.add_argument("--data-dir", required=True, help="the prepared HIC folder (dataset/prepare_hic.py --out-dir)")
    p.add_argument("--baseline-cfg", help="a caption-only scorer (model.use_image: False) evaluated on the same pairs")
    p.add_argument("--baseline-options", nargs="+", help="overrides of the baseline config, key=value")
    p.add_argument("--scores-out", help="write one JSON line per scored (image, caption) row here")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples over images for the 95%% CIs")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap, mismatch and shuffle choices")
    p.add_argument("--device", default=None, help="cpu or cuda[:N] (default: cuda when available)")
    p.add_argument("--batch-size", type=int, default=64)


def run_card(args) -> dict:
    return build_card(args.scorer_cfg, args.data_dir, args.out, args.options, args.baseline_cfg,
                      args.baseline_options, args.scores_out, args.bootstrap, args.seed, args.device,
                      args.batch_size)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="evaluate.py --scorer-card", description=__doc__.split("\n\n")[0])
    p.add_argument("--scorer-card", action="store_true", help="(the evaluate.py switch to this mode; optional here)")
    add_card_arguments(p)
    p.add_argument("--out", required=True, help="report folder (scorer_card.json, scorer_card.html)")
    add_debug_flag(p)
    args = p.parse_args(argv)
    console_logging(logging.INFO, "%(levelname)s %(name)s: %(message)s")
    run_card(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
