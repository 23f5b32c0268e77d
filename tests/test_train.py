"""Training: one step on the tiny model, the tiny stage-2 config end to end, exact resume, torchrun
with two CPU processes, the typed run section, resume checks and train.py's error style."""

from __future__ import annotations

import json
import logging
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import ROOT, make_config

import minigpt4  # noqa: F401
from minigpt4.cli import train
from minigpt4.common.errors import CheckpointError, ConfigError
from minigpt4.common.optims import build_optimizer
from minigpt4.common.registry import registry
from minigpt4.runners import RunnerBase
from minigpt4.runners.job import create_job_dir
from minigpt4.runners.run_config import RunConfig, build_run_config, changed_run_keys
from minigpt4.tasks import setup_task

TINY = ROOT / "train_configs" / "minigpt4_tiny_finetune.yaml"
STAGE2 = ROOT / "train_configs" / "minigpt4_stage2_finetune.yaml"
ORIGINAL_KEYS = {"model", "optimizer", "config", "scaler", "epoch"}


def run_train(out: Path, *options: str) -> Path:
    return Path(train.main(["--cfg-path", str(TINY), "--options", f"run.output_dir={out}", "run.log_freq=2", *options]))


def build_model(options=None):
    cfg = make_config(TINY, options)
    return cfg, registry.get_model_class("mini_gpt4").from_config(cfg.model_cfg, device="cpu")


def make_runner(*options) -> RunnerBase:
    """A runner on the tiny config, built without ``from_config`` (which resets logging)."""
    cfg = make_config(TINY, list(options))
    task = setup_task(cfg)
    return RunnerBase(cfg, task, task.build_model(cfg, device="cpu"), task.build_datasets(cfg))


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
    cfg, model = build_model()
    model.train()
    frozen_before = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    trainable_before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    assert set(trainable_before) == {"llama_proj.weight", "llama_proj.bias"}
    run = build_run_config(cfg)
    optimizer = build_optimizer(model, run.init_lr, run.weight_decay, run.beta2)
    assert optimizer.defaults["betas"] == (0.9, 0.999)  # the original's default beta2
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

    # past max_epoch there is nothing left to train: an error naming the file, and no job folder
    with pytest.raises(ConfigError, match=r"checkpoint_1\.pth.*nothing is left to train.*run\.max_epoch"):
        run_train(tmp_path / "d", *common, f"run.resume_ckpt_path={straight / 'checkpoint_1.pth'}")
    assert not (tmp_path / "d").exists() or not any((tmp_path / "d").iterdir())


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


def test_job_ids_are_unique(tmp_path):
    ids = {create_job_dir(str(tmp_path))[0] for _ in range(3)}
    assert len(ids) == 3 and len(list(tmp_path.iterdir())) == 3


# -- the typed run section ---------------------------------------------------------------------------
def test_shipped_train_configs_load_without_warnings(caplog):
    import minigpt4.runners  # noqa: F401  (registers the runner)

    for path in sorted((ROOT / "train_configs").glob("*.yaml")):
        with caplog.at_level(logging.WARNING):
            run = build_run_config(make_config(path, check_paths=False))
        assert isinstance(run, RunConfig)
        assert "not read" not in caplog.text, path  # the shipped configs set no ignored key
    cfg = make_config(STAGE2, check_paths=False)
    run, model = build_run_config(cfg), cfg.model_cfg
    assert (run.init_lr, run.min_lr, run.warmup_lr, run.warmup_steps, run.weight_decay) == (3e-5, 1e-5, 1e-6, 200, 0.05)
    assert (run.max_epoch, run.iters_per_epoch, run.batch_size_train, run.amp, run.seed) == (30, 3000, 12, True, 42)
    assert (run.lr_sched, run.beta2, run.accum_grad_iters, run.num_workers) == ("linear_warmup_cosine_lr", 0.999, 1, 4)
    assert (model.max_txt_len, model.end_sym, model.prompt_template) == (160, "###", "###Human: {} ###Assistant: ")
    # the HIC data by its name: the oxford_hic builder trains on filter_cap.json as cc_sbu_align does
    assert model.ckpt.startswith("/path/to/") and cfg.datasets_cfg.oxford_hic.build_info.storage.startswith("/path/to/")
    with pytest.raises(ConfigError, match="placeholder"):
        make_config(STAGE2)


