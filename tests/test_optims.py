"""LR schedules against the original's values, and the AdamW decay / no-decay groups."""

from __future__ import annotations

import math

import pytest
import torch

import minigpt4.runners  # noqa: F401  (registers the schedulers)
from minigpt4.common.optims import build_optimizer, is_no_decay
from minigpt4.common.registry import registry
from conftest import FIXTURES


def _scheduler(name, **params):
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2, 2))], lr=1.0)
    return opt, registry.get_lr_scheduler_class(name)(optimizer=opt, **params)


def test_cosine_schedule_matches_golden_points():
    golden = torch.load(FIXTURES / "golden" / "outputs.pth", weights_only=True)["lr_schedule"]
    p = golden["params"]
    opt, sched = _scheduler(
        "linear_warmup_cosine_lr", max_epoch=p["max_epoch"], iters_per_epoch=p["iters_per_epoch"],
        min_lr=p["min_lr"], init_lr=p["init_lr"], warmup_start_lr=p["warmup_lr"], warmup_steps=p["warmup_steps"],
        decay_rate=None,
    )
    assert len(golden["points"]) > 10
    for epoch, it, lr in golden["points"]:
        sched.step(cur_epoch=epoch, cur_step=it)
        for group in opt.param_groups:
            assert group["lr"] == pytest.approx(lr, rel=1e-12, abs=0), (epoch, it)


@pytest.mark.parametrize("stage,params,points", [
    ("2", dict(max_epoch=30, iters_per_epoch=3000, min_lr=1e-5, init_lr=3e-5, warmup_start_lr=1e-6, warmup_steps=200),
     [((0, 0), 1e-6), ((0, 100), 1.55e-5), ((0, 199), 2.9855e-5), ((0, 200), 2.99998e-5), ((1, 0), 2.9945e-5),
      ((15, 0), 2.0e-5), ((29, 2999), 1.0e-5)]),
    ("1", dict(max_epoch=4, iters_per_epoch=5000, min_lr=8e-5, init_lr=1e-4, warmup_start_lr=1e-6, warmup_steps=5000),
     [((0, 2500), 5.05e-5), ((0, 4999), 9.998e-5), ((1, 0), 9.707e-5), ((3, 4999), 8.0e-5)]),
])
def test_reference_table_values(stage, params, points):
    _, sched = _scheduler("linear_warmup_cosine_lr", **params)
    for (epoch, step), lr in points:
        assert sched.lr_at(epoch, step) == pytest.approx(lr, rel=5e-4), (stage, epoch, step)


def test_warmup_uses_in_epoch_step_and_cosine_global_step():
    # warmup_steps > iters_per_epoch: the warmup restarts from the in-epoch step (quirk 8)
    _, sched = _scheduler("linear_warmup_cosine_lr", max_epoch=3, iters_per_epoch=10, min_lr=0.0, init_lr=1.0,
                          warmup_start_lr=0.0, warmup_steps=15)
    assert sched.lr_at(1, 0) == 0.0
    assert sched.lr_at(1, 4) == pytest.approx(4 / 15)
    assert sched.lr_at(1, 5) == pytest.approx(0.5 * (1 + math.cos(math.pi * 15 / 30)))
    # negative warmup_lr means "start at init_lr"
    _, sched = _scheduler("linear_warmup_cosine_lr", max_epoch=1, iters_per_epoch=10, min_lr=0.0, init_lr=1.0,
                          warmup_start_lr=-1, warmup_steps=5)
    assert sched.lr_at(0, 0) == 1.0


def test_step_scheduler():
    _, sched = _scheduler("linear_warmup_step_lr", max_epoch=5, min_lr=1e-3, init_lr=1e-1, decay_rate=0.5,
                          warmup_start_lr=1e-2, warmup_steps=10, iters_per_epoch=100)
    assert sched.lr_at(0, 0) == pytest.approx(1e-2)
    assert sched.lr_at(0, 5) == pytest.approx(1e-2 + (1e-1 - 1e-2) * 0.5)
    assert sched.lr_at(0, 50) == pytest.approx(1e-1)
    assert sched.lr_at(2, 0) == pytest.approx(1e-1 * 0.25)
    assert sched.lr_at(20, 0) == pytest.approx(1e-3)
    with pytest.raises(ValueError, match="lr_decay_rate"):
        _scheduler("linear_warmup_step_lr", max_epoch=5, min_lr=1e-3, init_lr=1e-1, decay_rate=None)


def test_unknown_scheduler_lists_known_names():
    with pytest.raises(KeyError, match="linear_warmup_cosine_lr"):
        registry.get_lr_scheduler_class("cosine")


def test_decay_rule():
    assert not is_no_decay("llama_proj.weight", torch.zeros(4, 4))
    assert is_no_decay("llama_proj.bias", torch.zeros(4, 4))
    assert is_no_decay("x.weight", torch.zeros(4))
    assert is_no_decay("ln_vision.weight", torch.zeros(4, 4))
    assert is_no_decay("bn1.weight", torch.zeros(4, 4))


def test_optimizer_groups_on_tiny_model(tiny_model):
    opt = build_optimizer(tiny_model, init_lr=3e-5, weight_decay=0.05, beta2=0.999)
    names = {id(p): n for n, p in tiny_model.named_parameters()}
    decay, no_decay = opt.param_groups
    assert [names[id(p)] for p in decay["params"]] == ["llama_proj.weight"]
    assert [names[id(p)] for p in no_decay["params"]] == ["llama_proj.bias"]
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0
    assert opt.defaults["betas"] == (0.9, 0.999) and opt.defaults["eps"] == 1e-8 and opt.defaults["lr"] == 3e-5
    opt = build_optimizer(tiny_model, init_lr=1e-4, weight_decay=0.05, beta2=0.95)
    assert opt.defaults["betas"] == (0.9, 0.95)
