"""Training losses over the caption tokens of a causal LM, from its logits and the ``-100``-masked labels.

* :func:`token_nll` -- the summed cross-entropy and the number of supervised tokens (the validation
  loss sums these over a split, so its mean does not depend on how the split is batched or sharded);
* :func:`pc_loss` -- the position-conditioned (PC) loss of the Oxford HIC paper, which its authors
  wrote for their CLIPCap baseline (``clipcap/loss/PCloss.py``); using it for MiniGPT-4 is an extension.

The PC loss, over the L supervised positions of each caption (0-based i), with w_i = 4 i / L:

* positions with w_i < ``threshold`` (the first ~22% of the caption at the default 0.9): an
  element-wise sigmoid binary cross-entropy over the whole vocabulary, where the target token's
  positive term has weight 1 and every other token's negative term is multiplied by w_i; averaged
  over (those positions x vocabulary) and multiplied by ``scale``. The first tokens are thus hardly
  pushed away from other plausible openings, so captions can start in many ways;
* the later positions: the ordinary softmax cross-entropy, averaged over them;
* the loss is the sum of the two parts (a part without positions counts 0).

Differences from the authors' code, which applies it to padded CLIPCap token sequences: L is each
caption's own number of supervised tokens (the authors used the padded batch length, padding
included), ignored positions (-100) take no part, and ``log(sigmoid(x))`` is computed as
``logsigmoid(x)`` instead of ``log(sigmoid(x) + eps)``. With ``threshold = 0`` no position is early and
the loss is exactly the usual cross-entropy.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

IGNORE_INDEX = -100


def shift(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Predictions and their targets: position t of the logits predicts label t + 1 (float32 logits)."""
    return logits[:, :-1].float(), labels[:, 1:]


def token_nll(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int]:
    """``(sum of the supervised tokens' cross-entropy, their number)`` for (B, T, V) logits, (B, T) labels."""
    z, y = shift(logits, labels)
    total = F.cross_entropy(z.reshape(-1, z.shape[-1]), y.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum")
    return total, int((y != IGNORE_INDEX).sum())


def position_weights(targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(w, supervised)`` for (B, T) shifted targets: w = 4 i / L at the i-th supervised position of each
    row (L: that row's number of supervised positions), 0 elsewhere; ``supervised`` is the boolean mask."""
    supervised = targets != IGNORE_INDEX
    index = supervised.cumsum(dim=1) - 1  # 0-based rank among the row's supervised positions
    length = supervised.sum(dim=1, keepdim=True).clamp_min(1)
    return torch.where(supervised, 4.0 * index / length, torch.zeros((), device=targets.device)), supervised


def pc_loss(logits: torch.Tensor, labels: torch.Tensor, threshold: float = 0.9, scale: float = 100.0) -> torch.Tensor:
    """The position-conditioned loss of (B, T, V) ``logits`` against (B, T) ``labels`` (-100: ignored)."""
    bce, ce = pc_loss_parts(logits, labels, threshold, scale)
    return bce + ce


def pc_loss_parts(logits: torch.Tensor, labels: torch.Tensor, threshold: float = 0.9,
                  scale: float = 100.0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(weighted sigmoid BCE of the early positions x scale, cross-entropy of the later ones)``."""
    z, y = shift(logits, labels)
    w, supervised = position_weights(y)
    early = supervised & (w < threshold)
    late = supervised & ~early
    zero = z.sum() * 0.0  # keeps the graph (and the dtype) when a part is empty
    bce = zero
    if early.any():
        ze, ye, we = z[early], y[early], w[early]  # (n, V), (n,), (n,)
        pos = F.logsigmoid(ze).gather(1, ye[:, None])[:, 0]  # log sigmoid(z_target)
        neg_all = F.logsigmoid(-ze)  # log(1 - sigmoid(z_v)) for every v
        neg = neg_all.sum(dim=1) - neg_all.gather(1, ye[:, None])[:, 0]  # over the non-target tokens
        bce = -(pos + we * neg).sum() / (ze.shape[0] * ze.shape[1]) * scale
    ce = F.cross_entropy(z[late], y[late]) if late.any() else zero
    return bce, ce
