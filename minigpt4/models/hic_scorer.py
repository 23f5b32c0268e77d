"""A learned Oxford HIC humour scorer on BLIP-2's first stage (registered arch ``hic_scorer``).

The backbone is :class:`~minigpt4.models.blip2_text.Blip2TextImageEncoder` (EVA ViT + Q-Former with
its text branch + ``vision_proj``/``text_proj``/``itm_head``, all from the BLIP-2 checkpoint MiniGPT-4
loads); a small head turns it into one score per (image, caption):

* ``head: itc`` -- features of the image's query embeddings Z (B, Q, E) and the caption's embedding t
  (B, E): ``[t, z*t, |z - t|, max_q <Z_q, t>]`` with z the normalised mean query, then an MLP. Z
  depends only on the image and t only on the caption, so with a frozen backbone both are cached
  (``cache_embeddings``) and training costs one MLP per pair.
* ``head: itm`` -- the image-grounded text encoding (queries and caption tokens together, the queries
  cross-attending to the image), mean of the query outputs, then an MLP.
* ``use_image: False`` -- the caption-only scorer: the MLP reads t alone and no ViT is built.

``freeze_backbone`` (default True) freezes everything but the head; ``train_qformer_layers: N`` then
unfreezes the last N Q-Former layers. Checkpoints hold the trainable tensors only.
"""

from __future__ import annotations

import contextlib
import logging

import torch
from torch import nn

from minigpt4.common.errors import CheckpointError, ConfigError
from minigpt4.common.registry import registry
from minigpt4.models.blip2_text import Blip2TextImageEncoder, load_bert_tokenizer, load_blip2_text_weights
from minigpt4.models.checkpoint import load_weights_file, strict_load
from minigpt4.models.eva_vit import cast_linear_conv_, load_vit_weights
from minigpt4.models.hic_scorer_config import HICScorerConfig
from minigpt4.models.precision import DTYPES
from minigpt4.models.presets import ModelPresets

logger = logging.getLogger(__name__)

HEAD_PREFIX = "head."


def _mlp(in_dim: int, hidden: int, dropout: float) -> nn.Sequential:
    # no output bias: a ranking loss sees score differences only, so an offset could never train
    mlp = nn.Sequential(nn.LayerNorm(in_dim), nn.Linear(in_dim, hidden), nn.GELU(), nn.Dropout(dropout),
                        nn.Linear(hidden, 1, bias=False))
    # an untrained scorer gives every caption the same score: pairwise accuracy exactly 0.5, the
    # Bradley-Terry loss starts at log 2
    nn.init.zeros_(mlp[-1].weight)
    return mlp


