"""The one precision policy of MiniGPT-4 (``model.precision``) and its attention choice
(``model.attn_implementation``): which dtype each part stores its weights in, whether autocast runs,
and which attention kernel the ViT, the Q-Former and the LLM use.

``model.precision``:

- ``auto`` (default) is the original. On the CPU every part runs in float32. On a GPU the ViT's
  Linear/Conv weights are in ``vit_precision`` (norms, CLS token, position embedding and q/v biases
  stay fp32), the LLM in ``llama_precision``, the Q-Former and the projection in fp32, all under
  autocast.
- ``fp32``: every part in float32, no autocast, on any device.
- ``bf16`` / ``fp16``: the ViT, the Q-Former (with its query tokens) and the LLM *store* their weights
  in that dtype and run without autocast, so no weight is re-cast at each step. A part that has
  trainable parameters keeps fp32 weights (the optimiser's master copy: ``llama_proj``, and LoRA
  adapters, which peft keeps in fp32); activations are cast where they enter and leave it. Norms,
  the rotary embedding, softmax and the loss compute in fp32 where the libraries do so (``ln_vision``
  is timm's LayerNormFp32; transformers' RMSNorm, rotary embedding and causal-LM loss upcast; SDPA
  and PyTorch's LayerNorm accumulate in fp32). ``fp16`` on the CPU is refused (slow, inexact
  matmuls); ``bf16`` where the hardware lacks it falls back to fp32 with one warning.

``model.attn_implementation``: ``eager`` (the original's math everywhere), ``sdpa``
(``scaled_dot_product_attention`` everywhere: timm's fused attention in the ViT, transformers' SDPA in
the Q-Former and the LLM, no attention mask where nothing is masked), or ``auto``: what the golden
tests compare at 1e-5 in auto/fp32 (timm's fused ViT attention, the eager Q-Former, transformers'
default for the LLM), SDPA everywhere in bf16/fp16.
"""

from __future__ import annotations

import dataclasses
import logging
import platform
import sys
from pathlib import Path

import torch
from torch import nn

from minigpt4.common.errors import ConfigError
from minigpt4.models.int8 import quantize_linears_

logger = logging.getLogger(__name__)

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
PRECISION_MODES = ("auto", "fp32", "bf16", "fp16", "int8")
ATTENTION_MODES = ("auto", "eager", "sdpa")
# CPU feature flags (/proc/cpuinfo) that mean native bfloat16 arithmetic: AVX512-BF16, AMX, Arm BF16
BF16_CPU_FLAGS = {"avx512_bf16", "amx_bf16", "bf16"}
_said: set[str] = set()  # warnings given once per process


def say_once(message: str, level: int = logging.WARNING) -> None:
    if message not in _said:
        _said.add(message)
        logger.log(level, message)


@dataclasses.dataclass(frozen=True)
class PrecisionPlan:
    """What ``model.precision`` means on one device, after any fallback."""

    mode: str  # auto (GPU, the original's mix) | fp32 | bf16 | fp16 | int8 (bf16 + int8 LLM weights, CPU)
    requested: str
    vit: torch.dtype  # the ViT's Linear/Conv weights under the original's autocast recipe (auto only)
    llm: torch.dtype  # the dtype the LLM is loaded in
    autocast: torch.dtype | None

    @property
    def stored(self) -> torch.dtype | None:
        """The dtype the frozen parts are stored in (bf16/fp16/int8), or None (nothing is cast: auto, fp32)."""
        return {"bf16": torch.bfloat16, "fp16": torch.float16, "int8": torch.bfloat16}.get(self.mode)


