"""Scoring (image, caption) rows with a trained humour scorer: ``HumourScorer.from_config(cfg)``.

    scorer = HumourScorer.from_config("eval_configs/hic_scorer_tiny_eval.yaml")
    scores = scorer.score(images, captions)       # (N,) float tensor, higher = funnier
    sims = scorer.similarity(images, captions)    # (N,) BLIP-2 ITC cosine, for grounding

``images`` is one image for every caption, or one per caption: file paths, PIL images or processed
(3, H, W) tensors; equal paths and the same object are encoded once. The caption-only scorer
(``model.use_image: False``) takes ``images=None``.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Sequence

import torch
from PIL import Image

from minigpt4.common.config import Config
from minigpt4.common.devices import resolve_device
from minigpt4.common.errors import ConfigError
from minigpt4.inference.inputs import image_tensor
from minigpt4.inference.loading import build_for_inference, load_config
from minigpt4.models.hic_scorer import HICScorer

logger = logging.getLogger(__name__)


def file_sha256(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _image_key(image) -> object:
    return str(Path(image).resolve()) if isinstance(image, (str, Path)) else id(image)


class HumourScorer:
    def __init__(self, model: HICScorer, vis_processor, info: dict):
        self.model, self.vis_processor, self.info = model.eval(), vis_processor, info
        model.caches_embeddings = False  # scoring many captions must not grow a cache

    @classmethod
    def from_config(cls, cfg, options: Sequence[str] | None = None, device=None) -> "HumourScorer":
        """``cfg``: a :class:`Config` or the path of an eval YAML (``--options`` in ``options``)."""
        device = resolve_device(device, setting="--device")
        if not isinstance(cfg, Config):
            cfg = load_config(str(cfg), options, device)
        if cfg.model_cfg.get("arch") != "hic_scorer":
            raise ConfigError(f"{cfg.args.cfg_path} is not a humour scorer config (model.arch is "
                              f"{cfg.model_cfg.get('arch')!r}, expected hic_scorer; see eval_configs/hic_scorer_eval.yaml).")
        loaded = build_for_inference(cfg, device)
        ckpt = str(cfg.model_cfg.get("ckpt") or "")
        if not ckpt:
            logger.warning("%s sets no model.ckpt: the head is untrained and every caption gets the same score.",
                           cfg.args.cfg_path)
        info = {"cfg": str(cfg.args.cfg_path), "options": list(getattr(cfg.args, "options", None) or []),
                "ckpt": ckpt, "ckpt_sha256": file_sha256(ckpt) if ckpt else None,
                "head": loaded.model.config.head, "use_image": loaded.model.config.use_image,
                "model_type": str(cfg.model_cfg.get("model_type", "")), "device": str(device)}
        return cls(loaded.model, loaded.vis_processor, info)

    @property
    def truncated_captions(self) -> int:
        """Distinct captions so far that were longer than ``model.max_txt_len`` tokens (and cut)."""
        return len(self.model.truncated_captions)

    # -- inputs -----------------------------------------------------------------------------------
    def _rows(self, images, captions) -> tuple[list, list[int]]:
        """Distinct images and, per caption row, the index of its image."""
        if not self.model.config.use_image:
            return [], [0] * len(captions)
        if images is None:
            raise ValueError("this scorer reads the image: pass one image or one per caption.")
        single = isinstance(images, (str, Path, Image.Image)) or (isinstance(images, torch.Tensor) and images.dim() == 3)
        images = [images] * len(captions) if single else list(images)
        if len(images) != len(captions):
            raise ValueError(f"{len(images)} images for {len(captions)} captions: pass one image or one per caption.")
        distinct, index, seen = [], [], {}
        for image in images:
            key = _image_key(image)
            if key not in seen:
                seen[key] = len(distinct)
                distinct.append(image)
            index.append(seen[key])
        return distinct, index

    def _pixels(self, images: list) -> torch.Tensor:
        return torch.cat([image_tensor(image, self.vis_processor) for image in images])

    def _image_side(self, images: list, batch_size: int, feats: bool) -> torch.Tensor:
        """ITC query embeddings (``feats``) or ViT tokens of the distinct images, batched."""
        out = []
        with torch.no_grad():
            for start in range(0, len(images), batch_size):
                pixels = self._pixels(images[start:start + batch_size])
                out.append(self.model.image_feats(pixels) if feats else self.model.encode_image(pixels))
        return torch.cat(out)

    # -- scores -----------------------------------------------------------------------------------
    def score(self, images, captions: Sequence[str], batch_size: int = 64) -> torch.Tensor:
        """Humour scores of the (image, caption) rows, (N,) on the CPU."""
        captions = list(captions)
        if not captions:
            return torch.empty(0)
        distinct, index = self._rows(images, captions)
        use_feats = self.model.config.head == "itc"
        side = self._image_side(distinct, batch_size, use_feats) if distinct else None
        scores = []
        with torch.no_grad():
            for start in range(0, len(captions), batch_size):
                chunk = captions[start:start + batch_size]
                rows = torch.tensor(index[start:start + batch_size], device=self.model.device)
                picked = side[rows] if side is not None else None
                kwargs = {"image_feats": picked} if use_feats else {"image_embeds": picked}
                scores.append(self.model.score(None, chunk, **kwargs).float().cpu())
        return torch.cat(scores)

    def similarity(self, images, captions: Sequence[str], batch_size: int = 64) -> torch.Tensor:
        """BLIP-2's ITC image-caption similarity of the rows (the best query's cosine), (N,) on the CPU."""
        captions = list(captions)
        if not self.model.config.use_image:
            raise ConfigError(f"{self.info['cfg']}: similarity needs an image, but this is the caption-only scorer "
                              "(model.use_image=False).")
        distinct, index = self._rows(images, captions)
        feats = self._image_side(distinct, batch_size, True)
        sims = []
        for start in range(0, len(captions), batch_size):
            rows = torch.tensor(index[start:start + batch_size], device=self.model.device)
            sims.append(self.model.similarity(None, captions[start:start + batch_size], image_feats=feats[rows]).cpu())
        return torch.cat(sims)
