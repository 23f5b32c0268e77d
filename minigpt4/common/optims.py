"""Learning-rate schedules and the AdamW parameter groups, with the original's exact semantics
(REFERENCE 6.3, 6.4). The schedulers are pure functions of ``(cur_epoch, cur_step)`` and set the same
LR on every parameter group, so resuming needs no scheduler state."""

from __future__ import annotations

import logging
import math

import torch

from minigpt4.common.errors import ConfigError
from minigpt4.common.registry import registry

logger = logging.getLogger(__name__)


def warmup_lr_schedule(step: int, warmup_steps: int, init_lr: float, max_lr: float) -> float:
    """Linear warmup from ``init_lr`` to ``max_lr`` over ``warmup_steps`` (capped at ``max_lr``)."""
    return min(max_lr, init_lr + (max_lr - init_lr) * step / max(warmup_steps, 1))


def cosine_lr_schedule(step: int, max_steps: int, init_lr: float, min_lr: float) -> float:
    """Half-cosine from ``init_lr`` (step 0) to ``min_lr`` (step ``max_steps``)."""
    return (init_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * step / max_steps)) + min_lr


def step_lr_schedule(epoch: int, init_lr: float, min_lr: float, decay_rate: float) -> float:
    return max(min_lr, init_lr * (decay_rate**epoch))


def _set_lr(optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


class _WarmupScheduler:
    """Shared state of the two schedulers; ``step`` sets ``lr_at(...)`` on every parameter group."""

    def __init__(self, optimizer, max_epoch, iters_per_epoch, min_lr, init_lr, warmup_steps=0, warmup_start_lr=-1):
        self.optimizer = optimizer
        self.max_epoch = max_epoch
        self.iters_per_epoch = iters_per_epoch
        self.min_lr = min_lr
        self.init_lr = init_lr
        self.warmup_steps = warmup_steps
        self.warmup_start_lr = warmup_start_lr if warmup_start_lr >= 0 else init_lr

    def lr_at(self, cur_epoch: int, cur_step: int) -> float:
        raise NotImplementedError

    def step(self, cur_epoch: int, cur_step: int) -> float:
        lr = self.lr_at(cur_epoch, cur_step)
        _set_lr(self.optimizer, lr)
        return lr


@registry.register_lr_scheduler("linear_warmup_cosine_lr")
class LinearWarmupCosineLRScheduler(_WarmupScheduler):
    """Warmup while the *global* step is below ``warmup_steps`` -- evaluated at the *in-epoch* step
    (quirk 8) -- then a cosine over the global step counted from 0 (the warmup is not subtracted)."""

    def __init__(self, optimizer, max_epoch, iters_per_epoch, min_lr, init_lr,
                 warmup_steps=0, warmup_start_lr=-1, **kwargs):
        super().__init__(optimizer, max_epoch, iters_per_epoch, min_lr, init_lr, warmup_steps, warmup_start_lr)

    def lr_at(self, cur_epoch: int, cur_step: int) -> float:
        total_cur_step = cur_epoch * self.iters_per_epoch + cur_step
        if total_cur_step < self.warmup_steps:
            return warmup_lr_schedule(cur_step, self.warmup_steps, self.warmup_start_lr, self.init_lr)
        return cosine_lr_schedule(total_cur_step, self.max_epoch * self.iters_per_epoch, self.init_lr, self.min_lr)


@registry.register_lr_scheduler("linear_warmup_step_lr")
class LinearWarmupStepLRScheduler(_WarmupScheduler):
    """Epoch 0: warmup at the in-epoch step; later epochs: ``max(min_lr, init_lr * decay_rate**epoch)``.

    Unlike the original it has an ``iters_per_epoch`` attribute, so the runner can use it; it needs
    ``run.lr_decay_rate``."""

    def __init__(self, optimizer, max_epoch, min_lr, init_lr, decay_rate=1, warmup_start_lr=-1,
                 warmup_steps=0, iters_per_epoch=None, **kwargs):
        if decay_rate is None:
            raise ConfigError("linear_warmup_step_lr needs run.lr_decay_rate (e.g. 0.9); it is not set.")
        super().__init__(optimizer, max_epoch, iters_per_epoch, min_lr, init_lr, warmup_steps, warmup_start_lr)
        self.decay_rate = decay_rate

    def lr_at(self, cur_epoch: int, cur_step: int) -> float:
        if cur_epoch == 0:
            return warmup_lr_schedule(cur_step, self.warmup_steps, self.warmup_start_lr, self.init_lr)
        return step_lr_schedule(cur_epoch, self.init_lr, self.min_lr, self.decay_rate)


def is_no_decay(name: str, param: torch.Tensor) -> bool:
    """The original's rule: 1-D tensors and names containing "bias", "ln" or "bn" get no weight decay."""
    return param.ndim < 2 or "bias" in name or "ln" in name or "bn" in name


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """``[decay group, no-decay group]`` over the trainable parameters, in ``named_parameters`` order."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        logger.info("trainable: %s", name)
        (no_decay if is_no_decay(name, param) else decay).append(param)
    logger.info("number of trainable parameters: %d", sum(p.numel() for p in decay + no_decay))
    return [
        {"params": decay, "weight_decay": float(weight_decay)},
        {"params": no_decay, "weight_decay": 0},
    ]


def build_optimizer(model: torch.nn.Module, init_lr: float, weight_decay: float, beta2: float,
                    fused: bool = False) -> torch.optim.AdamW:
    """AdamW as the original: lr ``run.init_lr``, betas ``(0.9, run.beta2)``, eps 1e-8; with ``fused``
    (``run.fused_adamw``) torch's fused kernel where the parameters' device has one (the same update
    up to rounding), else the default implementation with a warning."""
    groups = param_groups(model, weight_decay)
    kwargs = dict(lr=float(init_lr), weight_decay=float(weight_decay), betas=(0.9, float(beta2)))
    if fused:
        try:
            return torch.optim.AdamW(groups, fused=True, **kwargs)
        except RuntimeError as err:  # torch: no fused kernel for this device or dtype
            logger.warning("run.fused_adamw: %s; using the default AdamW.", err)
    return torch.optim.AdamW(groups, **kwargs)