class ScoreHead(nn.Module):
    """Features -> one score. ``itc``: 3E + 1 features (E without the image); ``itm``: H."""

    def __init__(self, kind: str, use_image: bool, embed_dim: int, hidden_size: int, mlp_hidden: int, dropout: float):
        super().__init__()
        self.kind, self.use_image = kind, use_image
        in_dim = hidden_size if kind == "itm" else (3 * embed_dim + 1 if use_image else embed_dim)
        self.mlp = _mlp(in_dim, mlp_hidden, dropout)

    @staticmethod
    def itc_features(image_feats: torch.Tensor | None, text_feat: torch.Tensor) -> torch.Tensor:
        if image_feats is None:
            return text_feat
        best = Blip2TextImageEncoder.itc_similarity(image_feats, text_feat)
        image = nn.functional.normalize(image_feats.mean(dim=1), dim=-1)
        return torch.cat([text_feat, image * text_feat, (image - text_feat).abs(), best[:, None]], dim=-1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.mlp(features).squeeze(-1)


class EmbeddingCache:
    """Image query embeddings by image id and caption embeddings by text (frozen backbone only)."""

    def __init__(self):
        self.images: dict[str, torch.Tensor] = {}
        self.texts: dict[str, torch.Tensor] = {}

    def clear(self) -> None:
        self.images.clear()
        self.texts.clear()


@registry.register_model("hic_scorer")
class HICScorer(ModelPresets, nn.Module):
    PRETRAINED_MODEL_CONFIG_DICT = {
        "blip2": "configs/models/hic_scorer.yaml",
        "tiny": "configs/models/hic_scorer_tiny.yaml",
        "mid": "configs/models/hic_scorer_mid.yaml",
    }
    config_class = HICScorerConfig

    def __init__(self, config: HICScorerConfig, device="cpu", load_weights: bool = True):
        super().__init__()
        config.check()
        self.config = config
        device = torch.device(device)
        self.tokenizer = load_bert_tokenizer(config.bert_tokenizer)
        self.backbone = Blip2TextImageEncoder(config.image_size, config.num_query_token, config.vit_config,
                                              config.qformer_config, len(self.tokenizer), with_vision=config.use_image)
        if load_weights:
            if config.use_image:
                load_vit_weights(self.backbone.visual_encoder, config.vit_ckpt)
            load_blip2_text_weights(self.backbone, config.q_former_model)
        # the original's precision policy: the ViT in half precision on the GPU, everything else in fp32
        self.vit_dtype = torch.float32 if device.type == "cpu" else DTYPES[config.vit_precision]
        if config.use_image and self.vit_dtype != torch.float32:
            cast_linear_conv_(self.backbone.visual_encoder, self.vit_dtype)
        embed_dim = self.backbone.text_proj.out_features
        self.head = ScoreHead(config.head, config.use_image, embed_dim, config.qformer_config.hidden_size,
                              config.head_hidden, config.head_dropout)
        self._trainable_layers = self._apply_freezing()
        self.cache = EmbeddingCache()
        self.caches_embeddings = config.cache_embeddings and config.head == "itc" and not self.backbone_trainable
        self.truncated_captions: set[str] = set()
        self.train()  # a module starts in training mode: the frozen parts go to eval mode now (no dropout)
        self.to(device)

    # -- freezing -----------------------------------------------------------------------------------
    def _apply_freezing(self) -> list[nn.Module]:
        """Freeze the backbone but the last ``train_qformer_layers`` Q-Former layers; returns those."""
        config = self.config
        if not config.freeze_backbone:
            return []
        for p in self.backbone.parameters():
            p.requires_grad_(False)
        layers = self.backbone.Qformer.encoder.layer
        trainable = list(layers[len(layers) - config.train_qformer_layers:]) if config.train_qformer_layers else []
        for layer in trainable:
            for name, p in layer.named_parameters():
                # the caption-only scorer never runs the image path: its parts stay frozen (and unused)
                p.requires_grad_(config.use_image or not name.startswith(("crossattention.", "intermediate_query.",
                                                                          "output_query.")))
        logger.info("hic_scorer: backbone frozen%s; trainable: %s", f" but the last {len(trainable)} Q-Former layer(s)"
                    if trainable else "", ", ".join(sorted({n.split(".")[0] for n, p in self.named_parameters()
                                                            if p.requires_grad})))
        return trainable

    @property
    def backbone_trainable(self) -> bool:
        return any(p.requires_grad for p in self.backbone.parameters())

    def train(self, mode: bool = True) -> "HICScorer":
        """As ``nn.Module.train``, but frozen parts stay in eval mode (no dropout there)."""
        super().train(mode)
        if self.config.freeze_backbone:
            self.backbone.eval()
            for layer in self._trainable_layers:
                layer.train(mode)
        return self

    @property
    def device(self) -> torch.device:
        return self.head.mlp[1].weight.device

    # -- inputs -------------------------------------------------------------------------------------
    def tokenize(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Caption ids and mask, (B, L) with L <= ``max_txt_len``; longer captions are truncated and
        remembered in ``truncated_captions``."""
        limit = self.config.max_txt_len
        for caption, ids in zip(captions, self.tokenizer(list(captions))["input_ids"]):
            if len(ids) > limit:
                self.truncated_captions.add(caption)
        tokens = self.tokenizer(list(captions), padding="longest", truncation=True, max_length=limit,
                                return_tensors="pt")
        return tokens.input_ids.to(self.device), tokens.attention_mask.to(self.device)

    def _grad(self):
        return contextlib.nullcontext() if self.backbone_trainable else torch.no_grad()

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> ``ln_vision`` ViT tokens (B, N, D_vit), in fp32."""
        visual = self.backbone.visual_encoder
        images = images.to(self.device)
        autocast = (torch.autocast(device_type=self.device.type, dtype=self.vit_dtype)
                    if self.vit_dtype != torch.float32 else contextlib.nullcontext())
        with autocast, (contextlib.nullcontext() if any(p.requires_grad for p in visual.parameters()) else torch.no_grad()):
            return self.backbone.encode_image(images).float()

    def image_feats(self, images: torch.Tensor | None, image_ids: list[str] | None = None) -> torch.Tensor:
        """The images' query embeddings (B, Q, E), from the cache when every id is in it."""
        cache = self.cache.images
        if self.caches_embeddings and image_ids is not None and all(i in cache for i in image_ids):
            return torch.stack([cache[i] for i in image_ids]).to(self.device)
        if images is None:
            missing = [i for i in image_ids or [] if i not in cache][:3]
            raise ValueError(f"hic_scorer: no image given and no cached embedding for image(s) {missing}.")
        with self._grad():
            feats = self.backbone.image_feats(self.encode_image(images))
        if self.caches_embeddings and image_ids is not None:
            cache.update({i: f.detach() for i, f in zip(image_ids, feats)})
        return feats

    def text_feats(self, captions: list[str]) -> torch.Tensor:
        """The captions' contrastive embeddings (B, E); cached by text with a frozen backbone."""
        if not self.caches_embeddings:
            with self._grad():
                return self.backbone.text_feat(*self.tokenize(captions))
        cache = self.cache.texts
        missing = list(dict.fromkeys(c for c in captions if c not in cache))
        if missing:
            with torch.no_grad():
                cache.update(zip(missing, self.backbone.text_feat(*self.tokenize(missing))))
        return torch.stack([cache[c] for c in captions]).to(self.device)

    # -- scores -------------------------------------------------------------------------------------
    def score(self, images: torch.Tensor | None, captions: list[str], image_ids: list[str] | None = None,
              image_feats: torch.Tensor | None = None, image_embeds: torch.Tensor | None = None) -> torch.Tensor:
        """One humour score per (image, caption) row, (B,). The image side is ``images`` (B, 3, H, W),
        or cached ``image_ids``, or precomputed: ``image_feats`` (B, Q, E) for ``itc``, ``image_embeds``
        (B, N, D_vit ViT tokens) for ``itm``. The caption-only scorer reads no image."""
        if self.config.head == "itm":
            if image_embeds is None:
                image_embeds = self.encode_image(images)
            with self._grad():
                hidden = self.backbone.itm_hidden(image_embeds, *self.tokenize(captions))
            return self.head(hidden.mean(dim=1))
        if self.config.use_image and image_feats is None:
            image_feats = self.image_feats(images, image_ids)
        return self.head(self.head.itc_features(image_feats if self.config.use_image else None,
                                                self.text_feats(captions)))

    def similarity(self, images: torch.Tensor | None, captions: list[str], image_ids: list[str] | None = None,
                   image_feats: torch.Tensor | None = None) -> torch.Tensor:
        """BLIP-2's ITC image-caption similarity per row (the best query's cosine), (B,)."""
        if not self.config.use_image:
            raise ConfigError("similarity() needs an image: this scorer has model.use_image=False (caption only).")
        with torch.no_grad():
            if image_feats is None:
                image_feats = self.image_feats(images, image_ids)
            return self.backbone.itc_similarity(image_feats, self.text_feats(captions))

    def forward(self, samples: dict) -> dict:
        """A batch of pairs (``image`` (B, 3, H, W) unless cached, ``image_id``, ``text_win``, ``text_lose``)
        -> ``score_win``, ``score_lose`` (B,)."""
        images, ids = samples.get("image"), samples.get("image_id")
        win, lose = list(samples["text_win"]), list(samples["text_lose"])
        if self.config.head == "itm":
            embeds = self.encode_image(images)
            scores = self.score(None, win + lose, image_embeds=torch.cat([embeds, embeds]))
        elif self.config.use_image:
            feats = self.image_feats(images, ids)
            scores = self.score(None, win + lose, image_feats=torch.cat([feats, feats]))
        else:
            scores = self.score(None, win + lose)
        return {"score_win": scores[: len(win)], "score_lose": scores[len(win):]}

    # -- checkpoints --------------------------------------------------------------------------------
    def trainable_state_dict(self) -> dict:
        """What a checkpoint holds: every parameter that requires grad (the head, trainable layers)."""
        return {name: p.detach() for name, p in self.named_parameters() if p.requires_grad}

    def load_checkpoint(self, ckpt: str) -> list[str]:
        """A trained scorer (``model.ckpt``): the head and any trainable layers it was trained with."""
        state = load_weights_file(ckpt, "scorer checkpoint (model.ckpt)")
        saved_model = (state.get("config") or {}).get("model") if isinstance(state.get("config"), dict) else None
        weights = state["model"] if isinstance(state.get("model"), dict) else state
        if not any(k.startswith(HEAD_PREFIX) for k in weights):
            sample = ", ".join(sorted(weights)[:3]) or "no tensors"
            raise CheckpointError(
                f"model.ckpt {ckpt} holds no humour-scorer head ({HEAD_PREFIX}*; it has {sample}): it was made for "
                "another architecture. Point model.ckpt at a checkpoint_*.pth of a hic_scorer training run."
            )
        if isinstance(saved_model, dict):
            for key in ("head", "use_image"):
                if key in saved_model and saved_model[key] != getattr(self.config, key):
                    raise CheckpointError(
                        f"model.ckpt {ckpt} was trained with model.{key}={saved_model[key]!r} but this config has "
                        f"model.{key}={getattr(self.config, key)!r}: set model.{key} to match the checkpoint.")
        # the head must be whole; Q-Former layers it does not hold keep the BLIP-2 weights (a head trained
        # on a frozen backbone); a resume checks separately that every trainable tensor was there
        loaded = strict_load(self, weights, f"scorer checkpoint {ckpt} (model.ckpt)",
                             may_be_missing=lambda key: not key.startswith(HEAD_PREFIX))
        logger.info("Loaded %d scorer tensors from %s", len(loaded), ckpt)
        return loaded

    @classmethod
    def from_config(cls, cfg, device="cpu") -> "HICScorer":
        """Build from a ``model`` config node (or a :class:`HICScorerConfig`), then load ``model.ckpt``."""
        config = cfg if isinstance(cfg, HICScorerConfig) else HICScorerConfig.from_node(cfg)
        model = cls(config, device=device)
        if config.ckpt:
            model.load_checkpoint(config.ckpt)
        return model
