"""A blinded human study of generated captions against the image's top human caption.

    python evaluate.py --human-study 50 --captions C.jsonl --data-dir PREPARED --out study/
    # send study/study.html to raters; each downloads an answers_*.json
    python evaluate.py --human-results answers_ann.json answers_bob.json --study study/

``--human-study K`` picks K test images (seeded), per image the generated caption (the reranked
``chosen`` one when there is one, else the lowest ``caption_index``) and the image's top human caption
by funny_score, in a random order per pair. ``study.html`` shows the pairs as "A" and "B" (images
embedded; no network, no key in the page); ``key.json`` records which side is which.
``--human-results`` scores the answer files against the key into ``STUDY/results.json``: the
generated caption's win rate (a tie counts half) with a 95% Wilson interval, the win rate without
ties, per rater the same, and with several raters their agreement (per pair of raters: percent
agreement and Cohen's kappa on the shared pairs; Fleiss' kappa over the pairs everyone answered).
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from collections import Counter
from pathlib import Path

from minigpt4.common.atomic import atomic_write_text
from minigpt4.common.errors import EvaluationError
from minigpt4.datasets.hic_format import image_path
from minigpt4.evaluation.bootstrap import wilson_interval
from minigpt4.evaluation.captions import CaptionSet
from minigpt4.evaluation.human_study_page import image_data_uri, render_study
from minigpt4.evaluation.humour_eval import TestSplit, group
from minigpt4.evaluation.originality import normalise

logger = logging.getLogger(__name__)
KEY_FILE, PAGE_FILE, RESULTS_FILE = "key.json", "study.html", "results.json"
CHOICES = ("A", "B", "tie")
OUTCOMES = ("win", "tie", "loss")  # of the generated caption


def build_study(captions: CaptionSet, source: str, split: TestSplit, k: int, out, seed: int = 0,
                captions_sha256: str = "") -> dict:
    """Write ``study.html`` and ``key.json`` into ``out``; returns the key."""
    if k < 1:
        raise EvaluationError(f"--human-study needs a number of pairs of 1 or more; got {k}.")
    test, outside = split.restrict(captions.candidates)
    pool, identical = [], 0
    for image_id, caps in group(test).items():
        chosen = [c for c in caps if c.extra.get("chosen")] or caps
        generated, human = chosen[0], split.images[image_id][0]
        if normalise(generated.caption) == normalise(human.caption):
            identical += 1  # nothing to choose between
            continue
        pool.append((image_id, generated, human))
    if not pool:
        raise EvaluationError(f"{source} has no caption of a test image of {split.folder} to put beside a human "
                              f"one ({len(outside)} captioned image(s) outside the test split, {identical} identical "
                              "to the top human caption).")
    rng = random.Random(f"{seed}:human-study")
    picked = rng.sample(pool, min(k, len(pool)))
    if k > len(pool):
        logger.warning("--human-study %d: only %d test images can be paired; the study has %d pairs.", k, len(pool),
                       len(pool))
    study_id = hashlib.sha256(f"{captions_sha256}:{seed}:{k}:{source}".encode()).hexdigest()[:12]
    items, page_items = [], []
    for number, (image_id, generated, human) in enumerate(picked, 1):
        item_id = f"q{number:03d}"
        generated_side = "A" if rng.random() < 0.5 else "B"
        texts = {generated_side: generated.caption, "B" if generated_side == "A" else "A": human.caption}
        items.append({"id": item_id, "image_id": image_id, "generated_side": generated_side,
                      "generated": {"caption": generated.caption, "caption_index": generated.caption_index},
                      "human": {"caption": human.caption, "funny_score": human.funny_score}})
        page_items.append({"id": item_id, "image": image_data_uri(image_path(split.folder, image_id)), **texts})
    key = {"study_id": study_id, "captions": {"path": str(source), "sha256": captions_sha256},
           "data_dir": str(split.folder), "seed": seed, "requested_pairs": k, "num_pairs": len(items),
           "left_out": {"not_in_test_split": len(outside), "identical_to_top_human_caption": identical},
           "comparison": "generated caption vs the image's top human caption (by funny_score); 'tie' allowed",
           "items": items}
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise EvaluationError(f"--out {out} is a file; --out names the study folder.")
    page = render_study(study_id, page_items)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / KEY_FILE, json.dumps(key, indent=2, ensure_ascii=False) + "\n")
    atomic_write_text(out / PAGE_FILE, page)
    logger.info("Human study of %d pairs: %s (key: %s).", len(items), out / PAGE_FILE, out / KEY_FILE)
    return key


# -- answers --------------------------------------------------------------------------------------
def _read_json(path: Path, what: str):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise EvaluationError(f"Cannot read {what} {path}: {err.strerror or err}.") from None
    except (UnicodeDecodeError, ValueError) as err:
        raise EvaluationError(f"{what} {path} is not JSON ({err}).") from None


def read_key(study) -> dict:
    path = Path(study) / KEY_FILE
    if not path.is_file():
        raise EvaluationError(f"--study {study} holds no {KEY_FILE}: name the folder evaluate.py --human-study wrote.")
    key = _read_json(path, "study key")
    if not isinstance(key, dict) or not isinstance(key.get("items"), list):
        raise EvaluationError(f"{path} is not a study key (made by evaluate.py --human-study).")
    return key


def read_answers(path, key: dict) -> tuple[str, dict[str, str]]:
    """``(rater, item id -> outcome of the generated caption)`` of one answers file, checked against the key."""
    path = Path(path)
    data = _read_json(path, "answers file")
    if not isinstance(data, dict) or not isinstance(data.get("answers"), dict):
        raise EvaluationError(f"{path} is not an answers file of the study page (no 'answers' object).")
    if data.get("study_id") != key["study_id"]:
        raise EvaluationError(f"{path} answers study {data.get('study_id')!r}, but this key is for study "
                              f"{key['study_id']!r}: pass the --study folder the page came from.")
    sides = {item["id"]: item["generated_side"] for item in key["items"]}
    unknown = sorted(set(data["answers"]) - set(sides))
    if unknown:
        raise EvaluationError(f"{path} answers pairs the key does not hold: {', '.join(unknown[:10])}.")
    outcomes = {}
    for item_id, choice in data["answers"].items():
        if choice not in CHOICES:
            raise EvaluationError(f"{path}: the answer to {item_id} is {choice!r}; expected one of "
                                  f"{', '.join(CHOICES)}.")
        outcomes[item_id] = "tie" if choice == "tie" else "win" if choice == sides[item_id] else "loss"
    rater = str(data.get("rater") or "").strip() or path.stem
    return rater, outcomes


def win_numbers(outcomes: list[str]) -> dict:
    counts = Counter(outcomes)
    n, wins, ties, losses = len(outcomes), counts["win"], counts["tie"], counts["loss"]
    decided = wins + losses
    return {"num_judgements": n, "wins": wins, "ties": ties, "losses": losses,
            "win_rate": (wins + 0.5 * ties) / n if n else None, "ci95": wilson_interval(wins + 0.5 * ties, n),
            "win_rate_excluding_ties": wins / decided if decided else None,
            "ci95_excluding_ties": wilson_interval(wins, decided)}


def cohen_kappa(a: list[str], b: list[str]) -> float | None:
    n = len(a)
    if not n:
        return None
    observed = sum(x == y for x, y in zip(a, b)) / n
    ca, cb = Counter(a), Counter(b)
    expected = sum(ca[c] * cb[c] for c in OUTCOMES) / (n * n)
    return None if expected == 1 else (observed - expected) / (1 - expected)


def fleiss_kappa(table: list[list[str]]) -> float | None:
    """Fleiss' kappa of ``table`` (one row per pair: every rater's outcome)."""
    if not table or len(table[0]) < 2:
        return None
    raters = len(table[0])
    p_items, totals = [], Counter()
    for row in table:
        counts = Counter(row)
        totals.update(counts)
        p_items.append((sum(v * v for v in counts.values()) - raters) / (raters * (raters - 1)))
    p_bar = sum(p_items) / len(table)
    p_e = sum((totals[c] / (len(table) * raters)) ** 2 for c in OUTCOMES)
    return None if p_e == 1 else (p_bar - p_e) / (1 - p_e)


def score_answers(study, answer_files: list[str]) -> dict:
    """Score every answers file against the study's key; writes ``STUDY/results.json``."""
    key = read_key(study)
    raters: dict[str, dict[str, str]] = {}
    for path in answer_files:
        rater, outcomes = read_answers(path, key)
        if rater in raters:
            raise EvaluationError(f"Two answers files come from rater {rater!r} ({path} is the second): give each "
                                  "rater one file.")
        raters[rater] = outcomes
    pooled = [o for outcomes in raters.values() for o in outcomes.values()]
    if not pooled:
        raise EvaluationError(f"The answers files ({', '.join(map(str, answer_files))}) hold no answer.")
    results = {"study_id": key["study_id"], "num_pairs": len(key["items"]), "num_raters": len(raters),
               "comparison": key.get("comparison"), **win_numbers(pooled),
               "interval": "Wilson score interval, 95% (ties counted half in win_rate)", "raters": {}}
    names = sorted(raters)
    pairs = []
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            shared = sorted(set(raters[a]) & set(raters[b]))
            xa, xb = [raters[a][s] for s in shared], [raters[b][s] for s in shared]
            pairs.append({"raters": [a, b], "shared_pairs": len(shared),
                          "agreement": sum(x == y for x, y in zip(xa, xb)) / len(shared) if shared else None,
                          "cohen_kappa": cohen_kappa(xa, xb)})
    for name in names:
        mine = [p for p in pairs if name in p["raters"] and p["agreement"] is not None]
        results["raters"][name] = {**win_numbers(list(raters[name].values())),
                                   "mean_agreement_with_others": sum(p["agreement"] for p in mine) / len(mine)
                                   if mine else None}
    if len(names) > 1:
        everyone = sorted(set.intersection(*(set(raters[n]) for n in names)))
        results["agreement"] = {"pairs_of_raters": pairs, "pairs_answered_by_all": len(everyone),
                                "fleiss_kappa": fleiss_kappa([[raters[n][i] for n in names] for i in everyone])}
    atomic_write_text(Path(study) / RESULTS_FILE, json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    return results
