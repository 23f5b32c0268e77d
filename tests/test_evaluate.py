"""evaluate.py (minigpt4.cli.evaluate) and minigpt4.evaluation: hand-checked metrics, both reference layouts,
duplicates and torn lines, clear errors, report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from minigpt4.cli import evaluate as evaluate_script
from minigpt4.evaluation.captions import Candidate, EvaluationError, evaluate, load_captions, load_references
from minigpt4.evaluation.metrics import diversity, tokenize

REFS = {
    "cat": [("the cat sits on the warm keyboard and refuses to move", 8),
            ("a cat guarding the laptop", 5)],
    "dog": [("a dog wearing sunglasses at the beach", 9), ("the dog thinks he is on holiday", 4)],
    "cup": [("coffee strong enough to file a complaint", 7)],
}


def write_test_split(path: Path) -> Path:
    """The layout dataset/prepare_hic.py writes for test.json."""
    images = [{"image_id": k, "captions": [{"caption": c, "funny_score": s} for c, s in v]} for k, v in REFS.items()]
    path.write_text(json.dumps({"split": "test", "images": images}))
    return path


def write_annotations(path: Path) -> Path:
    """The cc_sbu_align layout: one caption per entry, grouped by image_id when read."""
    anns = [{"image_id": k, "caption": c, "funny_score": s} for k, v in REFS.items() for c, s in reversed(v)]
    path.write_text(json.dumps({"annotations": anns}))
    return path


def write_captions(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def caption_rows(image_dir: Path | None = None) -> list[dict]:
    return [
        {"image": str(image_dir / "cat.jpg") if image_dir else "", "image_id": "cat", "prompt": "p",
         "caption": "The cat sits on the warm keyboard, and refuses to move!", "caption_index": 0},
        {"image": "", "image_id": "dog", "prompt": "p", "caption": "quantum spreadsheets migrate eastward",
         "caption_index": 0},
        {"image": "", "image_id": "cup", "prompt": "p", "caption": "a strong coffee", "caption_index": 0},
    ]


def test_tokenize_and_diversity():
    assert tokenize("Hello, World! Don't -- stop.") == ["hello", "world", "don't", "stop"]
    div = diversity(["a b a", "c d"], ["x", "y"])
    assert div["distinct-1"] == pytest.approx(4 / 5) and div["distinct-2"] == pytest.approx(1.0)
    assert div["vocabulary_size"] == 4
    same = diversity(["a funny cat on a mat"] * 2, ["x", "y"])
    assert same["self-BLEU-4"] == pytest.approx(1.0, abs=1e-6)
    assert diversity(["only one"], ["x"])["self-BLEU-4"] is None


def test_both_reference_layouts_agree(tmp_path):
    a = load_references(write_test_split(tmp_path / "test.json"))
    b = load_references(write_annotations(tmp_path / "filter_cap.json"))
    assert a.keys() == b.keys() == REFS.keys()
    for key in REFS:
        assert [(r.caption, r.funny_score) for r in a[key]] == [(r.caption, r.funny_score) for r in b[key]]
        assert a[key][0].funny_score == max(s for _, s in REFS[key])  # best first
    lines = tmp_path / "selected.jsonl"
    lines.write_text("".join(json.dumps({"image_id": k, "captions": [c for c, _ in v]}) + "\n" for k, v in REFS.items()))
    assert load_references(lines).keys() == REFS.keys()


def test_hand_checked_scores(tmp_path):
    refs = load_references(write_test_split(tmp_path / "test.json"))
    result = evaluate(load_captions(write_captions(tmp_path / "c.jsonl", caption_rows())).candidates, refs)
    by_id = {row["image_id"]: row for row in result.per_caption}
    # Identical to its top reference (up to case and punctuation): BLEU-4 = ROUGE-L = 1.
    assert by_id["cat"]["BLEU-4"] == pytest.approx(1.0, abs=1e-6)
    assert by_id["cat"]["ROUGE-L"] == pytest.approx(1.0)
    # Unrelated: nothing in common.
    assert by_id["dog"]["BLEU-1"] == pytest.approx(0.0, abs=1e-6) and by_id["dog"]["ROUGE-L"] == 0.0
    assert by_id["cat"]["CIDEr-D"] > by_id["cup"]["CIDEr-D"] > by_id["dog"]["CIDEr-D"] == 0.0
    # ROUGE-L by hand for "a strong coffee" vs "coffee strong enough to file a complaint": LCS 1 word
    # ("strong" or "coffee"), P = 1/3, R = 1/7, beta 1.2.
    p, r, beta = 1 / 3, 1 / 7, 1.2
    assert by_id["cup"]["ROUGE-L"] == pytest.approx((1 + beta**2) * p * r / (r + beta**2 * p))
    assert result.metrics["num_captions"] == 3 and result.metrics["unmatched"]["captions_without_references"] == 0
    assert result.metrics["length"]["generated"]["max"] == 11


def test_cli_report(tmp_path, evaluate_error):
    from PIL import Image

    Image.new("RGB", (32, 32), "orange").save(tmp_path / "cat.jpg")
    rows = caption_rows(tmp_path) + [
        {"image": "", "image_id": "ghost", "prompt": "p", "caption": "no reference for me", "caption_index": 0},
        {"image": "x/broken.jpg", "image_id": "broken", "error": "broken.jpg: not a readable image"},
    ]
    out = tmp_path / "report"
    code = evaluate_script.main(["--captions", str(write_captions(tmp_path / "c.jsonl", rows)),
                                 "--references", str(write_test_split(tmp_path / "test.json")), "--out", str(out)])
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["metrics"]) == {"BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "ROUGE-L", "CIDEr-D"}
    assert metrics["unmatched"]["captions_without_references_ids"] == ["ghost"]  # reported, not dropped
    assert metrics["unmatched"]["caption_error_ids"] == ["broken"]
    per_image = [json.loads(line) for line in (out / "per_image.jsonl").read_text().splitlines()]
    assert {r["image_id"] for r in per_image} == {"cat", "dog", "cup"}
    assert (out / "length_hist.png").read_bytes()[:4] == b"\x89PNG"
    page = (out / "index.html").read_text()
    assert page.index("cat sits on the warm keyboard") < page.index("quantum spreadsheets")  # best CIDEr-D first
    assert "a dog wearing sunglasses" in page and "src='../cat.jpg'" in page and "ghost" in page

    # --strict refuses captions without references.
    assert "no reference" in evaluate_error(["--captions", str(tmp_path / "c.jsonl"), "--references",
                                        str(tmp_path / "test.json"), "--out", str(out), "--strict"])


def test_clear_errors(tmp_path, evaluate_error):
    refs = write_test_split(tmp_path / "test.json")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    out = ["--references", str(refs), "--out", str(tmp_path / "r")]
    assert "empty" in evaluate_error(["--captions", str(empty), *out])
    other = write_captions(tmp_path / "other.jsonl", [{"image_id": "nope", "caption": "hi"}])
    assert "None of the 1 captions has a reference" in evaluate_error(["--captions", str(other), *out])

    bad = tmp_path / "bad.jsonl"  # a bad line before the last is not an interrupted write
    bad.write_text('{"image_id": "cat", "caption": "ok"}\n{not json\n{"image_id": "dog", "caption": "ok"}\n')
    with pytest.raises(EvaluationError, match="line 2: not JSON"):
        load_captions(bad)
    (tmp_path / "empty.json").write_text("")
    with pytest.raises(EvaluationError, match="empty"):
        load_references(tmp_path / "empty.json")
    (tmp_path / "weird.json").write_text('{"something": []}')
    with pytest.raises(EvaluationError, match="HIC test split"):
        load_references(tmp_path / "weird.json")
    with pytest.raises(EvaluationError, match="no reference"):
        evaluate([Candidate("cat", "a cat"), Candidate("ghost", "x")], load_references(refs), strict=True)


def test_duplicates_count_once(tmp_path, evaluate_error):
    rows = caption_rows()
    rows.insert(1, dict(rows[0], caption="a second copy of the first line"))  # same image_id, prompt, caption_index
    rows.append(dict(rows[2], caption_index=1, caption="strong coffee again"))  # another index: not a duplicate
    captions = write_captions(tmp_path / "c.jsonl", rows)
    refs = write_test_split(tmp_path / "test.json")
    out = tmp_path / "report"
    assert evaluate_script.main(["--captions", str(captions), "--references", str(refs), "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_captions"] == 4
    assert metrics["captions_file"]["duplicate_lines"] == 1
    assert metrics["captions_file"]["duplicates"] == [{"image_id": "cat", "prompt": "p", "caption_index": 0,
                                                      "copies": 2}]
    per_image = [json.loads(line) for line in (out / "per_image.jsonl").read_text().splitlines()]
    assert [r["caption"] for r in per_image if r["image_id"] == "cat"] == [rows[0]["caption"]]  # the first kept
    assert "repeated caption line" in (out / "index.html").read_text()
    assert "repeats 1 caption line" in evaluate_error(["--captions", str(captions), "--references", str(refs),
                                                  "--out", str(out), "--strict"])


def test_torn_last_line_and_bad_values(tmp_path, evaluate_error):
    refs = write_test_split(tmp_path / "test.json")
    out = tmp_path / "report"
    torn = tmp_path / "torn.jsonl"
    torn.write_text("".join(json.dumps(r) + "\n" for r in caption_rows()) + '{"image": "x", "image_id": "do')
    assert evaluate_script.main(["--captions", str(torn), "--references", str(refs), "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_captions"] == 3 and metrics["captions_file"]["torn_last_line"] == 4
    assert "line 4" in evaluate_error(["--captions", str(torn), "--references", str(refs), "--out", str(out), "--strict"])

    def bad(name: str, text: bytes) -> list[str]:
        (tmp_path / name).write_bytes(text)
        return ["--captions", str(tmp_path / name), "--references", str(refs), "--out", str(out)]

    good = json.dumps(caption_rows()[0]).encode()
    assert "line 1: caption_index must be a whole number" in evaluate_error(
        bad("x.jsonl", b'{"image_id": "cat", "caption": "a", "caption_index": "x"}\n' + good + b"\n"))
    assert "caption_index must be a whole number >= 0; got nan" in evaluate_error(
        bad("nan.jsonl", b'{"image_id": "cat", "caption": "a", "caption_index": NaN}\n' + good + b"\n"))
    assert "line 1: not UTF-8" in evaluate_error(bad("latin1.jsonl", '{"image_id": "café", "caption": "a"}\n'.encode(
        "latin-1") + good + b"\n"))
    (tmp_path / "a_file").write_text("x")
    args = ["--captions", str(write_captions(tmp_path / "c.jsonl", caption_rows())), "--references", str(refs)]
    assert "is a file" in evaluate_error([*args, "--out", str(tmp_path / "a_file")])
    assert "--self-bleu-sample must be 0 or more" in evaluate_error([*args, "--out", str(out), "--self-bleu-sample", "-1"])
    assert "--gallery-size must be 0 or more" in evaluate_error([*args, "--out", str(out), "--gallery-size", "-1"])


def test_self_bleu_sample_zero_is_not_computed(tmp_path):
    refs = write_test_split(tmp_path / "test.json")
    captions = write_captions(tmp_path / "c.jsonl", caption_rows())
    out = tmp_path / "report"
    assert evaluate_script.main(["--captions", str(captions), "--references", str(refs), "--out", str(out),
                                 "--self-bleu-sample", "0", "--gallery-size", "0"]) == 0
    diversity_block = json.loads((out / "metrics.json").read_text())["diversity"]
    assert diversity_block["self-BLEU-4"] is None and diversity_block["self_bleu_sample"] == 0
    page = (out / "index.html").read_text()
    assert "self-BLEU-4 not computed" in page and "<div class='card'>" not in page
