"""``humour_ranking``: train a humour scorer on caption pairs with the Bradley-Terry loss.

Per pair, ``loss = -log sigmoid(s_win - s_lose)``, averaged with the pair weights; the training log
shows the batch's pairwise accuracy (the winner scored higher; a tie counts half) beside the loss.
After every epoch the runner asks :meth:`HumourRankingTask.validate` for the pairwise accuracy on
the validation pairs (``run.valid_splits``), and keeps ``checkpoint_best.pth`` by it.

With a frozen backbone and the ``itc`` head, :meth:`build_model` computes every image's embedding
of the datasets once (the images are then never read again) and the captions' embeddings are cached
as they come: an epoch costs one small MLP per pair.
"""

from __future__ import annotations

import logging

import torch
from torch.nn import functional as F

from minigpt4.common import dist_utils
from minigpt4.common.registry import registry
from minigpt4.tasks.base_task import BaseTask

logger = logging.getLogger(__name__)


def pairwise_correct(margin: torch.Tensor) -> torch.Tensor:
    """1 where the winner scored higher, 0.5 on a tie, 0 otherwise."""
    return (margin > 0).float() + 0.5 * (margin == 0).float()


@registry.register_task("humour_ranking")
class HumourRankingTask(BaseTask):
    best_metric = ("val_pairwise_accuracy", "max")  # which validation number picks checkpoint_best.pth

    def __init__(self):
        self.datasets: dict = {}

    def build_datasets(self, cfg) -> dict:
        self.datasets = super().build_datasets(cfg)
        return self.datasets

    def build_model(self, cfg, device="cpu"):
        model = super().build_model(cfg, device=device)
        if getattr(model, "caches_embeddings", False) and self.datasets:
            self.fill_embedding_cache(model, self.datasets)
        return model

    @staticmethod
    def fill_embedding_cache(model, datasets: dict, batch_size: int = 32) -> None:
        """Every image and caption of every split into the model's cache, in the datasets' order (so
        an embedding does not depend on which batch first met it, and a resumed run sees the same
        numbers); the datasets stop reading images. An unreadable image is left out with its pairs."""
        was_training = model.training
        model.eval()
        for name, splits in datasets.items():
            for split, dataset in splits.items():
                ids = [i for i in dataset.image_ids() if i not in model.cache.images]
                bad = set()
                for start in range(0, len(ids), batch_size):
                    pixels, good = [], []
                    for image_id in ids[start:start + batch_size]:
                        try:
                            pixels.append(dataset.load_image(image_id))
                            good.append(image_id)
                        except Exception as err:  # noqa: BLE001  (Pillow raises many types on broken files)
                            logger.warning("%s/%s: leaving out image %s and its pairs (%s).", name, split, image_id, err)
                            bad.add(image_id)
                    if good:
                        model.image_feats(torch.stack(pixels), good)
                if bad:
                    dataset.pairs = [p for p in dataset.pairs if p.image_id not in bad]
                captions = [c for c in dataset.captions() if c not in model.cache.texts]
                for start in range(0, len(captions), 8 * batch_size):
                    model.text_feats(captions[start:start + 8 * batch_size])
                dataset.load_images = False
                logger.info("%s/%s: embeddings of %d images and %d captions cached (%d unreadable images).", name,
                            split, len(ids) - len(bad), len(captions), len(bad))
        model.train(was_training)

    def train_step(self, model, samples: dict) -> dict:
        scores = model(samples)
        margin = (scores["score_win"] - scores["score_lose"]).float()  # the loss in fp32, also under autocast
        weight = samples["weight"].float()
        loss = (weight * -F.logsigmoid(margin)).sum() / weight.sum().clamp_min(1e-12)
        return {"loss": loss, "log": {"pairwise_accuracy": pairwise_correct(margin.detach()).mean()}}

    @torch.no_grad()
    def validate(self, model, datasets: dict, splits: list[str], batch_size: int) -> dict:
        """Pairwise accuracy on the pairs of ``splits`` (each process scores its share; all agree)."""
        rank, world = dist_utils.get_rank(), dist_utils.get_world_size()
        was_training = model.training
        model.eval()
        correct, total = 0.0, 0
        for split in splits:
            for dataset in (s[split] for s in datasets.values() if split in s):
                indices = list(range(rank, len(dataset), world))
                for start in range(0, len(indices), batch_size):
                    batch = dataset.collater([dataset[i] for i in indices[start:start + batch_size]])
                    batch = {k: v.to(model.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
                    scores = model(batch)
                    correct += pairwise_correct(scores["score_win"] - scores["score_lose"]).sum().item()
                    total += len(batch["text_win"])
        model.train(was_training)
        parts = dist_utils.all_gather_object((correct, total))
        correct, total = sum(p[0] for p in parts), sum(p[1] for p in parts)
        if not total:
            return {}
        logger.info("Validation (%s): pairwise accuracy %.4f on %d pairs.", ", ".join(splits), correct / total, total)
        return {"val_pairwise_accuracy": correct / total, "val_pairs": total}
