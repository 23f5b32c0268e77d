"""minigpt4.datasets.hic_format: the package's one reader of a prepared Oxford HIC folder, checked
against files written by dataset/prepare_hic.py and by hand."""

from __future__ import annotations

import csv
import json
import logging
import math
import sys
from collections import Counter
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from PIL import Image

import minigpt4  # noqa: F401  (registration)
from minigpt4.common.errors import DatasetError
from minigpt4.common.registry import registry
from minigpt4.datasets import hic_format as hf
from minigpt4.evaluation.captions import load_references

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "dataset"))
import prepare_hic as ph  # noqa: E402
from hic.files import is_safe_image_id as tool_is_safe  # noqa: E402
from hic.split import split_of  # noqa: E402

ROWS = [(f"im{i:03d}", f"caption {j} of {i}", str((i * 7 + j * 3) % 10)) for i in range(60) for j in range(3)]


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("hic_format")
    data = tmp / "data.csv"
    with open(data, "w", encoding="utf-8", newline="") as fh:
        csv.writer(fh).writerows([("image_id", "caption", "funny_score"), *ROWS])
    out = tmp / "out"
    assert ph.main(["select", "--data-csv", str(data), "--out-dir", str(out), "--skip-image-check", "--quiet"]) == 0
    assert ph.main(["split", "--out-dir", str(out), "--seed", "5", "--val-fraction", "0.2", "--test-fraction", "0.2",
                    "--top-k", "2", "--quiet"]) == 0
    return out


def expected_captions() -> dict[str, list[tuple[str, int]]]:
    """Straight from ROWS: per image, (caption, score) by score descending, ties in file order."""
    by_id: dict[str, list[tuple[str, int]]] = {}
    for image_id, caption, score in ROWS:
        by_id.setdefault(image_id, []).append((caption, int(score)))
    return {k: sorted(v, key=lambda cs: -cs[1]) for k, v in by_id.items()}


def test_read_selected_and_splits_match_what_the_tool_wrote(folder):
    expected = expected_captions()
    selected = list(hf.read_selected(folder))
    assert {s.image_id: [tuple(c) for c in s.captions] for s in selected} == expected
    assert all(isinstance(c, hf.ScoredCaption) for s in selected for c in s.captions)

    splits = hf.image_splits(folder)
    assert splits == {image_id: split_of(image_id, 5, 0.2, 0.2) for image_id in expected}
    assert set(splits.values()) == {"train", "val", "test"}
    train = {s.image_id: [tuple(c) for c in s.captions] for s in hf.read_split(folder, "train")}
    assert train == {k: v[:2] for k, v in expected.items() if splits[k] == "train"}  # --top-k 2
    for name in ("val", "test"):
        images = {s.image_id: [tuple(c) for c in s.captions] for s in hf.read_split(folder, name)}
        assert images == {k: v for k, v in expected.items() if splits[k] == name}  # every kept caption


def test_missing_and_broken_files_are_named(tmp_path):
    with pytest.raises(DatasetError, match=r"selected\.jsonl not found: run dataset/prepare_hic\.py select first"):
        list(hf.read_selected(tmp_path))
    with pytest.raises(DatasetError, match=r"val\.json not found: run dataset/prepare_hic\.py split first"):
        hf.read_split(tmp_path, "val")
    (tmp_path / "selected.jsonl").write_text('{"image_id": "a", "captions": [["x", 1]]}\n{oops\n')
    with pytest.raises(DatasetError, match=r"selected\.jsonl, line 2: not JSON"):
        list(hf.read_selected(tmp_path))
    (tmp_path / "selected.jsonl").write_text('{"image_id": "a", "captions": [["x", "many"]]}\n')
    with pytest.raises(DatasetError, match=r"line 1: funny_score must be a number"):
        list(hf.read_selected(tmp_path))
    (tmp_path / "test.json").write_text('{"annotations": []}')
    with pytest.raises(DatasetError, match=r"test\.json must be a JSON object with an 'images' list"):
        hf.read_split(tmp_path, "test")


