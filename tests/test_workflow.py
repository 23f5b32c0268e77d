"""The researcher's path end to end, on the tiny model: prepare Oxford HIC data from CSVs and a
local image server -> stage-2 finetune on it -> caption the test split (greedy, and best-of-2
reranked by a humour scorer) -> evaluate against its human references, and the humour block: both
captions files against the test images' human captions with the scorer, compared pairwise. Each
tool reads what the previous one wrote, as it is."""

from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from conftest import ROOT
from hic_server import ImageServer, Route
from minigpt4.cli import caption, evaluate, train
from minigpt4.humour import HumourScorer

sys.path.insert(0, str(ROOT / "dataset"))

SCORER_EVAL = ROOT / "eval_configs" / "hic_scorer_tiny_eval.yaml"
SKIMAGE_NAMES = ["astronaut", "coffee", "chelsea", "rocket", "camera", "coins", "moon", "page", "clock", "horse"]
JOKES = ["I have seen things you would not believe, mostly my own reflection",
         "this is fine, everything is fine", "my face when the wifi drops",
         "five more minutes, then I will be productive", "plot twist: it was decaf all along"]


def _jpeg(name: str) -> bytes:
    from skimage import data

    img = Image.fromarray(getattr(data, name)()).convert("RGB")
    img.thumbnail((160, 160))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