def test_original_run_keys_load_with_one_warning(tmp_path, caplog):
    ignored = ["test_splits: [test]", "k_test: 128", "max_iters: 9", "num_beams: 5", "distributed: True", "world_size: 1"]
    cfg_path = tmp_path / "original.yaml"
    cfg_path.write_text(STAGE2.read_text().replace("  dist_url:", "\n".join("  " + k for k in ignored) + "\n  dist_url:"))
    with caplog.at_level(logging.WARNING):
        run = build_run_config(make_config(cfg_path, check_paths=False))
    warnings = [r.getMessage() for r in caplog.records if "not read" in r.getMessage()]
    assert len(warnings) == 1
    for key in ("test_splits", "k_test", "max_iters", "num_beams", "distributed", "world_size"):
        assert f"run.{key}" in warnings[0]
    assert run.batch_size_train == 12 and not hasattr(run, "world_size")


def test_unknown_run_key_names_key_and_file(tmp_path):
    with pytest.raises(ConfigError, match=r"run\.init_learning_rate.*--options"):
        train.main(["--cfg-path", str(TINY), "--options", "run.init_learning_rate=1"])
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(TINY.read_text().replace("  seed: 42", "  sead: 42"))
    with pytest.raises(ConfigError, match=rf"run\.sead.*{cfg.name}.*'seed'"):
        train.main(["--cfg-path", str(cfg)])


@pytest.mark.parametrize("option,match", [
    ("run.iters_per_epoch=0", r"run\.iters_per_epoch \(set in --options\) must be at least 1; got 0"),
    ("run.max_epoch=-1", r"run\.max_epoch \(set in --options\) must be at least 1; got -1"),
    ("run.batch_size_train=0", r"run\.batch_size_train .* at least 1"),
    ("run.accum_grad_iters=0", r"run\.accum_grad_iters .* at least 1"),
    ("run.num_workers=-2", r"run\.num_workers .* at least 0"),
    ("run.init_lr=0", r"run\.init_lr .* greater than 0"),
    ("run.max_epoch=two", r"run\.max_epoch \(set in --options\) must be an integer; got 'two'"),
    ("run.amp=maybe", r"run\.amp .* True or False"),
    ("run.lr_sched=cosine", r"run\.lr_sched .*linear_warmup_cosine_lr"),
    ("run.task=captioning", r"run\.task .*image_text_pretrain"),
    ("run.train_splits=[val]", r"run\.train_splits .*'train'"),
])
def test_bad_run_values_name_the_key(option, match):
    import minigpt4.runners  # noqa: F401

    with pytest.raises(ConfigError, match=match):
        build_run_config(make_config(TINY, [option], check_paths=False))


def test_bad_run_values_in_yaml_name_the_file(tmp_path):
    import minigpt4.runners  # noqa: F401

    cfg = tmp_path / "fast.yaml"
    cfg.write_text(TINY.read_text().replace("  init_lr: 1e-2", '  init_lr: "fast"'))
    with pytest.raises(ConfigError, match=r"run\.init_lr \(set in .*fast\.yaml\) must be a number; got 'fast'"):
        build_run_config(make_config(cfg, check_paths=False))
    cfg.write_text(TINY.read_text().replace("  seed: 42\n", ""))
    with pytest.raises(ConfigError, match=r"run\.seed is required for training.*fast\.yaml"):
        build_run_config(make_config(cfg, check_paths=False))


