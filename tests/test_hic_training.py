"""Training the humour scorer through train.py on a prepared-HIC folder with a planted signal: it is
learned (held-out pairwise accuracy >= 0.8, 0.5 untrained), validated every epoch with a
checkpoint_best.pth, resumes exactly, and trains under torchrun with two CPU processes. Then the
scorer card: every required key, every number recomputed here from --scores-out, and bad input."""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import re
import shutil
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from scipy.stats import kendalltau
from transformers import BertTokenizer

from conftest import ROOT

import minigpt4  # noqa: F401  (registration)
from minigpt4.cli import evaluate, train
from minigpt4.cli.errors import run_cli
from minigpt4.humour import HumourScorer
from minigpt4.humour.metrics import tie_aware_ndcg
from minigpt4.humour.scenario import FUNNY, write_scenario

TINY_TRAIN = ROOT / "train_configs" / "hic_scorer_tiny.yaml"
TINY_EVAL = ROOT / "eval_configs" / "hic_scorer_tiny_eval.yaml"
# the fast path for the resume and torchrun tests: a frozen backbone, cached embeddings, no dropout
CACHED = ["model.train_qformer_layers=0", "run.iters_per_epoch=4", "run.batch_size_train=8", "run.log_freq=1",
          "run.warmup_steps=0"]


def run_train(data: Path, out: Path, *options: str) -> Path:
    return Path(train.main(["--cfg-path", str(TINY_TRAIN), "--options",
                            f"datasets.oxford_hic_pairs.build_info.storage={data}", f"run.output_dir={out}", *options]))


