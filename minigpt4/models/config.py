"""The typed ``model:`` section of MiniGPT-4: the one place its defaults live.

The defaults are the original's ``from_config`` defaults (REFERENCE 2.5) for the released
architecture (EVA ViT-g/14 at 224 px, 39 blocks; BLIP-2 Q-Former on bert-base with 32 queries;
Vicuna-7B v0), plus the keys this package adds. The small ``tiny``/``mid`` presets change only the
sizes, in their YAML files under ``minigpt4/configs/models/``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal, Optional

from minigpt4.common.errors import ConfigError
from minigpt4.common.schema import build_section
from minigpt4.constants import BLIP2_FLANT5XXL_URL, EVA_VIT_G_URL

Precision = Literal["fp16", "bf16", "fp32"]


@dataclass
class VisionConfig:
    """``model.vit_config``: the EVA ViT sizes (default: the released ViT-g/14, 39 of 40 blocks)."""

    embed_dim: int = 1408
    depth: int = 39
    num_heads: int = 16
    mlp_ratio: float = 4.3637
    patch_size: int = 14


@dataclass
class QFormerConfig:
    """``model.qformer_config``: the Q-Former sizes (default: bert-base with BLIP-2's cross-attention)."""

    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    cross_attention_freq: int = 2


@dataclass
class LoRAConfig:
    """``model.lora``: LoRA adapters on the LLM through peft (absent: no adapters, the original)."""

    r: int = 16
    alpha: float = 32.0
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])


@dataclass
class MiniGPT4Config:
    arch: str = "mini_gpt4"
    model_type: str = "pretrain_vicuna"
    # vision encoder
    vit_model: Literal["eva_clip_g"] = "eva_clip_g"
    vit_ckpt: str = EVA_VIT_G_URL  # new key: URL or path of eva_vit_g.pth
    image_size: int = 224
    drop_path_rate: float = 0.0
    use_grad_checkpoint: bool = False
    vit_precision: Precision = "fp16"  # GPU only; on CPU everything runs in fp32
    freeze_vit: bool = True
    vit_config: VisionConfig = field(default_factory=VisionConfig)
    # Q-Former
    q_former_model: str = BLIP2_FLANT5XXL_URL
    num_query_token: int = 32
    freeze_qformer: bool = True
    qformer_config: QFormerConfig = field(default_factory=QFormerConfig)
    # language model
    llama_model: str = ""
    llama_precision: Precision = "fp16"  # GPU only
    low_resource: bool = False  # 8-bit Vicuna on GPU device_8bit (bitsandbytes)
    device_8bit: int = 0
    # speed (models/precision.py, models/compiled.py; docs/USAGE.md), the original's behaviour by default:
    # auto = fp32 on CPU, vit_precision/llama_precision + autocast on GPU; bf16/fp16 store the frozen parts;
    # int8 = bf16 with the LLM's Linear weights in int8 (CPU decoding, inference only)
    precision: Literal["auto", "fp32", "bf16", "fp16", "int8"] = "auto"
    attn_implementation: Literal["auto", "eager", "sdpa"] = "auto"  # auto: eager Q-Former at auto/fp32
    compile: bool = False  # static KV cache + torch.compile of the decode step
    # training inputs
    prompt_path: str = ""
    prompt_template: str = ""
    max_txt_len: int = 32
    end_sym: str = "\n"
    # a MiniGPT-4 checkpoint (llama_proj, and whatever else was trained) loaded after the parts
    ckpt: str = ""
    # research options (docs/TRAINING.md), all off by default: LoRA adapters on the LLM (models/lora.py),
    # the LLM in 8-bit or NF4 4-bit (GPU, bitsandbytes; low_resource: True is 8-bit), the training loss
    lora: Optional[LoRAConfig] = None
    merge_lora: bool = False  # inference: merge the adapters into the LLM's weights after loading
    quantization: Optional[Literal["8bit", "4bit"]] = None
    loss: Literal["ce", "pc"] = "ce"  # pc: the HIC paper's position-conditioned loss (models/losses.py)
    pc_threshold: float = 0.9
    pc_scale: float = 100.0

    # keys of the original that are accepted and not read (``prompt`` was read by nobody there either)
    IGNORED_KEYS = ("prompt",)
    # keys that name files or folders, checked at start-up (True: a URL is allowed too)
    PATH_KEYS = {"llama_model": False, "ckpt": True, "vit_ckpt": True, "q_former_model": True}

    @classmethod
    def from_node(cls, node, origin=lambda key: "the config") -> "MiniGPT4Config":
        """Build from a merged ``model`` config node; errors name the key and the file that set it."""
        config = build_section(cls, node, "model", origin, ignored=cls.IGNORED_KEYS)
        if isinstance(config.lora, dict):  # an Optional section: build_section hands it over as a mapping
            config.lora = build_section(LoRAConfig, config.lora, "model.lora", origin)
        check_research_options(config, origin)
        return config


def check_research_options(config: MiniGPT4Config, origin=lambda key: "the config") -> None:
    """Ranges of the LoRA, loss and quantisation keys (the LLM's module names are checked when it is built)."""
    def bad(key: str, why: str) -> ConfigError:
        return ConfigError(f"model.{key} (set in {origin('model.' + key)}) {why}")

    lora = config.lora
    if lora is not None:
        if lora.r <= 0:
            raise bad("lora.r", f"must be a positive integer (the adapters' rank, e.g. 16); got {lora.r}.")
        if not (math.isfinite(lora.alpha) and lora.alpha > 0):
            raise bad("lora.alpha", f"must be a positive number (e.g. 2 x r = {2 * lora.r}); got {lora.alpha}.")
        if not 0 <= lora.dropout < 1:
            raise bad("lora.dropout", f"must be in [0, 1); got {lora.dropout}.")
        if not lora.target_modules:
            raise bad("lora.target_modules", "is empty: name the LLM's linear modules to adapt, e.g. [q_proj, v_proj].")
    if config.merge_lora and lora is None:
        raise bad("merge_lora", "needs model.lora (the adapters to merge); remove merge_lora or set model.lora.")
    if config.loss == "pc":
        if not (math.isfinite(config.pc_threshold) and 0 <= config.pc_threshold <= 4):
            raise bad("pc_threshold", f"must be in [0, 4] (position weights 4*i/L run from 0 to 4); "
                                      f"got {config.pc_threshold}.")
        if not (math.isfinite(config.pc_scale) and config.pc_scale > 0):
            raise bad("pc_scale", f"must be a positive number (the paper's 100); got {config.pc_scale}.")