def test_train_cli_user_error_is_one_line_and_leaves_no_job_folder(tmp_path, capsys, tiny_dir):
    out = tmp_path / "out"
    argv = ["--cfg-path", str(TINY), "--options", f"run.output_dir={out}", f"run.resume_ckpt_path={tmp_path / 'nope.pth'}"]
    with pytest.raises(SystemExit) as exit_info:
        train.cli(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err  # logs above, then one error line
    assert err.strip().splitlines()[-1].startswith("error: run.resume_ckpt_path") and "nope.pth" in err.splitlines()[-1]
    assert sum(line.startswith("error:") for line in err.splitlines()) == 1
    assert not out.exists() or not any(out.iterdir())  # no empty job folder
    with pytest.raises(SystemExit) as exit_info:
        train.cli(["--cfg-path", str(TINY), "--options", "run.max_epoch=0"])
    assert exit_info.value.code == 2 and capsys.readouterr().err.splitlines()[-1].startswith("error: run.max_epoch")


# -- resume checks -------------------------------------------------------------------------------------
class _Touch:
    """Unpickling this creates a file: a stand-in for a malicious checkpoint."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_resume_errors_name_the_file_and_the_fix(tmp_path, tiny_dir):
    runner = make_runner()
    folder = tmp_path / "job"
    folder.mkdir()
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"\x00not a checkpoint at all")
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pth"
    evil.write_bytes(pickle.dumps({"model": {}, "optimizer": _Touch(marker), "epoch": 0}, protocol=2))
    no_epoch = tmp_path / "no_epoch.pth"
    torch.save({"model": runner.unwrapped_model.trainable_state_dict(), "optimizer": runner.optimizer.state_dict()},
               no_epoch)
    cases = [
        (tmp_path / "missing.pth", "does not exist"),
        (folder, "is a folder"),
        (tmp_path / ("x" * 300 + ".pth"), "cannot be used|does not exist"),  # "File name too long" (Python >= 3.13: absent)
        (Path(os.devnull), "not a regular file"),
        (tiny_dir / "minigpt4.pth", r"holds model weights only.*not a resume point.*model\.ckpt="),  # a model.ckpt
        (garbage, "garbage.pth"),
        (evil, "evil.pth"),
        (no_epoch, r"has no 'epoch' entry.*not a resume point"),
    ]
    for path, match in cases:
        with pytest.raises(CheckpointError, match=match) as info:
            runner.resume(str(path))
        assert str(path) in str(info.value), path
        assert "weights_only=False" not in str(info.value)
    assert not marker.exists()


def test_resume_warns_on_every_changed_run_key(tmp_path, tiny_dir, caplog):
    runner = make_runner("run.max_epoch=2", "run.iters_per_epoch=4", f"run.output_dir={tmp_path}")
    runner.open_job()
    runner.save_checkpoint(0, iters_done=4)
    ckpt = runner.output_dir / "checkpoint_0.pth"
    resumed = make_runner("run.max_epoch=2", "run.iters_per_epoch=4", "run.batch_size_train=2", "run.seed=7",
                          "run.init_lr=0.02", "run.num_workers=1", "run.log_freq=3")
    with caplog.at_level(logging.WARNING):
        resumed.resume(str(ckpt))
    text = caplog.text
    assert "run.batch_size_train 4 -> 2" in text and "run.seed 42 -> 7" in text and "run.init_lr 0.01 -> 0.02" in text
    assert "run.num_workers" not in text and "run.log_freq" not in text  # bookkeeping: no effect on the weights
    assert (resumed.start_epoch, resumed.start_iter) == (1, 0)


def test_changed_run_keys_against_an_original_run_section():
    saved = {"task": "image_text_pretrain", "lr_sched": "linear_warmup_cosine_lr", "init_lr": "3e-5", "min_lr": 1e-5,
             "warmup_lr": 1e-6, "weight_decay": 0.05, "max_epoch": 30, "iters_per_epoch": 3000,
             "batch_size_train": 12, "num_workers": 4, "warmup_steps": 200, "seed": 42, "output_dir": "elsewhere",
             "amp": True, "evaluate": False, "train_splits": ["train"], "device": "cuda", "world_size": 1}
    same = RunConfig(**{k: v for k, v in saved.items() if k != "world_size"} | {"init_lr": 3e-5, "output_dir": "out"})
    assert changed_run_keys(saved, same) == []  # "3e-5" == 3e-5; absent keys count as their defaults
    other = RunConfig(**{**same.as_dict(), "max_epoch": 40, "accum_grad_iters": 2})
    assert changed_run_keys(saved, other) == ["run.max_epoch 30 -> 40", "run.accum_grad_iters 1 -> 2"]
