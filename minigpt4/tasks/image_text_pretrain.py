"""``image_text_pretrain``: caption language modelling, the loss of the caption tokens (stage 1 and
stage 2), and -- with ``run.valid_splits`` -- the validation loss after every epoch.

The validation loss is the mean cross-entropy per caption token over every (image, reference caption)
pair of the validation splits (the HIC ``val.json``: all kept captions of each image), whatever
``model.loss`` trains with, so ``ce`` and ``pc`` runs compare. Pair k (in file order) is asked the
training prompt ``k mod (number of prompts)``: no random draw, so the number is the same in every
epoch, for every batch size and number of processes (each process takes every N-th image, the sums
are added up), and validating does not move the training RNG.
"""

from __future__ import annotations

import logging

import torch
from torch.utils.data import DataLoader, Subset

from minigpt4.common import dist_utils
from minigpt4.common.errors import ConfigError
from minigpt4.common.registry import registry
from minigpt4.models.losses import token_nll
from minigpt4.tasks.base_task import BaseTask

logger = logging.getLogger(__name__)


def _as_list(batch: list) -> list:
    return batch


def caption_pairs(dataset) -> list[tuple[int, int]]:
    """``(image index, caption index)`` of every reference caption of ``dataset``, image by image."""
    pairs = []
    for i in range(len(dataset)):
        item = dataset.images[i] if hasattr(dataset, "images") else None
        count = len(item.captions) if item is not None else 1
        pairs += [(i, j) for j in range(count)]
    return pairs


def _captions(item: dict) -> list[str]:
    return list(item["captions"]) if "captions" in item else [item["text_input"]]


@registry.register_task("image_text_pretrain")
class ImageTextPretrainTask(BaseTask):
    """Caption language modelling; ``checkpoint_best.pth`` by the lowest validation loss."""

    best_metric = ("val_loss", "min")

    def __init__(self, num_workers: int = 0):
        self.num_workers = num_workers  # loader workers for the validation images (run.num_workers)

    @classmethod
    def setup_task(cls, cfg=None, **kwargs):
        run = getattr(cfg, "run_cfg", None) if cfg is not None else None
        return cls(num_workers=int(run.get("num_workers", 0) or 0) if run is not None else 0)

    def build_model(self, cfg, device="cpu"):
        """The model of ``cfg``; ``model.ckpt`` may lack LoRA adapters (training starts fresh ones)."""
        if cfg.model_cfg.get("merge_lora", False):
            raise ConfigError("model.merge_lora is for inference (caption.py, the demo): merged adapters cannot "
                              "be trained on. Remove it from the training config.")
        model_cls = registry.get_model_class(cfg.model_cfg.arch)
        fresh = {"fresh_adapters": True} if cfg.model_cfg.get("lora") is not None else {}
        return model_cls.from_config(cfg.model_cfg, device=device, **fresh)

    @torch.no_grad()
    def validate(self, model, datasets: dict, splits: list[str], batch_size: int) -> dict:
        """``{"val_loss", "val_tokens", "val_captions"}`` over the pairs of ``splits``."""
        rank, world = dist_utils.get_rank(), dist_utils.get_world_size()
        prompts = list(model.prompt_list) or [""]
        was_training = model.training
        model.eval()
        total, tokens, captions = 0.0, 0, 0
        try:
            for split in splits:
                for dataset in (parts[split] for parts in datasets.values() if split in parts):
                    pairs = caption_pairs(dataset)
                    first_pair = {}  # image index -> global index of its first pair
                    for k, (i, j) in enumerate(pairs):
                        first_pair.setdefault(i, k)
                    shard = list(range(rank, len(dataset), world))
                    loader = DataLoader(Subset(dataset, shard), batch_size=batch_size, num_workers=self.num_workers,
                                        collate_fn=_as_list, generator=torch.Generator().manual_seed(0))
                    for start, items in zip(range(0, len(shard), batch_size), loader):
                        work = [(first_pair[i] + j, item["image"], caption) for i, item in zip(shard[start:], items)
                                for j, caption in enumerate(_captions(item))]
                        part = self._batch_nll(model, work, prompts, batch_size)
                        total, tokens, captions = total + part[0], tokens + part[1], captions + len(work)
        finally:
            model.train(was_training)
        parts = dist_utils.all_gather_object((total, tokens, captions))
        total, tokens, captions = (sum(p[n] for p in parts) for n in range(3))
        if not tokens:
            return {}
        logger.info("Validation (%s): loss %.4f per token over %d captions (%d tokens).", ", ".join(splits),
                    total / tokens, captions, tokens)
        return {"val_loss": total / tokens, "val_tokens": tokens, "val_captions": captions}

    @staticmethod
    def _batch_nll(model, work: list, prompts: list[str], batch_size: int) -> tuple[float, int]:
        """Summed caption-token cross-entropy of ``(pair index, image, caption)`` items, batched per prompt."""
        total, tokens = 0.0, 0
        for p, prompt in enumerate(prompts):
            group = [(image, caption) for k, image, caption in work if k % len(prompts) == p]
            for start in range(0, len(group), batch_size):
                chunk = group[start:start + batch_size]
                samples = {"image": torch.stack([image for image, _ in chunk]).to(model.device),
                           "text_input": [caption for _, caption in chunk]}
                inputs = model.build_training_inputs(samples, prompt=prompt)
                labels = inputs.pop("labels")
                with model.maybe_autocast():
                    logits = model.llama_model(**inputs, return_dict=True).logits
                nll, count = token_nll(logits, labels)
                total, tokens = total + float(nll), tokens + count
        return total, tokens
