"""LoRA through peft on the tiny model: the tiny run lowers the loss, the checkpoint holds llama_proj
plus the adapters under peft's names, it loads into an inference config (adapters required there, and
refused without model.lora), merging keeps greedy outputs, torchrun with two CPU processes matches one,
resume is exact; config errors. QLoRA / 4-bit: no GPU here, so the config checks, the error paths and
the BitsAndBytesConfig handed to transformers are tested on CPU."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import ROOT, TINY_RANDOM_EVAL, make_config
from research_helpers import (TINY_LORA, fixed_prompt_loss, greedy_ids, run_tiny, small_hic, train_batch,
                              trained_tensors)

from minigpt4.common.errors import CheckpointError, ConfigError
from minigpt4.models import MiniGPT4
from minigpt4.models import llm as llm_module
from minigpt4.models.lora import merge_lora

LORA = "model.lora={r: 8, alpha: 16, dropout: 0.05, target_modules: [q_proj, v_proj]}"


@pytest.fixture(scope="module")
def hic(tmp_path_factory):
    return small_hic(tmp_path_factory.mktemp("hic"))


def build(*options, fresh=False):
    return MiniGPT4.from_config(make_config(TINY_RANDOM_EVAL, list(options)).model_cfg, fresh_adapters=fresh)


@pytest.mark.slow
def test_lora_trains_saves_loads_and_merges(tmp_path, tiny_dir, hic):
    job = run_tiny(TINY_LORA, tmp_path / "out", hic, "run.max_epoch=1", "run.iters_per_epoch=12", "run.warmup_steps=2",
                   "run.sample_captions=0")
    saved = trained_tensors(job / "checkpoint_0.pth")

    # the checkpoint holds exactly the trainable set: llama_proj (original layout) + peft's adapter names
    from peft import get_peft_model_state_dict

    initial = build(LORA, fresh=True)
    adapters = {"llama_model." + k for k in get_peft_model_state_dict(initial.llama_model)}
    assert len(adapters) == 8  # q_proj, v_proj x lora_A, lora_B x 2 layers
    assert set(saved) == adapters | {"llama_proj.weight", "llama_proj.bias"}
    assert {n for n, p in initial.named_parameters() if p.requires_grad} >= {"llama_proj.weight"}
    assert all(saved[k].abs().sum() > 0 for k in adapters if ".lora_B." in k)  # lora_B starts at 0: it trained

    # an inference config with model.lora loads it (adapters required) and the loss is lower than before
    trained = build(LORA, f"model.ckpt={job / 'checkpoint_0.pth'}")
    for name, tensor in trained.trainable_state_dict().items():
        assert torch.equal(tensor, saved[name]), name
    batch = train_batch(hic)
    before, after = fixed_prompt_loss(initial, batch), fixed_prompt_loss(trained, batch)
    print(f"fixed-batch loss before {before:.4f} after {after:.4f}")
    assert after < before - 0.3  # 8.11 -> 7.50 on the tiny model

    # merging the adapters into the weights keeps the greedy captions; model.merge_lora does the same
    unmerged = greedy_ids(trained, hic)
    merge_lora(trained)
    assert not any(".lora_" in n for n, _ in trained.named_parameters())
    assert greedy_ids(trained, hic) == unmerged
    merged_by_config = build(LORA, "model.merge_lora=True", f"model.ckpt={job / 'checkpoint_0.pth'}")
    assert greedy_ids(merged_by_config, hic) == unmerged

    # a checkpoint with adapters into a config without model.lora, and the reverse, are errors
    with pytest.raises(CheckpointError, match=r"holds LoRA adapters \(8 tensors.*model\.lora is not set.*'r': 8"):
        build(f"model.ckpt={job / 'checkpoint_0.pth'}")
    with pytest.raises(CheckpointError, match=r"minigpt4\.pth.*holds no LoRA adapters, but model\.lora is set"):
        build(LORA)
    wider = LORA.replace("r: 8", "r: 4")
    with pytest.raises(CheckpointError, match=r"lora_A.*shape"):
        build(wider, f"model.ckpt={job / 'checkpoint_0.pth'}")


@pytest.mark.slow
def test_lora_resumes_exactly(tmp_path, tiny_dir, hic):
    common = ["run.max_epoch=2", "run.iters_per_epoch=3", "run.batch_size_train=2", "run.warmup_steps=1",
              "run.sample_captions=0"]
    straight = run_tiny(TINY_LORA, tmp_path / "a", hic, *common, "run.save_every_iters=2")
    resumed = run_tiny(TINY_LORA, tmp_path / "b", hic, *common,
                       f"run.resume_ckpt_path={straight / 'checkpoint_0_iter2.pth'}")
    final, again = trained_tensors(straight / "checkpoint_1.pth"), trained_tensors(resumed / "checkpoint_1.pth")
    assert set(final) == set(again) and any(".lora_A." in k for k in final)
    for name in final:
        assert torch.equal(final[name], again[name]), name
    opt_a = torch.load(straight / "checkpoint_1.pth", weights_only=True)["optimizer"]["state"]
    opt_b = torch.load(resumed / "checkpoint_1.pth", weights_only=True)["optimizer"]["state"]
    assert len(opt_a) == 10 and all(torch.equal(opt_a[k]["exp_avg_sq"], opt_b[k]["exp_avg_sq"]) for k in opt_a)


@pytest.mark.slow
def test_lora_torchrun_two_processes_match_one(tmp_path, tiny_dir, hic):
    data = tmp_path / "data"
    (data / "image").mkdir(parents=True)
    for name in ("val.json", "test.json"):
        (data / name).write_text((hic / name).read_text())
    for image in (hic / "image").iterdir():
        (data / "image" / image.name).write_bytes(image.read_bytes())
    anns = json.loads((hic / "filter_cap.json").read_text())["annotations"]
    # equal caption lengths: the per-process mean losses then average to the global mean
    (data / "filter_cap.json").write_text(json.dumps({"annotations": [
        {"image_id": a["image_id"], "caption": "a very funny picture"} for a in anns]}))
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("<Img><ImageHere></Img> Describe this image in a funny way.")
    common = [f"datasets.oxford_hic.build_info.storage={data}", "datasets.oxford_hic.vis_processor.train.name=blip2_image_eval",
              f"model.prompt_path={prompt}", "model.lora.dropout=0", "run.max_epoch=1", "run.iters_per_epoch=3",
              "run.warmup_steps=1", "run.log_freq=1", "run.sample_captions=2"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(ROOT / "train.py"),
           "--cfg-path", str(TINY_LORA), "--options", f"run.output_dir={tmp_path / 'ddp'}", "run.batch_size_train=2",
           *common]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    (ddp_job,) = (tmp_path / "ddp").iterdir()
    assert [p.name for p in (ddp_job / "samples").iterdir()] == ["epoch_000.jsonl"]
    assert len((ddp_job / "samples" / "epoch_000.jsonl").read_text().splitlines()) == 2  # rank 0 only
    single = run_tiny(TINY_LORA, tmp_path / "one", data, "run.batch_size_train=4", *common)
    ddp, one = trained_tensors(ddp_job / "checkpoint_0.pth"), trained_tensors(single / "checkpoint_0.pth")
    assert set(ddp) == set(one) and any(".lora_B." in k for k in one)
    for name, tensor in one.items():
        torch.testing.assert_close(ddp[name], tensor, rtol=0, atol=1e-5)

    def val_loss(job):
        return [json.loads(line)["val_loss"] for line in (job / "log.txt").read_text().splitlines() if '"val_loss"' in line]

    (ddp_val,), (one_val,) = val_loss(ddp_job), val_loss(single)  # each rank half the val images, summed
    assert ddp_val == pytest.approx(one_val, rel=1e-5)


# -- bad input ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("option,match", [
    ("model.lora={r: 0}", r"model\.lora\.r \(set in --options\) must be a positive integer.*got 0"),
    ("model.lora={alpha: -1}", r"model\.lora\.alpha .* positive"),
    ("model.lora={dropout: 1.0}", r"model\.lora\.dropout .* \[0, 1\)"),
    ("model.lora={rank: 8}", r"Unknown key 'model\.lora\.rank'.*alpha, dropout, r, target_modules"),
    ("model.merge_lora=True", r"model\.merge_lora .* needs model\.lora"),
])
def test_lora_config_errors_name_the_key(option, match):
    with pytest.raises(ConfigError, match=match):
        make_config(TINY_RANDOM_EVAL, [option], check_paths=False)


def test_unknown_target_module_lists_the_linear_modules(tiny_dir):
    with pytest.raises(ConfigError, match=r"'qkv', which is not a linear module of the language model; its linear "
                                          r"modules are: down_proj, gate_proj, k_proj, lm_head, o_proj, q_proj, up_proj, v_proj"):
        build("model.lora={target_modules: [q_proj, qkv]}", fresh=True)


def test_lora_without_peft_names_the_extra(tiny_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "peft", None)  # as if peft were not installed
    with pytest.raises(ConfigError, match=r"model\.lora needs the peft package: pip install -e '\.\[lora\]'"):
        build(LORA, fresh=True)


def test_quantization_config_values_and_errors(tiny_dir):
    cfg = make_config(TINY_RANDOM_EVAL, ["model.quantization=4bit"], check_paths=False)
    assert cfg.model.quantization == "4bit" and make_config(TINY_RANDOM_EVAL, check_paths=False).model.quantization is None
    with pytest.raises(ConfigError, match=r"model\.quantization .* '8bit', '4bit'; got '3bit'"):
        make_config(TINY_RANDOM_EVAL, ["model.quantization=3bit"], check_paths=False)
    # on CPU: one clear error before anything is loaded, saying how to run instead
    with pytest.raises(ConfigError, match=r"model\.quantization=4bit loads the LLM in NF4 4-bit.*CUDA GPU.*"
                                          r"model\.quantization=null"):
        build("model.quantization=4bit", LORA, fresh=True)


def test_4bit_hands_transformers_the_nf4_config(tiny_dir, monkeypatch):
    """What ``load_llm`` asks transformers for on a GPU, with the GPU and bitsandbytes faked (none here)."""
    bnb = llm_module.quantization_config("4bit")
    assert bnb.load_in_4bit and not bnb.load_in_8bit
    assert bnb.bnb_4bit_quant_type == "nf4" and bnb.bnb_4bit_use_double_quant
    assert bnb.bnb_4bit_compute_dtype == torch.bfloat16
    assert llm_module.quantization_config("8bit").load_in_8bit

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else real_find_spec(name, *a))
    with pytest.raises(ConfigError, match=r"model\.quantization=4bit needs bitsandbytes: pip install -e '\.\[quant\]'"):
        llm_module.check_quantization("4bit", "cuda:0")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "bitsandbytes" else real_find_spec(name, *a))
    calls = []
    monkeypatch.setattr(llm_module.AutoModelForCausalLM, "from_pretrained", lambda path, **kw: calls.append(kw))
    llama = tiny_dir / "llama"
    llm_module.load_llm(str(llama), torch.float16, device="cuda:1", quantization="4bit")
    llm_module.load_llm(str(llama), torch.float16, low_resource=True, device_8bit=2, device="cuda:1")
    four, eight = calls
    assert four["device_map"] == {"": "cuda:1"} and four["dtype"] == torch.float16
    assert four["quantization_config"].to_dict() == bnb.to_dict()
    assert eight["device_map"] == {"": 2} and eight["quantization_config"].load_in_8bit  # the original's low_resource
    with pytest.raises(ConfigError, match=r"this run is on the CPU"):
        llm_module.check_quantization("4bit", "cpu")
    assert Path(llama).is_dir()


def test_merge_lora_flag_of_caption_and_demo_sets_model_merge_lora():
    """``--merge-lora`` on caption.py and demo.py is ``--options model.merge_lora=True``."""
    from minigpt4.cli import caption, demo
    from minigpt4.inference.loading import load_config, speed_options

    for cli, extra in ((caption, ["--images", "examples/image", "--out", "x.jsonl"]), (demo, [])):
        args = cli.parse_args(["--cfg-path", str(TINY_RANDOM_EVAL), *extra, "--merge-lora",
                               "--options", "model.lora.r=4"])
        cfg = load_config(args.cfg_path, speed_options(args.options, args.precision, args.compile, args.merge_lora))
        assert cfg.model.merge_lora is True and cfg.model.lora.r == 4
        args = cli.parse_args(["--cfg-path", str(TINY_RANDOM_EVAL), *extra])
        assert load_config(args.cfg_path, speed_options(args.options, args.precision, args.compile,
                                                        args.merge_lora)).model.merge_lora is False
