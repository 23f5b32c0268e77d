"""Validation while training: the validation loss against a direct computation, a tiny PC-loss run
with validation, checkpoint_best.pth, sample captions and TensorBoard every epoch (the event file read
back with tensorboard's own reader), run.keep_checkpoints, and the bad-input errors."""

from __future__ import annotations

import json
import logging
import random
import sys

import pytest
import torch

from conftest import ROOT, TINY_RANDOM_EVAL, make_config
from research_helpers import TINY_PC, run_tiny, small_hic, trained_tensors

from minigpt4.constants import DEFAULT_PROMPT
from minigpt4.common.errors import ConfigError
from minigpt4.datasets.datasets.hic_eval_dataset import HICEvalDataset
from minigpt4.inference.batch import BatchCaptioner, GenerationSettings
from minigpt4.inference.records import read_caption_file
from minigpt4.models import MiniGPT4
from minigpt4.processors import Blip2ImageEvalProcessor
from minigpt4.runners import job, samples
from minigpt4.runners.run_config import build_run_config, check_valid_splits
from minigpt4.tasks import setup_task
from minigpt4.tasks.image_text_pretrain import ImageTextPretrainTask

TINY = ROOT / "train_configs" / "minigpt4_tiny_finetune.yaml"


@pytest.fixture(scope="module")
def hic(tmp_path_factory):
    return small_hic(tmp_path_factory.mktemp("hic"))


def test_validation_loss_is_the_mean_token_cross_entropy(tiny_model, hic):
    model = tiny_model
    val = HICEvalDataset(Blip2ImageEvalProcessor(224), hic, "val")
    assert [len(image.captions) for image in val.images] == [2, 2, 2]
    torch_state, python_state = torch.get_rng_state(), random.getstate()
    numbers = ImageTextPretrainTask().validate(model, {"oxford_hic": {"val": val}}, ["val"], batch_size=4)
    assert torch.equal(torch.get_rng_state(), torch_state) and random.getstate() == python_state  # no draw
    assert not model.training

    # directly: pair k (image by image, caption by caption) asked prompt k mod 4, one pair at a time,
    # weighted by its number of caption tokens; transformers' own causal-LM loss per pair
    total, tokens, k = 0.0, 0, 0
    for i, image in enumerate(val.images):
        for caption in image.captions:
            sample = {"image": val[i]["image"][None], "text_input": [caption.caption]}
            with torch.no_grad():
                inputs = model.build_training_inputs(sample, prompt=model.prompt_list[k % len(model.prompt_list)])
                count = int((inputs["labels"][:, 1:] != -100).sum())
                total += model.llama_model(**inputs).loss.item() * count
            tokens, k = tokens + count, k + 1
    assert numbers["val_captions"] == 6 and numbers["val_tokens"] == tokens
    assert numbers["val_loss"] == pytest.approx(total / tokens, rel=1e-5)
    # the same for another batch size
    again = ImageTextPretrainTask().validate(model, {"oxford_hic": {"val": val}}, ["val"], batch_size=1)
    assert again["val_loss"] == pytest.approx(numbers["val_loss"], rel=1e-5)