def cpu_supports_bf16() -> bool:
    """Whether this CPU has native bfloat16 arithmetic (AVX512-BF16 or AMX on x86, BF16 on Arm)."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:  # not Linux: ask oneDNN (Apple silicon from M2 has BF16)
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()) or (
            sys.platform == "darwin" and platform.machine() == "arm64")
    flags: set[str] = set()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            flags.update(line.split(":", 1)[-1].split())
    return bool(flags & BF16_CPU_FLAGS)


def bf16_supported(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        return cpu_supports_bf16()
    return True  # other accelerators: let PyTorch say


def resolve_precision(requested: str, device, vit_precision: str = "fp16", llama_precision: str = "fp16",
                      quantized: bool = False) -> PrecisionPlan:
    """``model.precision`` on ``device`` as a :class:`PrecisionPlan` (errors and the bf16 fallback here)."""
    device = torch.device(device)
    for key, value in (("vit_precision", vit_precision), ("llama_precision", llama_precision)):
        if value not in DTYPES:
            raise ConfigError(f"model.{key} must be one of {', '.join(DTYPES)}; got {value!r}.")
    if requested not in PRECISION_MODES:
        raise ConfigError(f"--precision (model.precision) must be one of {', '.join(PRECISION_MODES)}; "
                          f"got {requested!r}.")
    if requested == "auto":
        if device.type == "cpu":
            if vit_precision != "fp32" or llama_precision != "fp32":
                say_once(f"Running on {device}: every part in float32 (vit_precision/llama_precision apply on "
                         "GPU only; --precision bf16 stores the model in bfloat16).", logging.INFO)
            return PrecisionPlan("fp32", requested, torch.float32, torch.float32, None)
        vit, llm = DTYPES[vit_precision], DTYPES[llama_precision]
        half = [d for d in (llm, vit) if d != torch.float32]  # the original autocasts in fp16 on the GPU
        return PrecisionPlan("auto", requested, vit, llm, half[0] if half else None)
    if quantized:
        raise ConfigError(
            f"--precision {requested} (model.precision) does not combine with an 8-bit/4-bit LLM "
            "(model.low_resource / model.quantization): add --options model.low_resource=False "
            "model.quantization=null, or leave --precision at auto.")
    mode = requested
    if mode == "int8" and device.type != "cpu":
        raise ConfigError(f"--precision int8 (model.precision) is the CPU decoding mode; on {device} use bf16 or "
                          "fp16 (or model.quantization: 8bit/4bit for bitsandbytes).")
    if mode == "fp16" and device.type == "cpu":
        raise ConfigError("--precision fp16 (model.precision) on the CPU: float16 matmuls there are slow and "
                          "inexact. Use --precision bf16 (bfloat16, fast on CPUs with AVX512-BF16/AMX) or fp32.")
    if mode in ("bf16", "int8") and not bf16_supported(device):
        say_once(f"--precision {mode} (model.precision): {device} has no native bfloat16 support; running in "
                 "float32 instead.")
        mode = "fp32"
    return PrecisionPlan(mode, requested, torch.float32, DTYPES.get(mode, torch.bfloat16), None)


@dataclasses.dataclass(frozen=True)
class AttentionPlan:
    vit: str  # "sdpa" (timm's fused attention) or "eager"
    qformer: str
    llm: str | None  # None: transformers' default for the model (SDPA for LLaMA)


def resolve_attention(requested: str, plan: PrecisionPlan) -> AttentionPlan:
    if requested not in ATTENTION_MODES:
        raise ConfigError(f"model.attn_implementation must be one of {', '.join(ATTENTION_MODES)}; got {requested!r}.")
    if requested == "eager":
        return AttentionPlan("eager", "eager", "eager")
    if requested == "sdpa" or plan.stored is not None:
        return AttentionPlan("sdpa", "sdpa", "sdpa")
    return AttentionPlan("sdpa", "eager", None)  # what the golden tests compare at 1e-5


def store_frozen_(dtype: torch.dtype | None, *parts) -> None:
    """Store each part (a module or a parameter) in ``dtype``, unless it has trainable parameters
    (those keep fp32 master weights). ``None``: nothing to do."""
    if dtype is None:
        return
    for part in parts:
        params = [part] if isinstance(part, nn.Parameter) else list(part.parameters())
        if any(p.requires_grad for p in params):
            continue
        if isinstance(part, nn.Parameter):
            part.data = part.data.to(dtype)
        else:
            part.to(dtype)  # floating buffers too (the ViT's zero k_bias must match its q/v biases)


def apply_storage_(model) -> None:
    """``model.precision`` bf16/fp16/int8: store the frozen parts of a MiniGPT-4 (ViT, Q-Former and its
    query tokens, projection; the LLM was loaded in the dtype), and for int8 the LLM's Linear weights."""
    store_frozen_(model.precision.stored, model.visual_encoder, model.Qformer, model.query_tokens, model.llama_proj)
    if model.precision.mode == "int8":
        if model.config.lora is not None:
            raise ConfigError("--precision int8 (model.precision) and model.lora do not combine: use bf16.")
        quantize_linears_(model.llama_model)


def weight_dtype(part) -> torch.dtype:
    """The dtype of a part's first floating parameter (what its inputs are cast to in bf16/fp16)."""
    params = [part] if isinstance(part, nn.Parameter) else part.parameters()
    return next((p.dtype for p in params if p.is_floating_point()), torch.float32)


def _dtypes(part) -> str:
    params = [part] if isinstance(part, nn.Parameter) else list(part.parameters())
    params += [b for b in part.buffers() if b.dtype == torch.int8] if isinstance(part, nn.Module) else []
    counts: dict[str, int] = {}
    for p in params:
        name = str(p.dtype).replace("torch.", "")
        counts[name] = counts.get(name, 0) + p.numel()
    return "/".join(sorted(counts, key=counts.get, reverse=True)) or "-"


def summary(model, device) -> str:
    """One log line: the dtype each part's weights are in, autocast, and each part's attention."""
    plan, attention = model.precision, model.attention
    parts = {"ViT": model.visual_encoder, "Q-Former": model.Qformer, "llama_proj": model.llama_proj,
             "LLM": model.llama_model}
    weights = ", ".join(f"{name} {_dtypes(part)}" for name, part in parts.items())
    asked = f" (asked: {plan.requested})" if plan.requested != plan.mode else ""
    autocast = f"autocast {str(plan.autocast).replace('torch.', '')}" if plan.autocast else "no autocast"
    llm_attn = getattr(model.llama_model.config, "_attn_implementation", None) or attention.llm
    attn = f"ViT {attention.vit}, Q-Former {attention.qformer}, LLM {llm_attn}"
    return f"Precision {plan.mode}{asked} on {device}: weights {weights}; {autocast}; attention {attn}."
