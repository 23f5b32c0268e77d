"""The human study kit: evaluate.py --human-study writes a blinded, self-contained page and its key;
a real browser (Playwright + Debian's Chromium) fills the form and downloads the answers;
evaluate.py --human-results scores them (win rate with a Wilson interval, rater agreement)."""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import binomtest, norm

from conftest import require_chromium
from minigpt4.cli import evaluate
from minigpt4.humour.scenario import write_scenario



pytestmark = pytest.mark.usefixtures("log_handlers")  # conftest: no stale stderr handler


@pytest.fixture(scope="module")
def study_inputs(tmp_path_factory):
    """A prepared folder (the planted scenario) and a captions file: one caption per test image, one of
    them a copy of that image's top human caption, plus a train image and an error line."""
    root = tmp_path_factory.mktemp("study")
    data = write_scenario(root / "hic")
    test = json.loads((data / "test.json").read_text())["images"]
    rows = [{"image": str(data / "image" / f"{img['image_id']}.jpg"), "image_id": img["image_id"], "prompt": "p",
             "caption": f"generated joke number {n} about a llama", "caption_index": 0} for n, img in enumerate(test)]
    rows[0]["caption"] = test[0]["captions"][0]["caption"]  # identical to the top human caption: no pair
    rows.append(dict(rows[1], image_id="img0000", caption="a train image"))
    rows.append({"image": "x.jpg", "image_id": "img0050", "error": "unreadable"})
    captions = root / "captions.jsonl"
    captions.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return data, captions, test, rows


def make_study(study_inputs, out: Path, k: int) -> dict:
    data, captions, _, _ = study_inputs
    assert evaluate.main(["--human-study", str(k), "--captions", str(captions), "--data-dir", str(data),
                          "--out", str(out)]) == 0
    return json.loads((out / "key.json").read_text())


def test_study_key_and_page_are_blinded_and_self_contained(study_inputs, tmp_path):
    data, _, test, rows = study_inputs
    key = make_study(study_inputs, tmp_path / "s", 8)
    top = {img["image_id"]: img["captions"][0] for img in test}
    generated = {r["image_id"]: r["caption"] for r in rows if "caption" in r}
    assert key["num_pairs"] == len(key["items"]) == 8
    assert key["left_out"] == {"not_in_test_split": 1, "identical_to_top_human_caption": 1}
    for item in key["items"]:
        assert item["image_id"] in top and item["image_id"] != test[0]["image_id"]
        assert item["human"] == top[item["image_id"]]  # the top human caption by funny_score
        assert item["generated"]["caption"] == generated[item["image_id"]]
    assert {item["generated_side"] for item in key["items"]} == {"A", "B"}  # order randomised
    page = (tmp_path / "s" / "study.html").read_text()
    assert "generated_side" not in page and "generated" not in page.lower().replace("generated joke", "")
    assert not re.search(r"""(src|href)=['"]?(https?:|//)""", page)  # nothing fetched from the network
    assert page.count("data:image/jpeg;base64,") == 8
    for item in key["items"]:  # A and B are the key's sides
        a = item["generated" if item["generated_side"] == "A" else "human"]["caption"]
        b = item["human" if item["generated_side"] == "A" else "generated"]["caption"]
        assert re.search(rf"name='{item['id']}' value='A'> <b>A</b>: <span class='cap'>{re.escape(a)}</span>", page)
        assert re.search(rf"name='{item['id']}' value='B'> <b>B</b>: <span class='cap'>{re.escape(b)}</span>", page)
    assert make_study(study_inputs, tmp_path / "again", 8) == key  # seeded: the same study again
    assert make_study(study_inputs, tmp_path / "all", 99)["num_pairs"] == len(test) - 1  # capped at what exists


def wilson(successes: float, n: int) -> list[float]:
    z = norm.ppf(0.975)
    p = successes / n
    denom = 1 + z ** 2 / n
    centre, half = p + z ** 2 / (2 * n), z * math.sqrt(p * (1 - p) / n + z ** 2 / (4 * n ** 2))
    return [(centre - half) / denom, (centre + half) / denom]


def outcome(choice: str, side: str) -> str:
    return "tie" if choice == "tie" else "win" if choice == side else "loss"


def test_browser_fills_the_form_downloads_answers_and_they_score(study_inputs, tmp_path):
    chromium = require_chromium()
    from playwright.sync_api import sync_playwright

    study = tmp_path / "s"
    key = make_study(study_inputs, study, 6)
    plan = ["A", "B", "tie", "A", "A", "B"]
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, headless=True, args=["--no-sandbox"])
        page = browser.new_context(accept_downloads=True, offline=True).new_page()
        errors = []
        page.on("pageerror", lambda err: errors.append(str(err)))
        page.goto((study / "study.html").as_uri())
        page.fill("#rater", "ann")
        for item, choice in zip(key["items"][:-1], plan):
            page.check(f"input[name='{item['id']}'][value='{choice}']")
        page.click("#download")  # one pair unanswered: refused, nothing downloaded
        assert "1 left" in page.text_content("#status")
        page.check(f"input[name='{key['items'][-1]['id']}'][value='{plan[-1]}']")
        with page.expect_download() as info:
            page.click("#download")
        answers = tmp_path / info.value.suggested_filename
        info.value.save_as(answers)
        assert "Saved" in page.text_content("#status") and not errors
        browser.close()
    data = json.loads(answers.read_text())
    assert data["rater"] == "ann" and data["study_id"] == key["study_id"] and len(data["answers"]) == 6
    assert evaluate.main(["--human-results", str(answers), "--study", str(study)]) == 0
    results = json.loads((study / "results.json").read_text())
    outcomes = Counter(outcome(c, item["generated_side"]) for item, c in zip(key["items"], plan))
    n = sum(outcomes.values())
    assert (results["wins"], results["ties"], results["losses"]) == (outcomes["win"], outcomes["tie"], outcomes["loss"])
    assert results["win_rate"] == pytest.approx((outcomes["win"] + 0.5 * outcomes["tie"]) / n)
    assert results["ci95"] == pytest.approx(wilson(outcomes["win"] + 0.5 * outcomes["tie"], n))
    decided = outcomes["win"] + outcomes["loss"]
    ci = binomtest(outcomes["win"], decided).proportion_ci(method="wilson")
    assert results["ci95_excluding_ties"] == pytest.approx([ci.low, ci.high])


