"""Weight-only int8 for the LLM on the CPU (``model.precision: int8``): each frozen Linear's weight is
stored as int8 with one scale per output row (symmetric, round to nearest), activations stay bf16.

Batch-1 decoding on a CPU streams every weight once per token, so it runs at the speed of memory:
int8 weights halve the bytes of bf16 and quarter those of fp32. The product goes through PyTorch's own
CPU kernel for it, ``aten._weight_int8pack_mm`` (the kernel gpt-fast and torchao's CPU path use);
torchao's current int8 weight-only tensor dequantises in eager mode instead and is slower than fp32
on CPU (measured; benchmarks/results/bench_model.md). Long inputs (a prefill, a batch) are multiplied
with the weight dequantised to bf16, where the bf16 matrix units are faster. Inference only.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from minigpt4.common.errors import ConfigError

# rows of input from which a matmul dequantises the weight to bf16 instead of the int8 kernel
DEQUANT_ROWS = 16


class Int8Linear(nn.Module):
    """A frozen ``nn.Linear`` with an int8 weight and a bf16 scale per output feature."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        weight = linear.weight.detach().float()
        scale = weight.abs().amax(dim=1).clamp(min=1e-12) / 127
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.register_buffer("weight_int8", torch.round(weight / scale[:, None]).clamp(-127, 127).to(torch.int8))
        self.register_buffer("scale", scale.to(torch.bfloat16))
        bias = None if linear.bias is None else linear.bias.detach().to(torch.bfloat16)
        self.register_buffer("bias", bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and x.requires_grad:
            raise ConfigError("model.precision int8 is for inference (no gradient flows through int8 weights); "
                              "train with model.precision bf16 instead.")
        x = x.to(torch.bfloat16)
        rows = x.reshape(-1, self.in_features)
        if rows.shape[0] >= DEQUANT_ROWS:
            weight = self.weight_int8.to(torch.bfloat16) * self.scale[:, None]
            out = F.linear(rows, weight)
        else:
            out = torch._weight_int8pack_mm(rows, self.weight_int8, self.scale)
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 weight, bf16 scale"


def quantize_linears_(module: nn.Module) -> int:
    """Replace every frozen ``nn.Linear`` inside ``module`` (the LLM's projections and its head) by an
    :class:`Int8Linear`; returns how many were replaced."""
    count = 0
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Linear and not child.weight.requires_grad:
                setattr(parent, name, Int8Linear(child))
                count += 1
    return count
