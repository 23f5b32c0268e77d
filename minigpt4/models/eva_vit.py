"""EVA-CLIP ViT-g/14 as the original MiniGPT-4 builds it, on top of ``timm.models.eva.Eva``.

The original's encoder: pre-norm blocks, LayerNorm eps 1e-6, fused ``qkv`` without bias plus
separate ``q_bias``/``v_bias`` (k has none), exact GELU MLP with ``int(dim * 4.3637)`` hidden units,
learned absolute position embeddings, a CLS token, 39 of EVA-g's 40 blocks, no final norm and no
head. The output is every token of the last block: (B, 1 + (image_size/patch)^2, embed_dim).
"""

from __future__ import annotations

import logging
import math
import re
from functools import partial

import torch
from timm.layers import resample_abs_pos_embed
from timm.models.eva import Eva
from torch import nn

from minigpt4.common.errors import CheckpointError
from minigpt4.models.checkpoint import load_weights_file, resolve_weights, strict_load
from minigpt4.models.config import VisionConfig

logger = logging.getLogger(__name__)

def build_eva_vit(image_size: int, drop_path_rate: float = 0.0, use_grad_checkpoint: bool = False,
                  arch: VisionConfig | None = None, device=None) -> Eva:
    """Build the encoder with the sizes of ``arch`` (``model.vit_config``; default: the released
    EVA ViT-g/14 as MiniGPT-4 builds it, 39 blocks of 40)."""
    arch = arch or VisionConfig()
    vit = Eva(
        img_size=image_size,
        patch_size=arch.patch_size,
        num_classes=0,
        global_pool="",
        embed_dim=arch.embed_dim,
        depth=arch.depth,
        num_heads=arch.num_heads,
        mlp_ratio=arch.mlp_ratio,
        qkv_bias=True,
        qkv_fused=True,
        drop_path_rate=drop_path_rate,
        norm_layer=partial(nn.LayerNorm, eps=1e-6),
        use_abs_pos_emb=True,
        use_rot_pos_emb=False,
        use_post_transformer_norm=False,
        use_fc_norm=False,
        device=device,
    )
    vit.set_grad_checkpointing(bool(use_grad_checkpoint))
    return vit


def set_attention(vit: Eva, implementation: str) -> None:
    """``"sdpa"``: timm's fused attention (``scaled_dot_product_attention``, timm's default); ``"eager"``:
    the explicit softmax(QK^T)V of the original."""
    for block in vit.blocks:
        block.attn.fused_attn = implementation == "sdpa"


def vit_features(vit: Eva, image: torch.Tensor) -> torch.Tensor:
    """All tokens of the last block (no final norm, no pooling)."""
    return vit.forward_features(image)


_BLOCK = re.compile(r"^blocks\.(\d+)\.")


def convert_eva_state_dict(state_dict: dict, vit: Eva) -> tuple[dict, list[str]]:
    """Adapt a checkpoint in the ``eva_vit_g.pth`` layout to ``vit``.

    Blocks beyond the built depth (EVA-g's 40th) are dropped on purpose and returned; the position
    embedding is resized bicubically (no antialias, as the original) when the image size differs.
    Any other mismatch is left for :func:`strict_load` to report.
    """
    depth = len(vit.blocks)
    out, dropped = {}, []
    for key, value in state_dict.items():
        match = _BLOCK.match(key)
        if match and int(match.group(1)) >= depth:
            dropped.append(key)
            continue
        out[key] = value
    if "pos_embed" in out and vit.pos_embed is not None:
        pos = out["pos_embed"]
        num_ckpt, num_model = pos.shape[1] - 1, vit.pos_embed.shape[1] - 1
        if pos.shape[-1] != vit.pos_embed.shape[-1]:
            raise CheckpointError(
                f"vision weights: key 'pos_embed' has width {pos.shape[-1]} but the model has "
                f"{vit.pos_embed.shape[-1]}; check model.vit_config."
            )
        if num_ckpt != num_model:
            old, new = int(math.isqrt(num_ckpt)), int(math.isqrt(num_model))
            logger.info("Position interpolate from %dx%d to %dx%d", old, old, new, new)
            out["pos_embed"] = resample_abs_pos_embed(
                pos.float(), new_size=(new, new), old_size=(old, old), num_prefix_tokens=1,
                interpolation="bicubic", antialias=False,
            ).to(pos.dtype)
    return out, dropped


def load_eva_state(vit: Eva, state_dict: dict, what: str, partial: bool = False) -> tuple[int, list[str]]:
    """A state dict in the ``eva_vit_g.pth`` layout into ``vit`` (:func:`convert_eva_state_dict`, then
    :func:`strict_load`; ``partial``: keys it lacks keep their values, as for the ViT tensors a BLIP-2
    checkpoint carries). Returns ``(tensors loaded, keys dropped on purpose)``."""
    state, dropped = convert_eva_state_dict(state_dict, vit)
    strict_load(vit, state, what, may_be_missing=lambda key: partial)
    return len(state), dropped


def load_vit_weights(vit: Eva, vit_ckpt: str) -> None:
    """``eva_vit_g.pth`` (path or URL) into the ViT, strictly (EVA-g's 40th block dropped on purpose)."""
    path = resolve_weights(vit_ckpt, "vision encoder (EVA ViT-g)", "vit_ckpt")
    state = load_weights_file(path, "vision encoder (model.vit_ckpt)")
    state = state["model"] if isinstance(state.get("model"), dict) else state
    loaded, dropped = load_eva_state(vit, state, f"vision encoder {path} (model.vit_ckpt)")
    logger.info("Loaded %d vision tensors from %s (dropped on purpose: %d beyond depth)", loaded, path, len(dropped))


def cast_linear_conv_(module: nn.Module, dtype: torch.dtype) -> None:
    """The original's fp16 ViT: Linear/Conv weights and biases in ``dtype``; norms, CLS, position
    embedding and q/v biases stay fp32 (so the encoder runs under autocast)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear)):
            m.weight.data = m.weight.data.to(dtype)
            if m.bias is not None:
                m.bias.data = m.bias.data.to(dtype)
