"""Humour evaluation (evaluate.py --data-dir --scorer-cfg, several --captions files) and best-of-N
reranking (caption.py --rerank-cfg): every number is recomputed here, independently, from
per_caption.jsonl, the prepared folder and direct calls of the scorer; the bootstrap's coverage on a
synthetic case with a known mean; bad input."""

from __future__ import annotations

import itertools
import json
import math
import random
import re
import string
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import ROOT, TINY_RANDOM_EVAL

import minigpt4  # noqa: F401  (registration)
from minigpt4.cli import caption, evaluate
from minigpt4.cli.errors import run_cli
from minigpt4.evaluation.bootstrap import mean_ci, paired_ci
from minigpt4.evaluation.humour import pass_at_k
from minigpt4.evaluation.originality import CopyIndex
from minigpt4.humour import HumourScorer
from minigpt4.humour.scenario import FUNNY, PLAIN, write_scenario

SCORER_EVAL = ROOT / "eval_configs" / "hic_scorer_tiny_eval.yaml"


# -- the bootstrap ------------------------------------------------------------------------------------
def test_bootstrap_ci_covers_a_known_mean_about_95_percent_of_the_time():
    rng = np.random.default_rng(123)
    trials, covered, covered_diff = 300, 0, 0
    for t in range(trials):
        values = rng.exponential(0.5, size=80)  # skewed, true mean 0.5
        ci = mean_ci(values, resamples=400, seed=t)["ci95"]
        covered += ci[0] <= 0.5 <= ci[1]
        shared = rng.normal(0, 1, size=80)  # what both "models" share per image: cancels in the paired CI
        a, b = shared + rng.normal(0, 0.2, 80), shared + 0.1 + rng.normal(0, 0.2, 80)
        d = paired_ci(a, b, resamples=400, seed=t)["ci95"]
        covered_diff += d[0] <= 0.1 <= d[1]
    assert 0.90 <= covered / trials <= 0.985
    assert 0.90 <= covered_diff / trials <= 0.985


def test_paired_bootstrap_resamples_the_same_images_and_skips_undefined_ones():
    rng = np.random.default_rng(0)
    a = rng.normal(0, 1, 200)
    b = a + 0.05  # the same images shifted: the paired CI is that shift exactly, an unpaired one would be wide
    result = paired_ci(a, b, resamples=300, seed=1)
    assert result["difference"] == pytest.approx(0.05) and result["ci95"] == pytest.approx([0.05, 0.05])
    assert result["significant"]
    a[:10] = np.nan
    assert paired_ci(a, b, 300, 1)["num_images"] == 190
    assert mean_ci([1.0, math.nan, 3.0])["mean"] == 2.0
    assert mean_ci(a, 300, 5) == mean_ci(a, 300, 5)  # seeded
    tied = paired_ci([1.0, 2.0, 3.0], [1.0, 2.0, 3.0], 100, 0)
    assert tied["difference"] == 0 and not tied["significant"]


# -- pass@k and near copies ------------------------------------------------------------------------
@pytest.mark.parametrize("n, c, k", [(5, 2, 3), (4, 0, 1), (6, 6, 5), (5, 1, 5), (3, 2, 1)])
def test_pass_at_k_is_the_share_of_k_subsets_holding_a_good_caption(n, c, k):
    good = set(range(c))
    subsets = list(itertools.combinations(range(n), k))
    assert pass_at_k(n, c, k) == pytest.approx(sum(bool(good & set(s)) for s in subsets) / len(subsets))


def _normalise(text: str) -> str:  # the test's own: lower case, punctuation gone, spaces collapsed
    text = "".join(ch if ch.isalnum() or ch.isspace() else " " for ch in text.lower())
    return " ".join(text.split())


def _grams(text: str) -> set:
    return {text[i:i + 5] for i in range(len(text) - 4)} if len(text) > 5 else {text}


def brute_force_near(caption: str, training: list[str]) -> float:
    a = _grams(_normalise(caption))
    best = max(len(a & _grams(_normalise(t))) / len(a | _grams(_normalise(t))) for t in training)
    return best if best >= 0.8 else 0.0


def test_near_copies_match_a_brute_force_jaccard_over_every_training_caption():
    rng = random.Random(7)
    words = ["cat", "keyboard", "banana", "monday", "coffee", "boss", "zoom", "penguin", "wifi", "nap"]
    training = [" ".join(rng.choice(words) for _ in range(rng.randint(3, 9))) for _ in range(300)]
    queries = []
    for t in rng.sample(training, 60):  # perturbed copies: a changed letter, punctuation, a dropped/added word
        chars = list(t)
        for _ in range(rng.randint(0, 3)):
            chars[rng.randrange(len(chars))] = rng.choice(string.ascii_lowercase)
        variant = "".join(chars)
        if rng.random() < 0.3:
            variant = variant.upper() + "!!"
        if rng.random() < 0.3:
            variant += " " + rng.choice(words)
        queries.append(variant)
    queries += [" ".join(rng.choice(words) for _ in range(5)) for _ in range(40)] + ["?!", "a"]
    index = CopyIndex(training)
    flags = [index.copy_flags(q) for q in queries]
    expected = [brute_force_near(q, training) for q in queries]
    assert [f["copy_jaccard"] for f in flags] == pytest.approx(expected)
    assert 10 < sum(e > 0 for e in expected) < len(queries)  # both kinds are exercised
    exact = {_normalise(t) for t in training}
    assert [f["copy_exact"] for f in flags] == [float(_normalise(q) in exact) for q in queries]
