"""Tests for dataset/prepare_hic.py against a local image server on 127.0.0.1 (ephemeral port)."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from hic_server import ImageServer, Route, make_image_bytes

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "dataset"))
import prepare_hic as ph  # noqa: E402
from hic import download, files, rows  # noqa: E402
from hic.split import split_of  # noqa: E402

BOM = "\ufeff"

# image_id -> expected failure reason (None: the image must be saved)
EXPECTED = {
    "img_a": None,
    "img_b": None,  # PNG with alpha
    "img_c": None,  # greyscale JPEG
    "img_wide": None,  # resized by --max-side
    "img_flaky": None,  # 503 once, then fine (retry)
    "img_html": "not_image",
    "img_trunc": "corrupt_image",
    "img_huge": "too_many_pixels",
    "img_tiny": "too_small",
    "img_slow": "timeout",
    "img_404": "http_404",
    "img_ftp": "unsupported_url",
}


def _routes():
    full = make_image_bytes((160, 120), quality=95)
    return {
        "/img/a.jpg": Route(make_image_bytes((64, 48))),
        "/img/b.png": Route(make_image_bytes((40, 40), mode="RGBA", fmt="PNG", color=(0, 0, 255, 0)),
                            content_type="image/png"),
        "/img/c.jpg": Route(make_image_bytes((50, 50), mode="L", color=128)),
        "/img/wide.jpg": Route(make_image_bytes((300, 200))),
        "/img/flaky.jpg": Route(make_image_bytes((48, 48), color=(10, 10, 200)), fail_first=1),
        "/img/page.html": Route(b"<html><body>This photo is no longer available</body></html>",
                                content_type="text/html"),
        "/img/trunc.jpg": Route(full[: len(full) // 2]),
        "/img/huge.png": Route(make_image_bytes((2500, 2000), fmt="PNG"), content_type="image/png"),
        "/img/tiny.jpg": Route(make_image_bytes((8, 8))),
        "/img/slow.jpg": Route(make_image_bytes((64, 64)), delay=3.0),
    }


def write_image_info(path: Path, base: str) -> None:
    rows = [
        ("img_a", f"{base}/img/a.jpg"),
        ("img_b", f"{base}/img/b.png"),
        ("img_c", f"{base}/img/c.jpg"),
        ("img_wide", f"{base}/img/wide.jpg"),
        ("img_flaky", f"{base}/img/flaky.jpg"),
        ("img_html", f"{base}/img/page.html"),
        ("img_trunc", f"{base}/img/trunc.jpg"),
        ("img_huge", f"{base}/img/huge.png"),
        ("img_tiny", f"{base}/img/tiny.jpg"),
        ("img_slow", f"{base}/img/slow.jpg"),
        ("img_404", f"{base}/img/gone.jpg"),
        ("img_ftp", "ftp://127.0.0.1/img/a.jpg"),
        ("../evil", f"{base}/img/a.jpg"),  # unsafe id: rejected, never requested
        ("img/sub", f"{base}/img/a.jpg"),  # unsafe id
        ("img_a", f"{base}/img/c.jpg"),  # duplicate id
    ]
    with open(path, "w", encoding="utf-8", newline="") as fh:
        fh.write(BOM)
        w = csv.writer(fh, quoting=csv.QUOTE_ALL)
        w.writerow(["image_id", "image_url"])
        w.writerows(rows)


DATA_ROWS = [
    ("img_a", 'When the cat, finally, says "no"', "1,234"),
    ("img_a", "second\nline   caption", "5"),
    ("img_a", 'When the cat, finally, says "no"', "7"),  # exact duplicate: dropped, best score kept
    ("img_a", "   ", "3"),  # empty after cleaning
    ("img_a", "look at http://example.com lol", "9"),
    ("img_b", "ok @bob this is funny", "0"),  # img_b has only zero scores
    ("img_b", "plain caption", "0"),
    ("img_c", "one", "2"),
    ("img_c", "two two", "abc"),  # garbage score
    ("img_c", "three", ""),  # missing score
    ("img_wide", "a wide, wide caption", " 4 "),
    ("img_flaky", "flaky caption", "1"),
    ("img_404", "never downloaded", "10"),  # image failed: dropped
    ("../x", "unsafe id", "1"),
]


def write_data(path: Path, rows=DATA_ROWS, bom=True) -> None:
    with open(path, "w", encoding="utf-8", newline="") as fh:
        if bom:
            fh.write(BOM)
        w = csv.writer(fh)
        w.writerow(["image_id", "caption", "funny_score"])
        w.writerows(rows)


PIPELINE_ARGS = [
    "--workers", "4", "--timeout", "0.5", "--retries", "1", "--backoff", "0.01",
    "--min-side", "16", "--max-side", "128", "--max-pixels", "4000000",
    "--top-k", "2", "--seed", "3", "--val-fraction", "0.25", "--test-fraction", "0.25",
    "--shards", "--shard-size", "2", "--quiet",
]


def snapshot(out: Path) -> dict[str, bytes]:
    """Every output file except the per-run log and hidden lock/temporary files."""
    files = {}
    for p in sorted(out.rglob("*")):
        rel = p.relative_to(out).as_posix()
        if p.is_file() and rel != "runs.jsonl" and not any(part.startswith(".") for part in p.relative_to(out).parts):
            files[rel] = p.read_bytes()
    return files


@pytest.fixture(scope="module")
def server():
    with ImageServer() as srv:
        srv.routes.update(_routes())
        yield srv


@pytest.fixture(scope="module")
def data_dir(server, tmp_path_factory):
    d = tmp_path_factory.mktemp("hic_meta")
    write_image_info(d / ph.IMAGE_INFO_CSV, server.base_url)
    write_data(d / ph.DATA_CSV)
    return d


@pytest.fixture(scope="module")
def clean_run(server, data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("hic_clean")
    server.reset_counts()
    assert ph.main(["--data-dir", str(data_dir), "--out-dir", str(out), *PIPELINE_ARGS]) == 0
    return out


# ---------------------------------------------------------------------------------------------
# Unit-level behaviour
# ---------------------------------------------------------------------------------------------


def test_parse_score_and_ids():
    assert rows.parse_score("1,234") == 1234
    assert rows.parse_score("12,345,678") == 12345678
    assert rows.parse_score(" 7 ") == 7
    assert rows.parse_score("3.0") == 3
    assert rows.parse_score("2.5") == 2.5
    for bad in ("", "  ", "abc", "-3", "1,23", "1,2345", "nan", "inf", None):
        assert rows.parse_score(bad) is None, bad
    for good in ("123", "abc_DEF-9", "0001.v2"):
        assert files.is_safe_image_id(good)
    for bad in ("", "../x", "a/b", "a\\b", "..", ".hidden", "a..b", "a b", "x" * 201, "a\x00b"):
        assert not files.is_safe_image_id(bad), bad
    assert rows.clean_caption("  a\n b\t\u00a0c  ") == "a b c"


def test_failures_file_tolerates_a_torn_last_line(tmp_path):
    path = tmp_path / "failures.csv"
    path.write_text('image_id,url,reason\na,"http://x/a,1",http_404\nb,http://x/b,tim', encoding="utf-8")
    assert download.read_failures(path) == {"a": ("http://x/a,1", "http_404")}  # b was cut mid-write: not failed
    download.write_failures(path, {"b": ("u", "timeout"), "a": ("v", "http_404")})
    assert path.read_text(encoding="utf-8") == "image_id,url,reason\na,v,http_404\nb,u,timeout\n"


# ---------------------------------------------------------------------------------------------
# 1. Download: the right images, valid RGB JPEGs, every failure with its reason
# ---------------------------------------------------------------------------------------------


def test_download_saves_right_images_and_records_failures(clean_run, server):
    out = clean_run
    saved = sorted(p.name for p in (out / "image").iterdir())
    assert saved == sorted(f"{i}.jpg" for i, r in EXPECTED.items() if r is None)
    for name in saved:
        with Image.open(out / "image" / name) as img:
            assert img.format == "JPEG" and img.mode == "RGB"
            img.load()
            assert max(img.size) <= 128
    with Image.open(out / "image" / "img_wide.jpg") as img:
        assert img.size == (128, 85)
    with Image.open(out / "image" / "img_b.jpg") as img:  # transparent background became white
        r, g, b = img.getpixel((35, 35))
        assert min(r, g, b) > 230
    assert not (out / ".tmp").exists()

    with open(out / "failures.csv", encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    got = {r["image_id"]: r["reason"] for r in rows}
    assert got == {i: r for i, r in EXPECTED.items() if r is not None}
    assert all(r["url"] for r in rows)
    # unsafe ids were never requested; the flaky image needed its retry; one clear User-Agent
    assert server.requests["/img/flaky.jpg"] >= 2
    assert all("minigpt4-hic-prepare" in ua for ua in server.user_agents)

    stats = json.loads((out / "stats.json").read_text())
    dl = stats["download"]
    assert dl["image_info_bad_rows"] == {"duplicate_image_id": 1, "unsafe_image_id": 2}
    assert dl["images_listed"] == len(EXPECTED)
    assert dl["images_ok"] == 5 and dl["images_failed"] == 7
    assert dl["images_failed_by_reason"]["timeout"] == 1
    assert (out / "score_hist.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_selection_and_outputs_of_pipeline(clean_run):
    out = clean_run
    selected = [json.loads(l) for l in (out / "selected.jsonl").read_text(encoding="utf-8").splitlines()]
    by_id = {r["image_id"]: r["captions"] for r in selected}
    assert set(by_id) == {"img_a", "img_b", "img_c", "img_wide", "img_flaky"}  # failed images dropped
    assert by_id["img_a"] == [['When the cat, finally, says "no"', 1234],
                              ["look at http://example.com lol", 9],
                              ["second line caption", 5]]
    assert by_id["img_b"] == [["ok @bob this is funny", 0], ["plain caption", 0]]  # ties keep file order
    assert by_id["img_c"] == [["one", 2]]

    stats = json.loads((out / "stats.json").read_text())
    sel = stats["select"]
    assert sel["caption_rows_read"] == len(DATA_ROWS)
    assert sel["caption_bad_rows"] == {"bad_score": 1, "missing_score": 1, "unsafe_image_id": 1}
    assert sel["captions_dropped"] == {"duplicate_caption": 1, "empty_caption": 1, "no_image": 1}
    assert sel["captions_kept"] == 8
    assert sel["score_quantiles_kept"]["q100"] == 1234

    # splits follow the hash; train keeps the top 2, val/test keep every caption
    train = json.loads((out / "filter_cap.json").read_text(encoding="utf-8"))["annotations"]
    val = json.loads((out / "val.json").read_text(encoding="utf-8"))["images"]
    test = json.loads((out / "test.json").read_text(encoding="utf-8"))["images"]
    expected_train = []
    for image_id, caps in by_id.items():
        split = split_of(image_id, 3, 0.25, 0.25)
        if split == "train":
            expected_train += [{"image_id": image_id, "caption": c, "funny_score": s} for c, s in caps[:2]]
        else:
            entry = next(e for e in (val if split == "val" else test) if e["image_id"] == image_id)
            assert entry["captions"] == [{"caption": c, "funny_score": s} for c, s in caps]
    assert train == expected_train
    ids = [{a["image_id"] for a in train}, {e["image_id"] for e in val}, {e["image_id"] for e in test}]
    assert sum(map(len, ids)) == len(set().union(*ids)) == 5
    assert stats["split"]["train"]["captions"] == len(train)


def test_shards_are_webdataset_readable(clean_run):
    import webdataset as wds

    out = clean_run
    stats = json.loads((out / "stats.json").read_text())["export"]["shards"]
    train = json.loads((out / "filter_cap.json").read_text(encoding="utf-8"))["annotations"]
    assert stats["samples"] == len(train) and stats["shards"] == (len(train) + 1) // 2
    pattern = str(out / "shards" / stats["pattern"])
    samples = list(wds.WebDataset(pattern, shardshuffle=False).decode("pil", only=["jpg", "json"]).to_tuple("jpg", "json"))
    assert [s[1] for s in samples] == train
    for img, _ in samples:
        assert img.mode == "RGB"


def test_limit_takes_a_subset(server, data_dir, tmp_path):
    out = tmp_path / "limited"
    server.reset_counts()
    assert ph.main(["download", "--data-dir", str(data_dir), "--out-dir", str(out), "--limit", "2",
                    "--max-per-second", "200", "--quiet"]) == 0
    assert sorted(os.listdir(out / "image")) == ["img_a.jpg", "img_b.jpg"]
    assert set(server.requests) == {"/img/a.jpg", "/img/b.png"}
    assert json.loads((out / "stats.json").read_text())["download"]["images_listed"] == 2


# ---------------------------------------------------------------------------------------------
# 2. A second run downloads nothing and writes byte-identical outputs
# ---------------------------------------------------------------------------------------------


def test_rerun_downloads_nothing_and_is_byte_identical(clean_run, server, data_dir):
    before = snapshot(clean_run)
    server.reset_counts()
    assert ph.main(["--data-dir", str(data_dir), "--out-dir", str(clean_run), *PIPELINE_ARGS]) == 0
    assert server.total_requests() == 0
    assert snapshot(clean_run) == before

    # --retry-failed asks again for the failed images only, and the outcome is the same
    server.reset_counts()
    assert ph.main(["--data-dir", str(data_dir), "--out-dir", str(clean_run), *PIPELINE_ARGS, "--retry-failed"]) == 0
    assert set(server.requests) == {"/img/page.html", "/img/trunc.jpg", "/img/huge.png", "/img/tiny.jpg",
                                    "/img/slow.jpg", "/img/gone.jpg"}
    assert snapshot(clean_run) == before
    runs = [json.loads(l) for l in (clean_run / "runs.jsonl").read_text().splitlines()]
    assert [r["downloaded"] for r in runs if r["step"] == "download"] == [5, 0, 0]


# ---------------------------------------------------------------------------------------------
# 3. Killed mid-download, then rerun: same outputs as one clean run, never a partial file
# ---------------------------------------------------------------------------------------------


def _check_image_dir(image_dir: Path) -> int:
    names = os.listdir(image_dir) if image_dir.exists() else []
    for name in names:
        assert name.endswith(".jpg") and files.is_safe_image_id(name[:-4]), name
        with Image.open(image_dir / name) as img:
            img.load()  # raises on a partial file
    return len(names)


def test_kill_and_resume_matches_clean_run(clean_run, server, data_dir, tmp_path):
    out = tmp_path / "killed"
    server.slow_body = 0.4  # every image body stalls half-way: the kill lands mid-download
    try:
        proc = subprocess.Popen(
            [sys.executable, str(REPO / "dataset" / "prepare_hic.py"), "--data-dir", str(data_dir),
             "--out-dir", str(out), *PIPELINE_ARGS, "--workers", "2"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 30
        while _check_image_dir(out / "image") < 1:
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "the download never started"
            time.sleep(0.01)
        assert proc.poll() is None, "finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        proc.stderr.close()
    finally:
        server.slow_body = 0.0
    n_before = _check_image_dir(out / "image")
    assert 1 <= n_before < 5
    assert not (out / "filter_cap.json").exists()

    assert ph.main(["--data-dir", str(data_dir), "--out-dir", str(out), *PIPELINE_ARGS]) == 0
    _check_image_dir(out / "image")
    assert not (out / ".tmp").exists()
    assert snapshot(out) == snapshot(clean_run)


# ---------------------------------------------------------------------------------------------
# 4. Selection, cleaning and splits
# ---------------------------------------------------------------------------------------------


def _select(tmp_path, rows, *extra, name="sel"):
    data = tmp_path / f"{name}.csv"
    write_data(data, rows, bom=False)
    out = tmp_path / name
    argv = ["select", "--data-csv", str(data), "--out-dir", str(out),
            "--skip-image-check", "--quiet", *extra]
    assert ph.main(argv) == 0
    return out, {r["image_id"]: r["captions"] for r in
                 map(json.loads, (out / "selected.jsonl").read_text(encoding="utf-8").splitlines())}


def test_selection_filters_min_score_and_top_k(tmp_path):
    rows = [
        ("i1", "low", "1"), ("i1", "best one", "50"), ("i1", "mid dle", "10"), ("i1", "best one", "3"),
        ("i1", "see www.example.com now", "99"), ("i1", "hey @someone look", "98"),
        ("i1", "far too many words in this caption", "97"),
        ("i2", "zero", "0"), ("i2", "also zero", "0"),  # only zero scores: gone with --min-score 1
        ("i3", "x", "2"), ("i3", "  x  ", "1"),  # duplicates after whitespace cleaning
    ]
    out, sel = _select(tmp_path, rows, "--min-score", "1", "--max-words", "4", "--drop-urls", "--drop-mentions",
                       "--chunks", "3")
    assert sel == {"i1": [["best one", 50], ["mid dle", 10], ["low", 1]], "i3": [["x", 2]]}
    dropped = json.loads((out / "stats.json").read_text())["select"]["captions_dropped"]
    assert dropped == {"below_min_score": 2, "duplicate_caption": 2, "has_mention": 1, "has_url": 1,
                       "too_many_words": 1}

    # the chunk count changes nothing
    _, sel1 = _select(tmp_path, rows, "--min-score", "1", "--max-words", "4", "--drop-urls", "--drop-mentions",
                      "--chunks", "1", name="sel1")
    assert sel1 == sel

    assert ph.main(["split", "--out-dir", str(out), "--top-k", "2", "--val-fraction", "0", "--test-fraction",
                    "0", "--quiet"]) == 0
    train = json.loads((out / "filter_cap.json").read_text())["annotations"]
    assert [(a["image_id"], a["caption"]) for a in train if a["image_id"] == "i1"] == [("i1", "best one"),
                                                                                          ("i1", "mid dle")]


def test_splits_are_disjoint_deterministic_and_seeded(tmp_path):
    rows = [(f"im{i:04d}", f"caption {j}", str(j)) for i in range(400) for j in range(2)]
    out, sel = _select(tmp_path, rows)

    def run_split(seed):
        assert ph.main(["split", "--out-dir", str(out), "--seed", str(seed), "--val-fraction", "0.1",
                        "--test-fraction", "0.2", "--top-k", "0", "--quiet"]) == 0
        files = {n: (out / n).read_bytes() for n in ("filter_cap.json", "val.json", "test.json")}
        train = {a["image_id"] for a in json.loads(files["filter_cap.json"])["annotations"]}
        val = {e["image_id"] for e in json.loads(files["val.json"])["images"]}
        test = {e["image_id"] for e in json.loads(files["test.json"])["images"]}
        return files, train, val, test

    files, train, val, test = run_split(7)
    assert not (train & val or train & test or val & test)
    assert train | val | test == set(sel)
    assert 20 <= len(val) <= 65 and 50 <= len(test) <= 115  # 10% and 20% of 400, loosely
    assert run_split(7)[0] == files  # deterministic
    _, train2, val2, test2 = run_split(8)
    assert (val2, test2) != (val, test)  # the seed matters


# ---------------------------------------------------------------------------------------------
# 5. The output folder is what the cc_sbu_align builder reads
# ---------------------------------------------------------------------------------------------


def test_cc_sbu_align_layout_and_builder(clean_run):
    out = clean_run
    doc = json.loads((out / "filter_cap.json").read_text(encoding="utf-8"))
    assert list(doc) == ["annotations"] and doc["annotations"]
    for ann in doc["annotations"]:
        assert set(ann) == {"image_id", "caption", "funny_score"}
        assert isinstance(ann["image_id"], str) and ann["caption"].strip()
        assert (out / "image" / f"{ann['image_id']}.jpg").is_file()

    # ... and the cc_sbu_align builder reads the folder as it is.
    import minigpt4  # noqa: F401
    from minigpt4.common.registry import registry

    builder_cls = registry.get_builder_class("cc_sbu_align")
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({"data_type": "images", "build_info": {"storage": str(out)},
                            "vis_processor": {"train": {"name": "blip2_image_eval", "image_size": 224}}})
    datasets = builder_cls(cfg).build_datasets()
    sample = datasets["train"][0]
    assert "image" in sample and "text_input" in sample
    assert tuple(sample["image"].shape[-2:]) == (224, 224)


# ---------------------------------------------------------------------------------------------
# Clear errors for bad input
# ---------------------------------------------------------------------------------------------


def test_bad_input_gives_clear_errors(tmp_path, capsys):
    assert ph.main(["--data-dir", str(tmp_path / "nowhere"), "--out-dir", str(tmp_path / "o"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "not found" in err and ph.IMAGE_INFO_CSV in err and "--data-dir" in err

    (tmp_path / ph.IMAGE_INFO_CSV).write_text("id,url\n1,http://127.0.0.1/x.jpg\n")
    (tmp_path / ph.DATA_CSV).write_text("image_id,caption,funny_score\n")
    assert ph.main(["download", "--data-dir", str(tmp_path), "--out-dir", str(tmp_path / "o"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "missing column(s) image_id, image_url" in err and "header" in err

    assert ph.main(["split", "--out-dir", str(tmp_path / "empty"), "--quiet"]) == 2
    assert "run the select step first" in capsys.readouterr().err

    assert ph.main(["--data-dir", str(tmp_path), "--out-dir", str(tmp_path / "o"), "--val-fraction", "0.6",
                    "--test-fraction", "0.5"]) == 2
    assert "must be below 1" in capsys.readouterr().err
