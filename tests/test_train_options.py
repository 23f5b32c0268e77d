"""The faster-step options of the runner, each off by default and each checked against the default
path: activation checkpointing of the LLM (same loss and gradients), fused AdamW (the same update up
to rounding), bf16 autocast without a GradScaler, the frozen ViT / Q-Former run without autograd, and
DDP's unused-parameter search only where the trainable set needs it."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from conftest import ROOT, make_config

from minigpt4.common.optims import build_optimizer
from minigpt4.runners import RunnerBase
from minigpt4.tasks import setup_task

TINY = ROOT / "train_configs" / "minigpt4_tiny_finetune.yaml"


def make_runner(*options) -> RunnerBase:
    cfg = make_config(TINY, list(options))
    task = setup_task(cfg)
    return RunnerBase(cfg, task, task.build_model(cfg, device="cpu"), task.build_datasets(cfg))


def batch():
    torch.manual_seed(0)
    return {"image": torch.randn(2, 3, 224, 224), "text_input": ["a penguin reads the news", "the llama is late"]}


def loss_and_grads(model, samples):
    model.zero_grad(set_to_none=True)
    inputs = model.build_training_inputs(samples, prompt=model.prompt_list[0])
    loss = model.llama_model(**inputs).loss
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad(set_to_none=True)
    return loss.detach(), grads


def test_llm_grad_checkpoint_gives_the_same_loss_and_gradients(tiny_dir):
    runner = make_runner("run.llm_grad_checkpoint=True", "model.lora={r: 4, dropout: 0.0}")
    model = runner.unwrapped_model
    model.train()
    assert model.llama_model.base_model.model.model.gradient_checkpointing  # on, in the LLM's layers
    samples = batch()
    loss_ckpt, grads_ckpt = loss_and_grads(model, samples)
    llm = model.llama_model
    (llm.activation_checkpointing_disable if hasattr(llm, "activation_checkpointing_disable")
     else llm.gradient_checkpointing_disable)()
    assert not llm.base_model.model.model.gradient_checkpointing
    loss_plain, grads_plain = loss_and_grads(model, samples)
    torch.testing.assert_close(loss_ckpt, loss_plain, rtol=0, atol=1e-6)
    assert grads_ckpt.keys() == grads_plain.keys() and any(".lora_A." in n for n in grads_plain)
    for name in grads_plain:
        torch.testing.assert_close(grads_ckpt[name], grads_plain[name], rtol=1e-5, atol=1e-7)


def test_fused_adamw_takes_the_same_step():
    def step(fused: bool):
        torch.manual_seed(0)
        module = nn.Sequential(nn.Linear(8, 8), nn.LayerNorm(8))
        optimizer = build_optimizer(module, 1e-2, 0.05, 0.999, fused=fused)
        for _ in range(3):
            module(torch.ones(4, 8)).square().sum().backward()
            optimizer.step()
            optimizer.zero_grad()
        return optimizer, [p.detach() for p in module.parameters()]

    fused, after_fused = step(True)
    plain, after_plain = step(False)
    assert fused.defaults["fused"] and not plain.defaults.get("fused")  # torch has a CPU kernel
    assert [g["weight_decay"] for g in fused.param_groups] == [0.05, 0]  # the original's groups
    for a, b in zip(after_fused, after_plain):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_defaults_and_bf16_autocast(tiny_dir):
    runner = make_runner()
    assert runner.amp_dtype is None and runner.scaler is None  # float32 on CPU, as today
    assert not runner.optimizer.defaults.get("fused")
    bf16 = make_runner("run.amp=True", "run.amp_dtype=bfloat16")
    assert bf16.amp_dtype == torch.bfloat16 and bf16.scaler is None  # bf16 needs no GradScaler
    samples = batch()
    model = bf16.unwrapped_model
    with torch.no_grad():
        inputs = model.build_training_inputs(samples, prompt=model.prompt_list[0])
        full = model.llama_model(**inputs).loss
        with bf16.autocast():
            half = model.llama_model(**model.build_training_inputs(samples, prompt=model.prompt_list[0])).loss
    assert half.dtype == torch.float32 and abs(half.item() - full.item()) / full.item() < 2e-2


def test_frozen_parts_run_without_autograd_and_ddp_need_not_search(tiny_model):
    model = tiny_model
    seen = {}
    hooks = [model.visual_encoder.patch_embed.register_forward_hook(lambda *a: seen.__setitem__("vit", torch.is_grad_enabled())),
             model.Qformer.register_forward_hook(lambda *a: seen.__setitem__("qformer", torch.is_grad_enabled()))]
    try:
        inputs_llama, _ = model.encode_img(torch.randn(1, 3, 224, 224))
        assert seen == {"vit": False, "qformer": False} and inputs_llama.requires_grad  # llama_proj still trains
        assert model.ddp_find_unused_parameters is False
        model.config.freeze_qformer = False  # what the flag decides (the parameters stay frozen here)
        model.encode_img(torch.randn(1, 3, 224, 224))
        assert seen == {"vit": False, "qformer": True} and model.ddp_find_unused_parameters is True
    finally:
        model.config.freeze_qformer = True
        for hook in hooks:
            hook.remove()


@pytest.mark.parametrize("option", ["run.fused_adamw=True", "run.llm_grad_checkpoint=True", "run.tensorboard=True"])
def test_new_run_keys_are_typed(option):
    import minigpt4.runners  # noqa: F401
    from minigpt4.common.errors import ConfigError
    from minigpt4.runners.run_config import build_run_config

    build_run_config(make_config(TINY, [option], check_paths=False))
    with pytest.raises(ConfigError, match="True or False"):
        build_run_config(make_config(TINY, [option.replace("True", "sometimes")], check_paths=False))