@pytest.mark.slow
def test_prepare_train_caption_evaluate(tmp_path, tiny_dir):
    import prepare_hic

    meta = tmp_path / "meta"
    meta.mkdir()
    with ImageServer() as server:
        for name in SKIMAGE_NAMES:
            server.routes[f"/{name}.jpg"] = Route(_jpeg(name))
        with open(meta / prepare_hic.IMAGE_INFO_CSV, "w", newline="", encoding="utf-8") as f:
            csv.writer(f).writerows([("image_id", "image_url")] + [(n, f"{server.base_url}/{n}.jpg") for n in SKIMAGE_NAMES])
        with open(meta / prepare_hic.DATA_CSV, "w", newline="", encoding="utf-8") as f:
            rows = [("image_id", "caption", "funny_score")]
            for i, name in enumerate(SKIMAGE_NAMES):
                rows += [(name, JOKES[(i + k) % len(JOKES)], f"{(i * 7 + k * 3) % 11:,}") for k in range(3)]
            csv.writer(f).writerows(rows)
        hic = tmp_path / "oxford_hic"
        assert prepare_hic.main(["--data-dir", str(meta), "--out-dir", str(hic), "--workers", "4", "--top-k", "2",
                                 "--val-fraction", "0.2", "--test-fraction", "0.3", "--quiet"]) == 0

    test_split = json.loads((hic / "test.json").read_text())
    test_ids = [entry["image_id"] for entry in test_split["images"]]
    assert test_ids, "the split gave no test image; change the seed or fractions"

    job = train.main(["--cfg-path", str(ROOT / "train_configs" / "minigpt4_tiny_finetune.yaml"), "--options",
                      f"datasets.cc_sbu_align.build_info.storage={hic}", "run.max_epoch=1", "run.iters_per_epoch=3",
                      "run.batch_size_train=2", f"run.output_dir={tmp_path / 'runs'}"])
    checkpoint = sorted(Path(job).glob("checkpoint_*.pth"))[-1]

    listing = tmp_path / "test_images.txt"
    listing.write_text("".join(f"{hic / 'image' / i}.jpg\n" for i in test_ids))
    captions = tmp_path / "captions.jsonl"
    assert caption.main(["--cfg-path", str(ROOT / "eval_configs" / "minigpt4_tiny_eval.yaml"), "--options",
                         f"model.ckpt={checkpoint}", "--images", str(listing), "--out", str(captions),
                         "--max-new-tokens", "8", "--device", "cpu", "--quiet"]) == 0
    lines = [json.loads(line) for line in captions.read_text().splitlines()]
    assert sorted(line["image_id"] for line in lines) == sorted(test_ids)
    assert all(str(checkpoint) in json.dumps(line["model"]) for line in lines)

    report = tmp_path / "report"
    assert evaluate.main(["--captions", str(captions), "--references", str(hic / "test.json"), "--out", str(report)]) == 0
    metrics = json.loads((report / "metrics.json").read_text())
    assert set(metrics["metrics"]) == {"BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "ROUGE-L", "CIDEr-D"}
    assert all(0 <= value for value in metrics["metrics"].values())
    assert metrics["unmatched"]["captions_without_references"] == 0
    per_image = [json.loads(line) for line in (report / "per_image.jsonl").read_text().splitlines()]
    assert sorted({row["image_id"] for row in per_image}) == sorted(test_ids)
    assert (report / "index.html").read_text().count("<img") >= len(test_ids)

    # The humour block: a tiny scorer (a random head, so scores differ), best-of-2 captions reranked by it,
    # both files evaluated against the test images' human captions and compared image by image.
    scorer = HumourScorer.from_config(SCORER_EVAL, device="cpu")
    gen = torch.Generator().manual_seed(0)
    head = tmp_path / "scorer_head.pth"
    torch.save({"model": {k: torch.randn(v.shape, generator=gen) if k.startswith("head.") else v
                          for k, v in scorer.model.trainable_state_dict().items()}}, head)
    best = tmp_path / "best_of_2.jsonl"
    assert caption.main(["--cfg-path", str(ROOT / "eval_configs" / "minigpt4_tiny_eval.yaml"), "--options",
                         f"model.ckpt={checkpoint}", "--images", str(listing), "--out", str(best), "--max-new-tokens",
                         "8", "--device", "cpu", "--quiet", "--num-captions", "2", "--do-sample", "--rerank-cfg",
                         str(SCORER_EVAL), "--rerank-options", f"model.ckpt={head}"]) == 0
    reranked = [json.loads(line) for line in best.read_text().splitlines()]
    assert sorted(r["image_id"] for r in reranked) == sorted(test_ids) and all(r["chosen"] for r in reranked)
    humour = tmp_path / "humour"
    assert evaluate.main(["--captions", str(captions), str(best), "--labels", "greedy", "best-of-2", "--data-dir",
                          str(hic), "--scorer-cfg", str(SCORER_EVAL), "--options", f"model.ckpt={head}", "--device",
                          "cpu", "--bootstrap", "200", "--out", str(humour)]) == 0
    summary = json.loads((humour / "metrics.json").read_text())
    assert summary["paired"]["num_common_images"] == len(test_ids)
    assert "percentile" in summary["paired"]["comparisons"][0]["metrics"]
    greedy = json.loads((humour / "greedy" / "metrics.json").read_text())
    rows = [json.loads(line) for line in (humour / "greedy" / "per_caption.jsonl").read_text().splitlines()]
    humans = [json.loads(line) for line in (humour / "greedy" / "human_captions.jsonl").read_text().splitlines()]
    test_captions = {e["image_id"]: e["captions"] for e in test_split["images"]}
    assert sorted(r["image_id"] for r in rows) == sorted(test_ids)
    percentiles = []
    for row in rows:  # each percentile from the scored human captions, as defined
        mine = [h["humour_score"] for h in humans if h["image_id"] == row["image_id"]]
        assert len(mine) == len(test_captions[row["image_id"]])
        s = row["humour_score"]
        percentiles.append((sum(h < s for h in mine) + 0.5 * sum(h == s for h in mine)) / len(mine))
        assert row["percentile"] == pytest.approx(percentiles[-1])
    assert greedy["humour"]["percentile"]["mean"] == pytest.approx(sum(percentiles) / len(percentiles))
    assert greedy["warnings"] == [] and greedy["originality"]["training_captions"] > 0
    reranked_metrics = json.loads((humour / "best-of-2" / "metrics.json").read_text())
    assert "inflated by construction" in reranked_metrics["warnings"][0]  # reranked by the scorer that evaluates
    assert "inflated by construction" in (humour / "index.html").read_text()