@pytest.mark.slow
def test_tiny_pc_run_validates_samples_and_logs_to_tensorboard(tmp_path, tiny_dir, hic):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = run_tiny(TINY_PC, tmp_path / "out", hic, "run.max_epoch=2", "run.iters_per_epoch=4", "run.warmup_steps=1",
                   "run.sample_captions=5", "run.tensorboard=True", "run.keep_checkpoints=1")
    names = {p.name for p in out.iterdir()}
    assert {"checkpoint_1.pth", "checkpoint_best.pth", "samples", "tb", "log.txt", "metrics.jsonl", "loss_lr.png"} <= names
    assert "checkpoint_0.pth" not in names  # run.keep_checkpoints=1

    log = (out / "log.txt").read_text()
    _, end = json.JSONDecoder().raw_decode(log)
    epochs = [json.loads(line) for line in log[end:].splitlines() if line.strip()]
    assert [e["epoch"] for e in epochs] == [0, 1] and all(e["val_captions"] == 6 for e in epochs)
    best_epoch = min(epochs, key=lambda e: e["val_loss"])["epoch"]
    best = torch.load(out / "checkpoint_best.pth", weights_only=True)
    assert best["epoch"] == best_epoch and best["best"]["metric"] == "val_loss"
    assert best["best"]["value"] == pytest.approx(min(e["val_loss"] for e in epochs))

    # sample captions: the 3 val images (5 asked for), caption.py's record format, the epoch's weights
    val_ids = [image["image_id"] for image in json.loads((hic / "val.json").read_text())["images"]]
    files = sorted((out / "samples").iterdir())
    assert [p.name for p in files] == ["epoch_000.jsonl", "epoch_001.jsonl"]
    records = read_caption_file(files[1]).records
    assert [r.image_id for r in records] == val_ids and {r.prompt for r in records} == {DEFAULT_PROMPT}
    assert records[0].settings["do_sample"] is False and records[0].model["epoch"] == 1
    trained = MiniGPT4.from_config(make_config(TINY_RANDOM_EVAL, ["model.loss=pc", f"model.ckpt={out / 'checkpoint_1.pth'}"]).model_cfg)
    trained.eval()
    direct = BatchCaptioner(trained, Blip2ImageEvalProcessor(224), "cpu").generate(
        [str(hic / "image" / f"{i}.jpg") for i in val_ids], DEFAULT_PROMPT, GenerationSettings())
    assert [r.caption for r in records] == [caps[0].text for caps in direct]

    # TensorBoard: the scalars of metrics.jsonl and log.txt, and the samples as text
    events = EventAccumulator(str(out / "tb"))
    events.Reload()
    tags = events.Tags()
    assert {"train/loss", "train/lr", "train/grad_norm", "train/samples_per_s", "val/val_loss"} <= set(tags["scalars"])
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    logged = events.Scalars("train/loss")
    assert [e.step for e in logged] == [r["step"] for r in rows]
    assert [e.value for e in logged] == pytest.approx([r["loss"] for r in rows], rel=1e-6)
    assert [e.value for e in events.Scalars("val/val_loss")] == pytest.approx([e["val_loss"] for e in epochs])
    assert all(r["grad_norm"] > 0 for r in rows)
    text = events.Tensors("samples/text_summary")[-1].tensor_proto.string_val[0].decode()
    assert text.startswith("epoch 1") and val_ids[0] in text
    assert trained_tensors(out / "checkpoint_1.pth").keys() == {"llama_proj.weight", "llama_proj.bias"}


def test_keep_checkpoints_removes_older_epochs(tmp_path):
    for name in ("checkpoint_0.pth", "checkpoint_0_iter2.pth", "checkpoint_1.pth", "checkpoint_2_iter2.pth",
                 "checkpoint_2.pth", "checkpoint_best.pth", "log.txt"):
        (tmp_path / name).write_bytes(b"x")
    assert job.prune_checkpoints(tmp_path, None, 2) == []
    removed = job.prune_checkpoints(tmp_path, 2, 2)
    assert sorted(p.name for p in removed) == ["checkpoint_0.pth", "checkpoint_0_iter2.pth"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_1.pth", "checkpoint_2.pth", "checkpoint_2_iter2.pth",
                                                          "checkpoint_best.pth", "log.txt"]


# -- bad input ----------------------------------------------------------------------------------------
def test_valid_splits_must_name_a_split_a_dataset_has(tiny_dir):
    cfg = make_config(TINY, ["run.valid_splits=[val]"])
    datasets = setup_task(cfg).build_datasets(cfg)
    with pytest.raises(ConfigError, match=r"run\.valid_splits \(set in --options\) names 'val', which no dataset has: "
                                          r"cc_sbu_align has train\. .*oxford_hic.*val\.json"):
        check_valid_splits(build_run_config(cfg), datasets, cfg.origin)


def test_sample_captions_and_tensorboard_errors(monkeypatch):
    import minigpt4.runners  # noqa: F401  (registers the runner)

    with pytest.raises(ConfigError, match=r"run\.sample_captions \(set in --options\) captions validation images: set "
                                          r"run\.valid_splits too"):
        build_run_config(make_config(TINY, ["run.sample_captions=2"], check_paths=False))
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # as if tensorboard were not installed
    with pytest.raises(ConfigError, match=r"run\.tensorboard .* needs the tensorboard package: pip install -e "
                                          r"'\.\[tensorboard\]'"):
        build_run_config(make_config(TINY, ["run.tensorboard=True"], check_paths=False))
    with pytest.raises(ConfigError, match=r"run\.keep_checkpoints .* at least 1"):
        build_run_config(make_config(TINY, ["run.keep_checkpoints=0"], check_paths=False))


def test_more_sample_captions_than_val_images_uses_all_and_says_so(tiny_model, hic, caplog):
    cfg = make_config(TINY, ["run.valid_splits=[val]", "run.sample_captions=10"], check_paths=False)
    val = HICEvalDataset(Blip2ImageEvalProcessor(224), hic, "val")
    with caplog.at_level(logging.WARNING):
        count = samples.check_samples(build_run_config(cfg), tiny_model, {"oxford_hic": {"val": val}}, cfg.origin)
    assert count == 3 and "run.sample_captions is 10 but the val split has 3 images: captioning all of them" in caplog.text


def test_merge_lora_is_refused_for_training(tiny_dir):
    cfg = make_config(TINY, ["model.lora={r: 4}", "model.merge_lora=True"])
    with pytest.raises(ConfigError, match=r"model\.merge_lora is for inference"):
        setup_task(cfg).build_model(cfg)
