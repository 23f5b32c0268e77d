"""The typed ``model:`` section of MiniGPT-4: the one place its defaults live.

The defaults are the original's ``from_config`` defaults (REFERENCE 2.5) for the released
architecture (EVA ViT-g/14 at 224 px, 39 blocks; BLIP-2 Q-Former on bert-base with 32 queries;
Vicuna-7B v0), plus the keys this package adds. The small ``tiny``/``mid`` presets change only the
sizes, in their YAML files under ``minigpt4/configs/models/``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

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
    # training inputs
    prompt_path: str = ""
    prompt_template: str = ""
    max_txt_len: int = 32
    end_sym: str = "\n"
    # a MiniGPT-4 checkpoint (llama_proj, and whatever else was trained) loaded after the parts
    ckpt: str = ""

    # keys of the original that are accepted and not read (``prompt`` was read by nobody there either)
    IGNORED_KEYS = ("prompt",)
    # keys that name files or folders, checked at start-up (True: a URL is allowed too)
    PATH_KEYS = {"llama_model": False, "ckpt": True, "vit_ckpt": True, "q_former_model": True}

    @classmethod
    def from_node(cls, node, origin=lambda key: "the config") -> "MiniGPT4Config":
        """Build from a merged ``model`` config node; errors name the key and the file that set it."""
        return build_section(cls, node, "model", origin, ignored=cls.IGNORED_KEYS)
