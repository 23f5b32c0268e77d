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


pytestmark = pytest.mark.usefixtures("log_handlers")  # conftest: no stale stderr handler


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


# -- evaluate.py on the planted scenario with a tiny scorer ----------------------------------------
def random_head(path: Path, seed: int) -> Path:
    """A tiny scorer checkpoint with a random head (scores that differ per caption), written here."""
    scorer = HumourScorer.from_config(SCORER_EVAL, device="cpu")
    gen = torch.Generator().manual_seed(seed)
    state = {k: torch.randn(v.shape, generator=gen) * 0.5 if k.startswith("head.") else v
             for k, v in scorer.model.trainable_state_dict().items()}
    torch.save({"model": state}, path)
    return path


def sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_split_of(data: Path) -> dict[str, list[dict]]:
    return {img["image_id"]: img["captions"] for img in json.loads((data / "test.json").read_text())["images"]}


test_split_of.__test__ = False  # a helper, not a test


def training_captions(data: Path) -> list[str]:
    """The training captions: filter_cap.json, what the stage-2 finetune reads."""
    return [a["caption"] for a in json.loads((data / "filter_cap.json").read_text())["annotations"]]


def generated_rows(data: Path, seed: int, num_images: int = 8) -> list[dict]:
    """3 captions for each of the first ``num_images`` test images, with a copy, a near copy and a
    repeated 3-gram among them, a caption of a train image and an error line."""
    rng = random.Random(seed)
    train = training_captions(data)
    rows = []
    for image_id in list(test_split_of(data))[:num_images]:
        for k in range(3):
            words = [rng.choice(FUNNY if rng.random() < 0.4 else PLAIN) for _ in range(rng.randint(5, 7))]
            rows.append({"image": str(data / "image" / f"{image_id}.jpg"), "image_id": image_id, "prompt": "p",
                         "caption": " ".join(words), "caption_index": k})
    rows[0]["caption"] = train[3].upper() + "!"  # an exact copy (case and punctuation aside)
    rows[1]["caption"] = train[5][:-1] + ("x" if train[5][-1] != "x" else "y")  # a near copy
    rows[2]["caption"] = "the cat the cat the cat"  # a repeated 3-gram
    rows.append(dict(rows[3], image_id="img0000", caption="a caption of a train image"))  # not a test image
    rows.append({"image": "gone.jpg", "image_id": "img0059", "error": "unreadable image"})  # an error line
    return rows
    return rows