def test_image_path_refuses_unsafe_ids_as_the_tool_does(tmp_path):
    assert hf.image_path(tmp_path, "0001.v2") == tmp_path / "image" / "0001.v2.jpg"
    ids = ["123", "abc_DEF-9", "0001.v2", "", "../x", "a/b", "a\\b", "..", ".hidden", "a..b", "a b", "x" * 201,
           "x" * 200, "a\x00b", "é"]
    for image_id in ids:
        assert hf.is_safe_image_id(image_id) == tool_is_safe(image_id), image_id
        if not tool_is_safe(image_id):
            with pytest.raises(DatasetError, match="not a safe file name"):
                hf.image_path(tmp_path, image_id)


def test_non_finite_scores_are_dropped_and_counted(tmp_path, caplog):
    """issue 9 item 24: a NaN score ranked first and was written back as NaN (not JSON)."""
    (tmp_path / "selected.jsonl").write_text(
        '{"image_id": "a", "captions": [["nan one", NaN], ["five", 5], ["inf one", Infinity], ["no score", null]]}\n'
        '{"image_id": "b", "captions": [["huge", 1e400], ["two", 2]]}\n')
    counts = Counter()
    with caplog.at_level(logging.WARNING):
        got = {s.image_id: [tuple(c) for c in s.captions] for s in hf.read_selected(tmp_path, counts)}
    assert got == {"a": [("five", 5), ("no score", None)], "b": [("two", 2)]}
    assert counts["non_finite_score"] == 3 and "dropped 3 caption(s)" in caplog.text

    test = tmp_path / "test.json"
    test.write_text('{"split": "test", "images": [{"image_id": "a", "captions": [{"caption": "nan one", '
                    '"funny_score": NaN}, {"caption": "seven", "funny_score": 7}, {"caption": "minus inf", '
                    '"funny_score": -Infinity}, {"caption": "two", "funny_score": 2}]}]}')
    refs = load_references(test)
    assert [(r.caption, r.funny_score) for r in refs["a"]] == [("seven", 7), ("two", 2)]
    json.dumps([r.funny_score for r in refs["a"]], allow_nan=False)  # writable as JSON
    counts = Counter()
    hf.read_split(tmp_path, "test", counts)
    assert counts["non_finite_score"] == 2
    assert all(math.isfinite(c.funny_score) for s in hf.read_split(tmp_path, "test") for c in s.captions)


def _hic_folder(root: Path, train_ids) -> Path:
    (root / "image").mkdir(parents=True)
    Image.new("RGB", (40, 30), (200, 10, 10)).save(root / "image" / "a.jpg")
    Image.new("RGB", (40, 30), (10, 10, 200)).save(root / "outside.jpg")
    anns = [{"image_id": i, "caption": f"caption of {i}", "funny_score": 1} for i in train_ids]
    (root / "filter_cap.json").write_text(json.dumps({"annotations": anns}))
    return root


def _build(root: Path):
    node = OmegaConf.create({"data_type": "images", "build_info": {"storage": str(root)},
                             "vis_processor": {"train": {"name": "blip2_image_eval", "image_size": 32}},
                             "text_processor": {"train": {"name": "blip_caption"}}})
    return registry.get_builder_class("oxford_hic")(node).build_datasets()


def test_oxford_hic_builder_refuses_ids_outside_image_folder(tmp_path):
    assert len(_build(_hic_folder(tmp_path / "ok", ["a"]))["train"]) == 1
    with pytest.raises(DatasetError, match=r"'\.\./outside' is not a .*outside image/"):
        _build(_hic_folder(tmp_path / "evil", ["a", "../outside"]))
    root = _hic_folder(tmp_path / "evil_eval", ["a"])
    (root / "val.json").write_text(json.dumps({"split": "val", "images": [
        {"image_id": "../outside", "captions": [{"caption": "x", "funny_score": 1}]}]}))
    with pytest.raises(DatasetError, match=r"'\.\./outside' in .* is not a safe file name"):
        _build(root)
