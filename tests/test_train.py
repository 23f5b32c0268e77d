"""Training: one step on the tiny model, the tiny stage-2 config end to end, exact resume, torchrun
with two CPU processes, and the run-config checks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import ROOT, make_config

sys.path.insert(0, str(ROOT))
import train  # noqa: E402

import minigpt4  # noqa: E402,F401
from minigpt4.common.errors import ConfigError  # noqa: E402
from minigpt4.common.optims import build_optimizer  # noqa: E402
from minigpt4.common.registry import registry  # noqa: E402
from minigpt4.runners.runner_base import create_job_dir  # noqa: E402

TINY = ROOT / "train_configs" / "minigpt4_tiny_finetune.yaml"
ORIGINAL_KEYS = {"model", "optimizer", "config", "scaler", "epoch"}


def run_train(out: Path, *options: str) -> Path:
    return Path(train.main(["--cfg-path", str(TINY), "--options", f"run.output_dir={out}", "run.log_freq=2", *options]))


def build_model(options=None):
    cfg = make_config(TINY, options)
    return cfg, registry.get_model_class("mini_gpt4").from_config(cfg.model_cfg, device="cpu")


def example_batch(n=4):
    from minigpt4.processors import Blip2ImageEvalProcessor
    from PIL import Image

    anns = json.loads((ROOT / "examples" / "filter_cap.json").read_text())["annotations"][:n]
    proc = Blip2ImageEvalProcessor(224)
    images = torch.stack([proc(Image.open(ROOT / "examples" / "image" / f"{a['image_id']}.jpg").convert("RGB")) for a in anns])
    return {"image": images, "text_input": [a["caption"] for a in anns]}


def fixed_prompt_loss(model, batch) -> float:
    model.prompt_list = model.prompt_list[:1]  # no random prompt choice
    with torch.no_grad():
        return model(batch)["loss"].item()


def trainable(path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def test_one_step_updates_only_trainable_parameters(tiny_dir):
    _, model = build_model()
    model.train()
    frozen_before = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    trainable_before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    assert set(trainable_before) == {"llama_proj.weight", "llama_proj.bias"}
    optimizer = build_optimizer(model, make_config(TINY).run_cfg)
    loss = model(example_batch(2))["loss"]
    loss.backward()
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert p.grad is None, name
    optimizer.step()
    # the frozen ViT and Q-Former stay in eval mode; the frozen LLM follows train() as in the original
    # (its requires_grad is off and LLaMA has no dropout)
    assert not model.visual_encoder.training and not model.ln_vision.training and not model.Qformer.training
    assert model.llama_proj.training
    for name, p in model.named_parameters():
        if name in frozen_before:
            assert torch.equal(p, frozen_before[name]), name
        else:
            assert not torch.equal(p, trainable_before[name]), name


@pytest.mark.slow
def test_tiny_config_trains_and_checkpoints(tmp_path, tiny_dir):
    out = run_train(tmp_path / "out", "run.max_epoch=2", "run.iters_per_epoch=10", "run.warmup_steps=3")
    files = sorted(p.name for p in out.iterdir())
    assert files == ["checkpoint_0.pth", "checkpoint_1.pth", "log.txt", "loss_lr.png", "metrics.jsonl"]
    assert out.parent == tmp_path / "out"

    ckpt = torch.load(out / "checkpoint_1.pth", map_location="cpu", weights_only=True)
    assert ORIGINAL_KEYS <= set(ckpt) and ckpt["epoch"] == 1 and ckpt["scaler"] is None
    _, initial = build_model()
    assert set(ckpt["model"]) == set(initial.trainable_state_dict()) == {"llama_proj.weight", "llama_proj.bias"}
    assert len(ckpt["optimizer"]["param_groups"]) == 2

    log = (out / "log.txt").read_text()
    config, end = json.JSONDecoder().raw_decode(log)  # the config, pretty-printed, then one line per epoch
    assert config["run"]["max_epoch"] == 2
    epochs = [json.loads(line) for line in log[end:].splitlines() if line.strip()]
    assert [e["epoch"] for e in epochs] == [0, 1] and all(isinstance(e["train_loss"], float) for e in epochs)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert {"epoch", "iter", "loss", "lr", "samples_per_s"} <= set(rows[0]) and rows[-1]["iter"] == 9

    # the trained projection loads back through model.ckpt and lowers the loss on a fixed batch
    _, trained = build_model([f"model.ckpt={out / 'checkpoint_1.pth'}"])
    for name, tensor in ckpt["model"].items():
        assert torch.equal(dict(trained.named_parameters())[name], tensor)
    batch = example_batch(12)
    before, after = fixed_prompt_loss(initial, batch), fixed_prompt_loss(trained, batch)
    print(f"fixed-batch loss before {before:.4f} after {after:.4f}")
    assert after < before - 0.2  # 7.36 -> 6.90 on the tiny model


@pytest.mark.slow
def test_exact_resume(tmp_path, tiny_dir):
    common = ["run.max_epoch=2", "run.iters_per_epoch=4", "run.batch_size_train=2", "run.warmup_steps=2"]
    # 12 images / batch 2 = 6 batches per data pass: the second epoch crosses a reshuffle
    straight = run_train(tmp_path / "a", *common, "run.save_every_iters=3")
    assert (straight / "checkpoint_0_iter3.pth").exists() and (straight / "checkpoint_1_iter3.pth").exists()
    final = trainable(straight / "checkpoint_1.pth")

    after_epoch = run_train(tmp_path / "b", *common, f"run.resume_ckpt_path={straight / 'checkpoint_0.pth'}")
    assert not (after_epoch / "checkpoint_0.pth").exists()
    # mid-epoch, and with loader workers: samples are seeded per index, not per worker
    mid_epoch = run_train(tmp_path / "c", *common, "run.num_workers=2",
                          f"run.resume_ckpt_path={straight / 'checkpoint_0_iter3.pth'}")
    for resumed in (after_epoch, mid_epoch):
        weights = trainable(resumed / "checkpoint_1.pth")
        for name in final:
            assert torch.equal(weights[name], final[name]), (resumed, name)
    opt_a = torch.load(straight / "checkpoint_1.pth", weights_only=True)["optimizer"]["state"]
    opt_c = torch.load(mid_epoch / "checkpoint_1.pth", weights_only=True)["optimizer"]["state"]
    assert all(torch.equal(opt_a[k]["exp_avg_sq"], opt_c[k]["exp_avg_sq"]) for k in opt_a)


@pytest.mark.slow
def test_torchrun_two_processes_match_one(tmp_path, tiny_dir):
    data = tmp_path / "data"
    (data / "image").mkdir(parents=True)
    anns = json.loads((ROOT / "examples" / "filter_cap.json").read_text())["annotations"]
    for a in anns:
        (data / "image" / f"{a['image_id']}.jpg").write_bytes((ROOT / "examples" / "image" / f"{a['image_id']}.jpg").read_bytes())
    # equal caption lengths: the per-process mean losses then average to the global mean
    (data / "filter_cap.json").write_text(json.dumps({"annotations": [
        {"image_id": a["image_id"], "caption": "A very funny picture."} for a in anns]}))
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("<Img><ImageHere></Img> Describe this image in a funny way.")
    common = [
        f"datasets.cc_sbu_align.build_info.storage={data}", "datasets.cc_sbu_align.vis_processor.train.name=blip2_image_eval",
        f"model.prompt_path={prompt}", "run.max_epoch=1", "run.iters_per_epoch=3", "run.warmup_steps=1", "run.log_freq=1",
    ]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           str(ROOT / "train.py"), "--cfg-path", str(TINY), "--options", f"run.output_dir={tmp_path / 'ddp'}",
           "run.batch_size_train=2", *common]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    jobs = list((tmp_path / "ddp").iterdir())
    assert len(jobs) == 1  # one job folder, shared by both ranks
    assert sorted(p.name for p in jobs[0].iterdir()) == ["checkpoint_0.pth", "log.txt", "loss_lr.png", "metrics.jsonl"]
    assert (jobs[0] / "log.txt").read_text().count('"epoch": 0,') == 1  # written once
    ddp = torch.load(jobs[0] / "checkpoint_0.pth", weights_only=True)
    assert ddp["world_size"] == 2 and len(ddp["rng_states"]) == 2

    single = run_train(tmp_path / "one", "run.batch_size_train=4", *common)
    one = trainable(single / "checkpoint_0.pth")
    _, initial = build_model()
    for name, tensor in one.items():
        assert not torch.equal(tensor, initial.trainable_state_dict()[name])
        torch.testing.assert_close(ddp["model"][name], tensor, rtol=0, atol=1e-5)


def test_unknown_run_key_names_key_and_file(tmp_path):
    with pytest.raises(ConfigError, match=r"run\.init_learning_rate.*--options"):
        train.main(["--cfg-path", str(TINY), "--options", "run.init_learning_rate=1"])
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(TINY.read_text().replace("  seed: 42", "  sead: 42"))
    with pytest.raises(ConfigError, match=rf"run\.sead.*{cfg.name}.*'seed'"):
        train.main(["--cfg-path", str(cfg)])


def test_job_ids_are_unique(tmp_path):
    ids = {create_job_dir(str(tmp_path))[0] for _ in range(3)}
    assert len(ids) == 3 and len(list(tmp_path.iterdir())) == 3


def test_shipped_train_configs_load():
    for path in sorted((ROOT / "train_configs").glob("*.yaml")):
        cfg = make_config(path, check_paths=False)
        from minigpt4.runners.runner_base import check_run_config

        check_run_config(cfg)
    cfg = make_config(ROOT / "train_configs" / "minigpt4_stage2_finetune.yaml", check_paths=False)
    run, model = cfg.run_cfg, cfg.model_cfg
    assert (run.init_lr, run.min_lr, run.warmup_lr, run.warmup_steps, run.weight_decay) == (3e-5, 1e-5, 1e-6, 200, 0.05)
    assert (run.max_epoch, run.iters_per_epoch, run.batch_size_train, run.amp, run.seed) == (30, 3000, 12, True, 42)
    assert (model.max_txt_len, model.end_sym, model.prompt_template) == (160, "###", "###Human: {} ###Assistant: ")
    assert model.ckpt.startswith("/path/to/") and cfg.datasets_cfg.cc_sbu_align.build_info.storage.startswith("/path/to/")
    with pytest.raises(ConfigError, match="placeholder"):
        make_config(ROOT / "train_configs" / "minigpt4_stage2_finetune.yaml")