def model_state(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def epoch_lines(job: Path) -> list[dict]:
    log = (job / "log.txt").read_text()
    _, end = json.JSONDecoder().raw_decode(log)
    return [json.loads(line) for line in log[end:].splitlines() if line.strip()]


@pytest.fixture(scope="module")
def planted(tmp_path_factory, tiny_dir):
    root = tmp_path_factory.mktemp("hic_train")
    data = write_scenario(root / "hic")
    return SimpleNamespace(root=root, data=data, job=run_train(data, root / "out"))


def heldout_pairs(data: Path) -> list[tuple[str, str, str]]:
    """(image id, caption with more FUNNY words, caption with fewer) for every test image: the planted truth."""
    pairs = []
    for image in json.loads((data / "test.json").read_text())["images"]:
        captions = [c["caption"] for c in image["captions"]]
        for a, b in itertools.permutations(captions, 2):
            if sum(w in FUNNY for w in a.split()) > sum(w in FUNNY for w in b.split()):
                pairs.append((image["image_id"], a, b))
    return pairs


def heldout_accuracy(scorer: HumourScorer, data: Path) -> float:
    pairs = heldout_pairs(data)
    paths = [data / "image" / f"{i}.jpg" for i, _, _ in pairs]
    win = scorer.score(paths, [a for _, a, _ in pairs])
    lose = scorer.score(paths, [b for _, _, b in pairs])
    return ((win > lose).float().mean() + 0.5 * (win == lose).float().mean()).item()


# -- training -------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_planted_signal_is_learned_with_val_accuracy_and_best_checkpoint(planted):
    job = planted.job
    assert {"checkpoint_0.pth", "checkpoint_2.pth", "checkpoint_best.pth", "log.txt", "metrics.jsonl"} <= {
        p.name for p in job.iterdir()}
    epochs = epoch_lines(job)
    assert [e["epoch"] for e in epochs] == [0, 1, 2]
    assert all(0 <= e["val_pairwise_accuracy"] <= 1 and 0 <= e["train_pairwise_accuracy"] <= 1 for e in epochs)
    best = max(epochs, key=lambda e: e["val_pairwise_accuracy"])["epoch"]  # the first of equals, as kept
    best_state, epoch_state = model_state(job / "checkpoint_best.pth"), model_state(job / f"checkpoint_{best}.pth")
    assert all(torch.equal(best_state[k], epoch_state[k]) for k in epoch_state)
    rows = [json.loads(line) for line in (job / "metrics.jsonl").read_text().splitlines()]
    assert all("pairwise_accuracy" in r for r in rows)

    untrained = HumourScorer.from_config(TINY_EVAL)
    assert heldout_accuracy(untrained, planted.data) == 0.5  # every caption scores the same
    trained = HumourScorer.from_config(TINY_EVAL, [f"model.ckpt={job / 'checkpoint_best.pth'}"])
    assert heldout_accuracy(trained, planted.data) >= 0.8


@pytest.mark.slow
def test_exact_resume_from_a_mid_epoch_checkpoint(planted, tmp_path):
    straight = run_train(planted.data, tmp_path / "a", *CACHED, "run.max_epoch=2", "run.save_every_iters=2")
    resumed = run_train(planted.data, tmp_path / "b", *CACHED, "run.max_epoch=2",
                        f"run.resume_ckpt_path={straight / 'checkpoint_0_iter2.pth'}")
    for name in ("checkpoint_1.pth", "checkpoint_best.pth"):
        a, b = model_state(straight / name), model_state(resumed / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    assert [e["val_pairwise_accuracy"] for e in epoch_lines(resumed)] == \
           [e["val_pairwise_accuracy"] for e in epoch_lines(straight)][-len(epoch_lines(resumed)):]


@pytest.mark.slow
def test_torchrun_two_processes_match_one(planted, tmp_path):
    common = [f"datasets.oxford_hic_pairs.build_info.storage={planted.data}", *CACHED, "run.max_epoch=1"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           str(ROOT / "train.py"), "--cfg-path", str(TINY_TRAIN), "--options", f"run.output_dir={tmp_path / 'ddp'}",
           *common, "run.batch_size_train=4"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    (job,) = list((tmp_path / "ddp").iterdir())
    ddp = torch.load(job / "checkpoint_0.pth", weights_only=True)
    assert ddp["world_size"] == 2 and (job / "checkpoint_best.pth").is_file()
    assert len(epoch_lines(job)) == 1 and "val_pairwise_accuracy" in epoch_lines(job)[0]
    single = Path(train.main(["--cfg-path", str(TINY_TRAIN), "--options", f"run.output_dir={tmp_path / 'one'}", *common]))
    one = model_state(single / "checkpoint_0.pth")
    assert any(t.abs().sum() > 0 for t in one.values())  # it trained
    # two processes sum gradients in another order, and Adam's normalised steps enlarge that rounding where
    # a gradient is near zero: the weights agree to 0.1% of their size, not bit for bit
    for name, tensor in one.items():
        assert (ddp["model"][name] - tensor).norm() <= 1e-3 * tensor.norm(), name
    assert epoch_lines(job)[0]["val_pairwise_accuracy"] == epoch_lines(single)[0]["val_pairwise_accuracy"]


def test_no_pair_passing_the_margin_stops_training_with_one_error_line(tmp_path, capsys, tiny_dir):
    data = write_scenario(tmp_path / "hic")
    argv = ["--cfg-path", str(TINY_TRAIN), "--options", f"datasets.oxford_hic_pairs.build_info.storage={data}",
            f"run.output_dir={tmp_path / 'out'}", "datasets.oxford_hic_pairs.min_log_margin=40"]
    with pytest.raises(SystemExit) as exit_info:
        run_cli(train.main, argv)
    stderr = capsys.readouterr().err
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]  # the rest is the INFO log
    assert exit_info.value.code == 2 and len(errors) == 1 and "Traceback" not in stderr
    assert re.search(r"no caption pair passes the margin: saw \d+ captions of 36 images.*relax min_log_margin", errors[0])
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


# -- the scorer card ------------------------------------------------------------------------------------
def card_pairs(rows: list[dict]) -> dict[str, list[tuple[dict, dict]]]:
    """Within-image pairs (winner, loser) of human rows, by the default margin rule, per image."""
    by_image = defaultdict(list)
    for r in rows:
        by_image[r["image_id"]].append(r)
    pairs = {}
    for image_id, caps in by_image.items():
        found = [(a, b) for a, b in itertools.permutations(caps, 2)
                 if a["funny_score"] >= 1 and math.log1p(a["funny_score"]) - math.log1p(b["funny_score"]) >= math.log(2)]
        if found:
            pairs[image_id] = found
    return pairs


def accuracy(pairs: dict, key=lambda r: r["score"]) -> float:
    flat = [(key(a), key(b)) for found in pairs.values() for a, b in found]
    return sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in flat) / len(flat)


def select(rows, scorer, kind):
    return [r for r in rows if r["scorer"] == scorer and r["kind"] == kind]


@pytest.mark.slow
def test_scorer_card_writes_every_key_and_recomputes_from_scores_out(planted, tmp_path):
    ckpt = planted.job / "checkpoint_best.pth"
    out, scores = tmp_path / "report", tmp_path / "scores.jsonl"
    assert evaluate.main(["--scorer-card", "--scorer-cfg", str(TINY_EVAL), "--options", f"model.ckpt={ckpt}",
                          "--data-dir", str(planted.data), "--out", str(out), "--scores-out", str(scores),
                          "--baseline-cfg", str(TINY_EVAL), "--baseline-options", "model.use_image=False",
                          "--bootstrap", "300"]) == 0
    card = json.loads((out / "scorer_card.json").read_text())
    for dotted in ("pairwise_accuracy", "ci95", "num_pairs", "num_images", "kendall_tau", "ndcg", "top1_accuracy",
                   "mismatch_accuracy", "baselines.length.pairwise_accuracy", "baselines.random.pairwise_accuracy",
                   "scorer.cfg", "scorer.ckpt_sha256"):
        node = card
        for part in dotted.split("."):
            node = node[part]
        assert node is not None, dotted
    assert card["scorer"]["cfg"] == str(TINY_EVAL)
    assert card["scorer"]["ckpt_sha256"] == hashlib.sha256(ckpt.read_bytes()).hexdigest()
    assert "Humour scorer card" in (out / "scorer_card.html").read_text()

    rows = [json.loads(line) for line in scores.read_text().splitlines()]
    human = select(rows, "main", "human")
    test_images = json.loads((planted.data / "test.json").read_text())["images"]
    assert len(human) == sum(len(i["captions"]) for i in test_images)
    pairs = card_pairs(human)
    assert card["num_pairs"] == sum(map(len, pairs.values())) and card["num_images"] == len(pairs)
    assert card["pairwise_accuracy"] == pytest.approx(accuracy(pairs))
    assert card["ci95"][0] <= card["pairwise_accuracy"] <= card["ci95"][1]
    assert card["pairwise_accuracy"] >= 0.8
    length = accuracy(pairs, key=lambda r: len(r["caption"].split()))
    assert card["baselines"]["length"]["pairwise_accuracy"] == pytest.approx(max(length, 1 - length))
    assert card["baselines"]["random"]["pairwise_accuracy"] == 0.5
    caption_only = card_pairs(select(rows, "baseline", "human"))
    assert card["baselines"]["caption_only"]["pairwise_accuracy"] == pytest.approx(accuracy(caption_only)) == 0.5
    shuffled = select(rows, "main", "shuffled")
    assert all(r["image_id"] != r["caption_image_id"] for r in shuffled)
    regrouped = card_pairs([dict(r, image_id=r["caption_image_id"]) for r in shuffled])
    assert card["baselines"]["shuffled_images"]["pairwise_accuracy"] == pytest.approx(accuracy(regrouped))

    by_image = defaultdict(list)
    for r in human:
        by_image[r["image_id"]].append(r)
    taus, tops, ndcgs = [], [], []
    for caps in by_image.values():
        funny, score = [c["funny_score"] for c in caps], [c["score"] for c in caps]
        taus.append(kendalltau(funny, score).statistic)
        tops.append(funny[score.index(max(score))] == max(funny))
        order = sorted(range(len(caps)), key=lambda i: -score[i])  # trained scores: no ties
        dcg = sum(math.log1p(funny[i]) / math.log2(rank + 2) for rank, i in enumerate(order))
        ndcgs.append(dcg / sum(g / math.log2(r + 2) for r, g in enumerate(sorted(map(math.log1p, funny), reverse=True))))
    assert len(set(r["score"] for r in human)) == len(human)
    assert card["kendall_tau"] == pytest.approx(sum(taus) / len(taus))
    assert card["top1_accuracy"] == pytest.approx(sum(tops) / len(tops))
    assert card["ndcg"] == pytest.approx(sum(ndcgs) / len(ndcgs))
    best = {r["image_id"]: r["score"] for r in human if r["caption_index"] == 0}
    mismatch = select(rows, "main", "mismatch")
    assert mismatch and all(r["caption_image_id"] != r["image_id"] for r in mismatch)
    assert card["mismatch_accuracy"] == pytest.approx(
        sum(1.0 if best[r["image_id"]] > r["score"] else 0.5 if best[r["image_id"]] == r["score"] else 0.0
            for r in mismatch) / len(mismatch))


def test_tie_aware_ndcg_is_the_mean_over_tie_orders():
    gains, scores = [3.0, 1.0, 0.0, 2.0], [0.5, 0.5, 0.1, 0.5]  # three captions tied on top
    ideal = sum(g / math.log2(r + 2) for r, g in enumerate(sorted(gains, reverse=True)))
    orders = [list(p) + [2] for p in itertools.permutations([0, 1, 3])]
    expected = sum(sum(gains[i] / math.log2(r + 2) for r, i in enumerate(o)) for o in orders) / len(orders) / ideal
    assert tie_aware_ndcg(gains, scores) == pytest.approx(expected)
    assert tie_aware_ndcg(gains, [1.0] * 4) < 1.0  # a constant scorer does not look perfect


def test_card_counts_unreadable_images_and_truncated_captions(tmp_path, tiny_dir):
    data = write_scenario(tmp_path / "hic")
    test_images = json.loads((data / "test.json").read_text())["images"]
    broken = test_images[0]
    (data / "image" / f"{broken['image_id']}.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    out = tmp_path / "report"
    assert evaluate.main(["--scorer-card", "--scorer-cfg", str(TINY_EVAL), "--options", "model.max_txt_len=8",
                          "--data-dir", str(data), "--out", str(out), "--bootstrap", "50"]) == 0
    card = json.loads((out / "scorer_card.json").read_text())
    skipped = card["skipped"]
    assert skipped["unreadable_images"] == 1 and skipped["unreadable_image_ids"] == [broken["image_id"]]
    rows = [{"image_id": i["image_id"], "caption": c["caption"], "funny_score": c["funny_score"], "score": 0}
            for i in test_images for c in i["captions"]]
    lost = card_pairs([r for r in rows if r["image_id"] == broken["image_id"]])
    kept = card_pairs([r for r in rows if r["image_id"] != broken["image_id"]])
    assert skipped["pairs_of_unreadable_images"] == sum(map(len, lost.values())) > 0
    assert card["num_pairs"] == sum(map(len, kept.values())) and card["pairwise_accuracy"] == 0.5
    tokenizer = BertTokenizer.from_pretrained(str(tiny_dir / "bert_tokenizer"))
    captions = {c["caption"] for i in test_images[1:] for c in i["captions"]}
    long = [c for c in captions if len(tokenizer(c)["input_ids"]) > 8]
    assert skipped["truncated_captions"] == len(long) > 0 and skipped["max_txt_len"] == 8


def test_card_of_a_folder_without_selected_jsonl_is_one_error_line(tmp_path, capsys, tiny_dir):
    shutil.copytree(write_scenario(tmp_path / "hic"), tmp_path / "bare")
    (tmp_path / "bare" / "selected.jsonl").unlink()
    with pytest.raises(SystemExit) as exit_info:
        run_cli(evaluate.main, ["--scorer-card", "--scorer-cfg", str(TINY_EVAL), "--data-dir", str(tmp_path / "bare"),
                                "--out", str(tmp_path / "report")])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 1 and "selected.jsonl not found" in err[0]
    assert not (tmp_path / "report").exists()
