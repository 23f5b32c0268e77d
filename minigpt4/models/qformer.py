"""The BLIP-2 Q-Former (query path only) on ``transformers.Blip2QFormerModel``, and the converter
from the LAVIS BLIP-2 checkpoint layout (``Qformer.bert.…``) to it and back."""

from __future__ import annotations

import contextlib
import re
from pathlib import Path

import torch
from torch import nn
from transformers import Blip2QFormerConfig, Blip2QFormerModel

from minigpt4.common.errors import CheckpointError
from minigpt4.models.checkpoint import load_weights_file, resolve_weights
from minigpt4.models.config import QFormerConfig

def build_qformer(num_query_token: int, vision_width: int, arch: QFormerConfig | None = None, device=None,
                  attn_implementation: str = "eager"):
    """Return ``(qformer, query_tokens)`` with the sizes of ``arch`` (``model.qformer_config``; default:
    bert-base-uncased as the original reads it, with BLIP-2's cross-attention every 2nd layer).
    ``attn_implementation``: ``"eager"`` (the original's math) or ``"sdpa"`` (differs only in rounding)."""
    arch = arch or QFormerConfig()
    config = Blip2QFormerConfig(
        hidden_size=arch.hidden_size,
        num_hidden_layers=arch.num_hidden_layers,
        num_attention_heads=arch.num_attention_heads,
        intermediate_size=arch.intermediate_size,
        cross_attention_frequency=arch.cross_attention_freq,
        encoder_hidden_size=vision_width,
        hidden_act="gelu",
        layer_norm_eps=1e-12,
        hidden_dropout_prob=0.1,
        attention_probs_dropout_prob=0.1,
        use_qformer_text_input=False,
    )
    config._attn_implementation = attn_implementation
    with torch.device(device) if device is not None else contextlib.nullcontext():
        qformer = Blip2QFormerModel(config)
        query_tokens = nn.Parameter(torch.zeros(1, num_query_token, arch.hidden_size))
    if device is None or torch.device(device).type != "meta":
        query_tokens.data.normal_(mean=0.0, std=0.02)
    return qformer, query_tokens


# Keys of the BLIP-2 checkpoint that MiniGPT-4 does not use, dropped on purpose (with the reason).
BLIP2_DROPPED = [
    (re.compile(r"^Qformer\.cls\."), "Q-Former MLM head (text only)"),
    (re.compile(r"^Qformer\.bert\.embeddings\.(word_embeddings|position_embeddings)\."), "text embeddings"),
    (re.compile(r"^Qformer\.bert\.embeddings\.position_ids$"), "text position ids buffer"),
    (re.compile(r"^Qformer\.bert\.encoder\.layer\.\d+\.(intermediate|output)\."), "text feed-forward"),
    (re.compile(r"^(t5_proj|opt_proj|llm_proj|vision_proj|text_proj|itm_head)\."), "BLIP-2 heads"),
    (re.compile(r"^(t5_model|opt_model|llm_model)\."), "BLIP-2 language model"),
    (re.compile(r"^temp$"), "contrastive temperature"),
]
_PREFIX_PAIRS = [  # (original layout, this package's layout)
    ("Qformer.bert.embeddings.LayerNorm.", "Qformer.layernorm."),
    ("Qformer.bert.encoder.", "Qformer.encoder."),
]


def qformer_key_to_ours(key: str) -> str:
    for original, ours in _PREFIX_PAIRS:
        if key.startswith(original):
            return (ours + key[len(original):]).replace("attention.self.", "attention.attention.")
    return key


def qformer_key_to_original(key: str) -> str:
    for original, ours in _PREFIX_PAIRS:
        if key.startswith(ours):
            return (original + key[len(ours):]).replace("attention.attention.", "attention.self.")
    return key


def read_blip2_checkpoint(q_former_model: str) -> tuple[Path, dict]:
    """The local path of a LAVIS BLIP-2 checkpoint (path or URL, ``model.q_former_model``) and its
    ``model`` entry."""
    path = resolve_weights(q_former_model, "BLIP-2 Q-Former", "q_former_model")
    state = load_weights_file(path, "BLIP-2 checkpoint (model.q_former_model)")
    if not isinstance(state.get("model"), dict):
        raise CheckpointError(f"BLIP-2 checkpoint {path} has no 'model' entry; is it a LAVIS BLIP-2 checkpoint?")
    return path, state["model"]


def convert_blip2_state_dict(state_dict: dict) -> tuple[dict, list[str]]:
    """Rename a LAVIS BLIP-2 state dict to this package's MiniGPT-4 names; return ``(renamed, dropped)``.

    ``Qformer.*`` keys are renamed for ``Blip2QFormerModel``; ``query_tokens``, ``ln_vision.*`` and any
    ``visual_encoder.*`` keys keep their names (the original loads those into the whole model)."""
    out, dropped = {}, []
    for key, value in state_dict.items():
        if any(pattern.search(key) for pattern, _ in BLIP2_DROPPED):
            dropped.append(key)
            continue
        out[qformer_key_to_ours(key)] = value
    return out, dropped