def kappa(a: list[str], b: list[str]) -> float:
    cats = ["win", "tie", "loss"]
    table = np.zeros((3, 3))
    for x, y in zip(a, b):
        table[cats.index(x), cats.index(y)] += 1
    table /= table.sum()
    chance = float(table.sum(1) @ table.sum(0))
    return (np.trace(table) - chance) / (1 - chance)


def fleiss(rows: list[list[str]]) -> float:
    cats = ["win", "tie", "loss"]
    counts = np.array([[row.count(c) for c in cats] for row in rows], dtype=float)
    n = counts.sum(1)[0]
    p_i = ((counts * (counts - 1)).sum(1)) / (n * (n - 1))
    p_j = counts.sum(0) / counts.sum()
    return (p_i.mean() - (p_j ** 2).sum()) / (1 - (p_j ** 2).sum())


def test_several_raters_agreement_and_pooled_win_rate(study_inputs, tmp_path):
    study = tmp_path / "s"
    key = make_study(study_inputs, study, 10)
    ids = [item["id"] for item in key["items"]]
    sides = {item["id"]: item["generated_side"] for item in key["items"]}
    choices = {"ann": "A B tie A A B B A tie A".split(), "bob": "A B A A B B B A tie B".split(),
               "cy": "B B tie A A tie B A A A".split()}
    files = []
    for name, picks in choices.items():
        answers = dict(zip(ids, picks))
        if name == "cy":
            answers.pop(ids[-1])  # cy skipped one pair (a hand-edited file)
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps({"study_id": key["study_id"], "rater": name, "answers": answers}))
        files.append(str(path))
    assert evaluate.main(["--human-results", *files, "--study", str(study)]) == 0
    results = json.loads((study / "results.json").read_text())
    frames = {name: {i: outcome(c, sides[i]) for i, c in zip(ids, picks)} for name, picks in choices.items()}
    del frames["cy"][ids[-1]]
    pooled = Counter(o for f in frames.values() for o in f.values())
    assert results["num_judgements"] == 29 and results["num_raters"] == 3
    assert results["win_rate"] == pytest.approx((pooled["win"] + 0.5 * pooled["tie"]) / 29)
    for a, b in (("ann", "bob"), ("ann", "cy"), ("bob", "cy")):
        shared = sorted(set(frames[a]) & set(frames[b]))
        entry = next(p for p in results["agreement"]["pairs_of_raters"] if p["raters"] == [a, b])
        assert entry["shared_pairs"] == len(shared)
        assert entry["agreement"] == pytest.approx(np.mean([frames[a][s] == frames[b][s] for s in shared]))
        assert entry["cohen_kappa"] == pytest.approx(kappa([frames[a][s] for s in shared], [frames[b][s] for s in shared]))
    everyone = ids[:-1]
    assert results["agreement"]["pairs_answered_by_all"] == 9
    assert results["agreement"]["fleiss_kappa"] == pytest.approx(fleiss([[frames[r][i] for r in frames] for i in everyone]))
    ann = results["raters"]["ann"]
    mine = [p["agreement"] for p in results["agreement"]["pairs_of_raters"] if "ann" in p["raters"]]
    assert ann["mean_agreement_with_others"] == pytest.approx(np.mean(mine))
    assert ann["win_rate"] == pytest.approx(np.mean([{"win": 1, "tie": 0.5, "loss": 0}[o] for o in frames["ann"].values()]))


def test_bad_answers_and_study_input_are_named_errors(study_inputs, tmp_path, evaluate_error):
    data, captions, _, _ = study_inputs
    study = tmp_path / "s"
    key = make_study(study_inputs, study, 3)
    first = key["items"][0]["id"]

    def answers(name: str, body) -> str:
        (tmp_path / name).write_text(body if isinstance(body, str) else json.dumps(body))
        return str(tmp_path / name)

    good = {"study_id": key["study_id"], "rater": "ann", "answers": {first: "A"}}
    run = ["--study", str(study)]
    assert "answers study 'other'" in evaluate_error(["--human-results", answers("a.json", {**good, "study_id": "other"}), *run])
    assert "does not hold: q999" in evaluate_error(["--human-results", answers("b.json", {**good, "answers": {"q999": "A"}}), *run])
    assert "expected one of A, B, tie" in evaluate_error(["--human-results", answers("c.json", {**good, "answers": {first: "C"}}), *run])
    assert "not JSON" in evaluate_error(["--human-results", answers("d.json", "{oops"), *run])
    twice = answers("e.json", good)
    assert "Two answers files come from rater 'ann'" in evaluate_error(["--human-results", twice, twice, *run])
    assert "holds no key.json" in evaluate_error(["--human-results", twice, "--study", str(tmp_path)])
    assert "needs --study" in evaluate_error(["--human-results", twice])
    assert not (study / "results.json").exists()  # nothing written by a failed scoring
    assert "needs --data-dir" in evaluate_error(["--human-study", "3", "--captions", str(captions), "--out", str(tmp_path / "x")])
    assert "1 or more" in evaluate_error(["--human-study", "0", "--captions", str(captions), "--data-dir", str(data),
                                     "--out", str(tmp_path / "x")])
