"""Sample captions after every epoch (``run.sample_captions: K``): the first K images of the first
validation split, captioned with greedy decoding as ``caption.py`` does by default (same prompt, same
settings), written to ``<job>/samples/epoch_NNN.jsonl`` in caption.py's record format. Rank 0 only."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from minigpt4.constants import DEFAULT_PROMPT
from minigpt4.common.atomic import atomic_write_text
from minigpt4.common.errors import ConfigError
from minigpt4.inference.batch import BatchCaptioner, GenerationSettings
from minigpt4.inference.records import CaptionRecord, encode_line

logger = logging.getLogger(__name__)


def sample_dataset(datasets: dict, splits: list[str]):
    """The dataset of the first validation split (the first dataset that has it), or None."""
    for split in splits[:1]:
        for parts in datasets.values():
            if split in parts:
                return parts[split]
    return None


def check_samples(run, model, datasets: dict, origin) -> int:
    """How many images ``run.sample_captions`` captions: all of the split when it has fewer (said once)."""
    wanted = run.sample_captions
    if not wanted:
        return 0
    if not hasattr(model, "llama_tokenizer"):
        raise ConfigError(f"run.sample_captions (set in {origin('run.sample_captions')}): this model does not write "
                          "captions; set run.sample_captions=0.")
    dataset = sample_dataset(datasets, run.valid_splits)
    if wanted > len(dataset):
        logger.warning("run.sample_captions is %d but the %s split has %d images: captioning all of them.",
                       wanted, run.valid_splits[0], len(dataset))
    return min(wanted, len(dataset))


@torch.no_grad()
def caption_samples(model, dataset, count: int, batch_size: int, model_info: dict) -> list[CaptionRecord]:
    """Greedy captions of the first ``count`` images of ``dataset`` (an HIC eval split) as records."""
    was_training = model.training
    model.eval()
    settings = GenerationSettings()
    captioner = BatchCaptioner(model, getattr(dataset, "vis_processor", None), model.device)
    records = []
    try:
        for start in range(0, count, batch_size):
            items = [dataset[i] for i in range(start, min(start + batch_size, count))]
            results = captioner.generate([item["image"] for item in items], DEFAULT_PROMPT, settings)
            for index, item, caps in zip(range(start, count), items, results):
                paths = getattr(dataset, "paths", None)
                image = str(paths[index]) if paths is not None else str(item["image_id"])
                records.append(CaptionRecord(image, str(item["image_id"]), prompt=DEFAULT_PROMPT, caption=caps[0].text,
                                             caption_index=0, num_tokens=len(caps[0].token_ids),
                                             settings={**settings.as_dict(), "num_captions": 1}, model=model_info))
    finally:
        model.train(was_training)
    return records


def write_samples(job_dir: Path, epoch: int, records: list[CaptionRecord]) -> Path:
    """``<job_dir>/samples/epoch_NNN.jsonl``, written whole."""
    path = Path(job_dir) / "samples" / f"epoch_{epoch:03d}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, "".join(encode_line(r) for r in records))
    return path
