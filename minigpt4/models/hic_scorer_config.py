"""The typed ``model:`` section of the humour scorer (arch ``hic_scorer``): the one place its defaults live.

The backbone defaults are the released BLIP-2 first stage MiniGPT-4 already loads (EVA ViT-g/14 at
224 px, 39 blocks; Q-Former on bert-base with 32 queries; ``blip2_pretrained_flant5xxl.pth``); the
small ``tiny``/``mid`` presets change only the sizes, in their YAML files.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from omegaconf import OmegaConf

from minigpt4.common.errors import ConfigError
from minigpt4.common.paths import PACKAGE_ROOT
from minigpt4.common.schema import build_section
from minigpt4.constants import BLIP2_FLANT5XXL_URL, EVA_VIT_G_URL
from minigpt4.models.config import QFormerConfig, VisionConfig


@dataclass
class HICScorerConfig:
    arch: str = "hic_scorer"
    model_type: str = "blip2"
    # backbone: the BLIP-2 first stage (ViT + ln_vision + Q-Former with its text branch + heads)
    vit_model: Literal["eva_clip_g"] = "eva_clip_g"
    vit_ckpt: str = EVA_VIT_G_URL
    image_size: int = 224
    vit_precision: Literal["fp16", "bf16", "fp32"] = "fp16"  # GPU only; on CPU everything runs in fp32
    vit_config: VisionConfig = field(default_factory=VisionConfig)
    q_former_model: str = BLIP2_FLANT5XXL_URL
    num_query_token: int = 32
    qformer_config: QFormerConfig = field(default_factory=QFormerConfig)
    bert_tokenizer: str = ""  # a local bert-base-uncased tokenizer folder ([DEC] is added as LAVIS adds it)
    max_txt_len: int = 32  # caption tokens, [CLS] and [SEP] included (BLIP-2's value); longer ones are cut
    # the scorer
    head: Literal["itc", "itm"] = "itc"
    use_image: bool = True  # False: the caption-only baseline (text encoder only, no ViT)
    freeze_backbone: bool = True
    train_qformer_layers: int = 0  # with a frozen backbone: the last N Q-Former layers train too
    head_hidden: int = 256
    head_dropout: float = 0.1
    cache_embeddings: bool = True  # itc + fully frozen backbone: image/caption embeddings computed once
    ckpt: str = ""  # a trained scorer (checkpoint_best.pth of a hic_scorer training run)

    # keys that name files or folders, checked at start-up (True: a URL is allowed too)
    PATH_KEYS = {"vit_ckpt": True, "q_former_model": True, "bert_tokenizer": False, "ckpt": False}
    PATH_HINTS = {"bert_tokenizer": "a local bert-base-uncased tokenizer folder; see docs/HUMOUR.md, 'Weights'"}

    @classmethod
    def from_node(cls, node, origin=lambda key: "the config") -> "HICScorerConfig":
        """Build from a merged ``model`` config node; errors name the key and the file that set it."""
        config = build_section(cls, node, "model", origin)
        config.check(origin)
        return config

    def check(self, origin=lambda key: "the config") -> None:
        """Combinations no single key's type can rule out."""
        if self.head == "itm" and not self.use_image:
            raise ConfigError(f"model.head=itm (set in {origin('model.head')}) needs an image, but model.use_image is "
                              "False: the caption-only scorer uses head: itc.")
        layers = self.qformer_config.num_hidden_layers
        if not 0 <= self.train_qformer_layers <= layers:
            raise ConfigError(f"model.train_qformer_layers (set in {origin('model.train_qformer_layers')}) must be "
                              f"between 0 and the {layers} Q-Former layers; got {self.train_qformer_layers}.")
        if self.train_qformer_layers and not self.freeze_backbone:
            raise ConfigError("model.train_qformer_layers applies to a frozen backbone; with "
                              "model.freeze_backbone=False every layer trains already: set one of them.")


def _minigpt4_preset(preset: str, key: str):
    """``${minigpt4_preset:tiny,qformer_config}`` in a YAML: that key of the MiniGPT-4 preset YAML, so the
    small scorer presets share the one home of the tiny/mid sizes (and the weights make_tiny writes)."""
    value = OmegaConf.load(PACKAGE_ROOT / "configs" / "models" / f"minigpt4_{preset}.yaml").model[key]
    return OmegaConf.to_container(value) if OmegaConf.is_config(value) else value


if not OmegaConf.has_resolver("minigpt4_preset"):
    getattr(OmegaConf, "register_resolver", OmegaConf.register_new_resolver)("minigpt4_preset", _minigpt4_preset)