def write_rows(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def humour_run(tmp_path_factory, tiny_dir):
    root = tmp_path_factory.mktemp("humour_eval")
    data = write_scenario(root / "hic")
    head = random_head(root / "head.pth", seed=3)
    base = write_rows(root / "base.jsonl", generated_rows(data, 0))
    ft = write_rows(root / "ft.jsonl", generated_rows(data, 1, num_images=7))
    out = root / "report"
    options = ["--data-dir", str(data), "--scorer-cfg", str(SCORER_EVAL), "--options", f"model.ckpt={head}",
               "--device", "cpu", "--bootstrap", "300"]
    assert evaluate.main(["--captions", str(base), str(ft), "--labels", "base", "humour-ft", *options,
                          "--out", str(out)]) == 0
    run = type("Run", (), dict(root=root, data=data, head=head, out=out, options=options, base=base, ft=ft))
    run.scorer = HumourScorer.from_config(SCORER_EVAL, [f"model.ckpt={head}"], "cpu")
    run.direct = direct_scores(run.scorer, run)
    return run


def direct_scores(scorer, run) -> dict:
    """The scorer called here directly (batched): score and similarity of every generated and human
    caption of the report, and the similarity of each with the image the report paired it with."""
    rows = read_jsonl(run.out / "base" / "per_caption.jsonl")
    split = test_split_of(run.data)
    other = {r["image_id"]: r["mismatch_image_id"] for r in rows}
    items = [("gen", r["image_id"], r["caption"]) for r in rows]
    items += [("human", i, c["caption"]) for i in sorted(other) for c in split[i]]
    path = lambda i: run.data / "image" / f"{i}.jpg"  # noqa: E731
    captions = [c for _, _, c in items]
    score = scorer.score([path(i) for _, i, _ in items], captions).tolist()
    own = scorer.similarity([path(i) for _, i, _ in items], captions).tolist()
    mismatch = scorer.similarity([path(other[i]) for _, i, _ in items], captions).tolist()
    return {(kind, i, c): (s, o, m) for (kind, i, c), s, o, m in zip(items, score, own, mismatch)}


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def by_image(rows: list[dict]) -> dict[str, list[dict]]:
    out = {}
    for row in rows:
        out.setdefault(row["image_id"], []).append(row)
    return out


def half(a: float, b: float) -> float:
    return 1.0 if a > b else 0.5 if a == b else 0.0


def scored_humans(run, label: str = "base") -> dict[str, list[dict]]:
    """human_captions.jsonl (the human test captions as the report scored them), checked here against the
    scorer called directly and against test.json (every caption, best funny_score first)."""
    human = by_image(read_jsonl(run.out / label / "human_captions.jsonl"))
    split = test_split_of(run.data)
    for image_id, caps in human.items():
        expected = sorted(split[image_id], key=lambda c: -c["funny_score"])
        assert [(c["caption"], c["funny_score"]) for c in caps] == [(c["caption"], c["funny_score"]) for c in expected]
        direct = [run.direct[("human", image_id, c["caption"])] for c in caps]
        assert [c["humour_score"] for c in caps] == pytest.approx([d[0] for d in direct], rel=1e-5)
        assert [c["similarity"] for c in caps] == pytest.approx([d[1] for d in direct], abs=1e-5)
    return human


def test_humour_numbers_match_an_independent_computation(humour_run):
    run = humour_run
    metrics = json.loads((run.out / "base" / "metrics.json").read_text())
    rows = read_jsonl(run.out / "base" / "per_caption.jsonl")
    humans = scored_humans(run)
    groups = by_image(rows)
    assert set(groups) == set(humans) == set(list(test_split_of(run.data))[:8])
    assert all(len(g) == 3 for g in groups.values())
    per_image = {"percentile": [], "beats_top": [], "beats_median": [], "pass@1": [], "pass@3": []}
    for image_id, caps in groups.items():
        gs = [c["humour_score"] for c in caps]
        assert gs == pytest.approx([run.direct[("gen", image_id, c["caption"])][0] for c in caps], rel=1e-5)
        hs = [h["humour_score"] for h in humans[image_id]]  # top funny_score first
        top, median = hs[0], hs[len(hs) // 2]
        for c, s in zip(caps, gs):
            assert c["percentile"] == pytest.approx((sum(h < s for h in hs) + 0.5 * sum(h == s for h in hs)) / len(hs))
            assert c["beats_top"] == half(s, top) and c["beats_median"] == half(s, median)
        for key in ("percentile", "beats_top", "beats_median"):
            per_image[key].append(np.mean([c[key] for c in caps]))
        good = [s > top for s in gs]
        for k in (1, 3):  # pass@k by enumerating every k of the image's 3 captions
            subsets = list(itertools.combinations(range(3), k))
            per_image[f"pass@{k}"].append(np.mean([any(good[i] for i in s) for s in subsets]))
    humour = metrics["humour"]
    for key in ("percentile", "beats_top", "beats_median"):
        assert humour[key]["mean"] == pytest.approx(np.mean(per_image[key]))
        low, high = humour[key]["ci95"]
        assert low <= humour[key]["mean"] <= high and humour[key]["num_images"] == 8
    for k in (1, 3):
        assert humour["pass_at_k"][str(k)]["mean"] == pytest.approx(np.mean(per_image[f"pass@{k}"]))
    assert 0 < np.mean(per_image["pass@1"]) < np.mean(per_image["pass@3"]) < 1  # the numbers are not degenerate
    assert "5" in humour["omitted_k"] and "5" not in humour["pass_at_k"]  # 3 captions per image: pass@5 omitted
    assert "pass@5 omitted" in (run.out / "base" / "index.html").read_text()
    assert metrics["scorer"]["ckpt_sha256"] == sha256(run.head)


def test_scorer_card_headline_and_grounding_match(humour_run):
    run = humour_run
    metrics = json.loads((run.out / "base" / "metrics.json").read_text())
    rows = read_jsonl(run.out / "base" / "per_caption.jsonl")
    humans = scored_humans(run)
    correct = pairs = 0
    human_sims, human_closer = [], []
    for image_id, human in humans.items():
        for a, b in itertools.permutations(human, 2):
            if a["funny_score"] >= 1 and math.log1p(a["funny_score"]) - math.log1p(b["funny_score"]) >= math.log(2):
                pairs += 1
                correct += half(a["humour_score"], b["humour_score"])
        other = [run.direct[("human", image_id, h["caption"])][2] for h in human]
        assert [h["closer_to_own_image"] for h in human] == [half(h["similarity"], o) for h, o in zip(human, other)]
        human_sims.append(np.mean([h["similarity"] for h in human]))
        human_closer.append(np.mean([h["closer_to_own_image"] for h in human]))
    card = metrics["scorer_card_headline"]
    assert card["num_pairs"] == pairs and card["pairwise_accuracy"] == pytest.approx(correct / pairs)
    grounding = metrics["grounding"]
    assert grounding["human_similarity"]["mean"] == pytest.approx(np.mean(human_sims))
    assert grounding["human_mismatch_accuracy"]["mean"] == pytest.approx(np.mean(human_closer))
    sims, closer = [], []
    for image_id, caps in by_image(rows).items():
        assert caps[0]["mismatch_image_id"] != image_id
        direct = [run.direct[("gen", image_id, c["caption"])] for c in caps]
        assert [c["similarity"] for c in caps] == pytest.approx([d[1] for d in direct], abs=1e-5)
        assert [c["similarity_other_image"] for c in caps] == pytest.approx([d[2] for d in direct], abs=1e-5)
        assert [c["closer_to_own_image"] for c in caps] == [half(c["similarity"], c["similarity_other_image"])
                                                            for c in caps]
        sims.append(np.mean([c["similarity"] for c in caps]))
        closer.append(np.mean([c["closer_to_own_image"] for c in caps]))
    assert grounding["similarity"]["mean"] == pytest.approx(np.mean(sims))
    assert grounding["mismatch_accuracy"]["mean"] == pytest.approx(np.mean(closer))


def test_originality_numbers_match_brute_force(humour_run):
    run = humour_run
    metrics = json.loads((run.out / "base" / "metrics.json").read_text())
    rows = read_jsonl(run.out / "base" / "per_caption.jsonl")
    train = training_captions(run.data)
    exact = {_normalise(t) for t in train}
    copy_exact, copy_near, repeated, d2 = [], [], [], []
    for caps in by_image(rows).values():
        texts = [c["caption"] for c in caps]
        copy_exact.append(np.mean([_normalise(t) in exact for t in texts]))
        copy_near.append(np.mean([brute_force_near(t, train) > 0 for t in texts]))
        tokens = [re.findall(r"[a-z0-9]+", t.lower()) for t in texts]
        repeated.append(np.mean([len(set(zip(w, w[1:], w[2:]))) < len(w) - 2 for w in tokens]))
        bigrams = [b for w in tokens for b in zip(w, w[1:])]
        d2.append(len(set(bigrams)) / len(bigrams))
    orig = metrics["originality"]
    assert orig["copy_exact"]["mean"] == pytest.approx(np.mean(copy_exact)) and np.sum(copy_exact) > 0
    assert orig["copy_near"]["mean"] == pytest.approx(np.mean(copy_near)) and np.sum(copy_near) > np.sum(copy_exact)
    assert orig["repeated_trigram"]["mean"] == pytest.approx(np.mean(repeated)) and np.sum(repeated) > 0
    assert orig["distinct-2"]["mean"] == pytest.approx(np.mean(d2))
    assert orig["training_captions"] == len({_normalise(t) for t in train})
    page = (run.out / "base" / "index.html").read_text()
    assert "reference overlap (not a humour measure)" in page.lower()


def test_paired_difference_matches_the_per_caption_files(humour_run):
    run = humour_run
    summary = json.loads((run.out / "metrics.json").read_text())
    a = by_image(read_jsonl(run.out / "base" / "per_caption.jsonl"))
    b = by_image(read_jsonl(run.out / "humour-ft" / "per_caption.jsonl"))
    common = sorted(set(a) & set(b))
    paired = summary["paired"]
    assert paired["num_common_images"] == len(common) == 7
    assert paired["left_out_images"] == {"base": sorted(set(a) - set(b)), "humour-ft": []}
    comparison = paired["comparisons"][0]
    assert (comparison["a"], comparison["b"]) == ("base", "humour-ft")
    for key in ("percentile", "beats_top", "copy_near", "similarity"):
        diff = np.mean([np.mean([c[key] for c in b[i]]) - np.mean([c[key] for c in a[i]]) for i in common])
        m = comparison["metrics"][key]
        assert m["difference"] == pytest.approx(diff, abs=1e-9)
        assert m["ci95"][0] <= m["difference"] <= m["ci95"][1]
        assert m["significant"] == (m["ci95"][0] > 1e-9 or m["ci95"][1] < -1e-9)
    assert set(summary["runs"]) == {"base", "humour-ft"}
    page = (run.out / "index.html").read_text()
    assert "humour-ft &minus; base" in page and f"base: {sorted(set(a) - set(b))[0]}" in page


def test_bad_lines_are_counted_and_outside_images_listed(humour_run):
    metrics = json.loads((humour_run.out / "base" / "metrics.json").read_text())
    assert metrics["unmatched"]["caption_errors"] == 1 and metrics["unmatched"]["caption_error_ids"] == ["img0059"]
    assert metrics["test_split"]["not_in_test_split"] == 1
    assert metrics["test_split"]["not_in_test_split_ids"] == ["img0000"]
    assert metrics["warnings"] == []  # not reranked: no self-evaluation warning
    assert metrics["settings"]["bootstrap"] == 300 and metrics["inputs"]["captions"]["sha256"] == sha256(humour_run.base)


def test_bad_input_is_a_named_error_and_writes_nothing(humour_run, tmp_path, evaluate_error):
    run = humour_run
    rows = generated_rows(run.data, 0)
    out = tmp_path / "r"
    dup = write_rows(tmp_path / "dup.jsonl", rows + [dict(rows[4], prompt="another prompt")])
    assert "(image_id, caption_index) pair(s) more than once (img0049 #1)" in evaluate_error(
        ["--captions", str(dup), *run.options, "--out", str(out)])
    (tmp_path / "empty.jsonl").write_text("")
    assert "empty" in evaluate_error(["--captions", str(tmp_path / "empty.jsonl"), *run.options, "--out", str(out)])
    not_a_scorer = ["--data-dir", str(run.data), "--scorer-cfg", str(TINY_RANDOM_EVAL), "--device", "cpu"]
    assert "is not a humour scorer config" in evaluate_error(["--captions", str(run.base), *not_a_scorer, "--out", str(out)])
    missing = ["--data-dir", str(run.data), "--scorer-cfg", str(tmp_path / "nope.yaml")]
    assert "nope.yaml" in evaluate_error(["--captions", str(run.base), *missing, "--out", str(out)])
    assert "--scorer-cfg needs --data-dir" in evaluate_error(["--captions", str(run.base), "--references",
                                                        str(run.data / "test.json"), "--scorer-cfg", str(SCORER_EVAL),
                                                        "--out", str(out)])
    outside = write_rows(tmp_path / "outside.jsonl", [rows[-2]])
    assert "None of the images captioned" in evaluate_error(["--captions", str(outside), *run.options, "--out", str(out)])
    assert "--labels gives 1 label(s) for 2" in evaluate_error(["--captions", str(run.base), str(run.ft), "--labels", "x",
                                                           *run.options, "--out", str(out)])
    assert not any(out.rglob("*.*"))  # no report file from any of these


# -- best-of-N reranking in caption.py ---------------------------------------------------------------
def test_best_of_n_keeps_the_highest_score_and_evaluating_with_that_scorer_warns(humour_run, tmp_path, capsys):
    run = humour_run
    listing = tmp_path / "images.txt"
    listing.write_text("".join(f"{run.data / 'image' / i}.jpg\n" for i in list(test_split_of(run.data))[:3]))
    common = ["--cfg-path", str(TINY_RANDOM_EVAL), "--images", str(listing), "--num-captions", "3", "--do-sample",
              "--max-new-tokens", "6", "--device", "cpu", "--quiet", "--rerank-cfg", str(SCORER_EVAL),
              "--rerank-options", f"model.ckpt={run.head}"]
    everything = tmp_path / "all.jsonl"
    assert caption.main([*common, "--keep", "all", "--out", str(everything)]) == 0
    groups = by_image(read_jsonl(everything))
    assert len(groups) == 3 and all([c["caption_index"] for c in caps] == [0, 1, 2] for caps in groups.values())
    for image_id, caps in groups.items():
        direct = run.scorer.score(run.data / "image" / f"{image_id}.jpg", [c["caption"] for c in caps]).tolist()
        assert [c["humour_score"] for c in caps] == pytest.approx(direct, rel=1e-5)
        order = sorted(range(3), key=lambda k: (-caps[k]["humour_score"], k))
        assert [caps[k]["rank"] for k in order] == [1, 2, 3]
        assert [c["chosen"] for c in caps] == [k == order[0] for k in range(3)]
        assert max(c["humour_score"] for c in caps) == next(c["humour_score"] for c in caps if c["chosen"])
        assert all(c["scorer"]["ckpt_sha256"] == sha256(run.head) and c["scorer"]["cfg"] == str(SCORER_EVAL)
                   for c in caps)
    best = tmp_path / "best.jsonl"
    assert caption.main([*common, "--out", str(best)]) == 0  # --keep best (the default)
    kept = read_jsonl(best)
    assert [(r["caption_index"], r["rank"], r["chosen"]) for r in kept] == [(0, 1, True)] * 3
    assert {r["image_id"]: r["caption"] for r in kept} == {
        i: next(c["caption"] for c in caps if c["chosen"]) for i, caps in groups.items()}  # same seed, same samples
    before = best.read_bytes()
    assert caption.main([*common, "--out", str(best)]) == 0 and best.read_bytes() == before  # resumed: all done
    other = random_head(tmp_path / "other.pth", seed=11)
    with pytest.raises(SystemExit):
        run_cli(caption.main, [*common[:-1], f"model.ckpt={other}", "--out", str(best)])
    assert "other settings" in capsys.readouterr().err  # another scorer is another setting

    out = tmp_path / "same"
    assert evaluate.main(["--captions", str(best), *run.options, "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["warnings"]) == 1 and "inflated by construction" in metrics["warnings"][0]
    page = (out / "index.html").read_text()
    assert page.index("inflated by construction") < page.index("<h2>")  # at the top of the page
    fair = tmp_path / "fair"
    other_options = [*run.options[:5], f"model.ckpt={other}", *run.options[6:]]
    assert evaluate.main(["--captions", str(best), *other_options, "--out", str(fair)]) == 0
    assert json.loads((fair / "metrics.json").read_text())["warnings"] == []  # another scorer: a fair check


def test_rerank_flags_are_checked_before_loading(tmp_path, capsys):
    base = ["--cfg-path", str(TINY_RANDOM_EVAL), "--images", str(tmp_path), "--out", str(tmp_path / "c.jsonl")]
    for extra, message in ((["--rerank-cfg", str(SCORER_EVAL)], "--num-captions 2 or more"),
                           (["--keep", "all"], "need --rerank-cfg"),
                           (["--num-captions", "2", "--do-sample", "--rerank-cfg", str(tmp_path / "x.yaml")],
                            "x.yaml not found")):
        with pytest.raises(SystemExit) as stop:
            run_cli(caption.main, [*base, *extra])
        assert stop.value.code == 2 and message in capsys.readouterr().err
