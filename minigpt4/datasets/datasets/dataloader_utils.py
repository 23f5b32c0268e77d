"""Infinite, resumable training loaders (REFERENCE 6.6).

The original wraps each map-style loader in an ``IterLoader`` that restarts the iterator when the
dataset is exhausted (reshuffling through ``DistributedSampler.set_epoch``) and picks, per ``next()``,
one whole batch from one of several loaders with ``random.choices(sample_ratio)`` (``MultiIterLoader``).
Here the map-style loader also records where it is (data pass, batches consumed in the pass) so a
checkpoint can restore the exact data order, and its sampler hands each sample a seed derived from
``(run seed, pass, index)`` for its random transform.
"""

from __future__ import annotations

import logging
import random

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler, IterableDataset

from minigpt4.common.errors import ConfigError

logger = logging.getLogger(__name__)


def sample_seed(seed: int, data_pass: int, index: int) -> int:
    return ((seed * 1_000_003 + data_pass) * 10_000_019 + index) % (2**63)


class ResumableDistributedSampler(DistributedSampler):
    """``DistributedSampler`` (seeded shuffle per ``set_epoch``, padding, ``rank::num_replicas``) that
    yields ``(index, sample seed)`` and can start part-way through a pass (``set_start``).

    Used in one process too (``num_replicas=1``), so the order is a function of the run seed and the
    pass only; a 1-process run and an N-process run with the same global batch see the same samples
    in every step."""

    def __init__(self, dataset, num_replicas: int, rank: int, shuffle: bool, seed: int):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=False)
        self.start = 0

    def set_start(self, start: int) -> None:
        self.start = start

    def __iter__(self):
        indices = list(super().__iter__())[self.start:]
        return iter([(i, sample_seed(self.seed, self.epoch, i)) for i in indices])

    def __len__(self) -> int:
        return self.num_samples - self.start


class InfiniteLoader:
    """Endless batches from a map-style ``DataLoader``; state = (data pass, batches consumed in it)."""

    def __init__(self, loader: DataLoader, sampler: ResumableDistributedSampler):
        self.loader, self.sampler = loader, sampler
        self.data_pass, self.consumed = 0, 0
        self._iterator = None

    def _restart(self) -> None:
        self.sampler.set_epoch(self.data_pass)
        self.sampler.set_start(self.consumed * self.loader.batch_size)
        self._iterator = iter(self.loader)

    def __next__(self):
        if self._iterator is None:
            self._restart()
        try:
            batch = next(self._iterator)
        except StopIteration:  # end of a pass over the data: reshuffle and go on
            self.data_pass, self.consumed = self.data_pass + 1, 0
            self._restart()
            batch = next(self._iterator)
        self.consumed += 1
        return batch

    def __iter__(self):
        return self

    def state_dict(self) -> dict:
        return {"data_pass": self.data_pass, "consumed": self.consumed}

    def load_state_dict(self, state: dict) -> None:
        self.data_pass, self.consumed = int(state["data_pass"]), int(state["consumed"])
        self._iterator = None


class StreamLoader:
    """Endless batches from an iterable (webdataset) ``DataLoader``; its position is not restorable."""

    def __init__(self, loader: DataLoader):
        self.loader = loader
        self._iterator = None

    def __next__(self):
        if self._iterator is None:
            self._iterator = iter(self.loader)
        return next(self._iterator)

    def __iter__(self):
        return self

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Webdataset streams restart from resampled shards: there is no position to restore (documented)."""


class MultiIterLoader:
    """One whole batch per ``next()`` from a loader chosen with ``random.choices(ratios)`` (Python RNG)."""

    def __init__(self, loaders: list, ratios: list[float] | None = None):
        ratios = ratios or [1.0] * len(loaders)
        if len(ratios) != len(loaders) or any(r <= 0 for r in ratios):
            raise ConfigError(f"sample_ratio values must be positive, one per dataset; got {ratios}.")
        self.loaders = loaders
        self.ratios = [float(r) / sum(ratios) for r in ratios]

    def __next__(self):
        index = random.choices(range(len(self.loaders)), self.ratios, k=1)[0]
        return next(self.loaders[index])

    def __iter__(self):
        return self

    def state_dict(self) -> list:
        return [loader.state_dict() for loader in self.loaders]

    def load_state_dict(self, states: list) -> None:
        for loader, state in zip(self.loaders, states):
            loader.load_state_dict(state)


def seed_worker(worker_id: int) -> None:
    """Seed Python and NumPy in a loader worker from torch's per-worker seed (itself drawn from the
    loader's own generator, so it is reproducible)."""
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)


def _loader(dataset, batch_size: int, num_workers: int, seed: int, rank: int, world_size: int, pin_memory: bool):
    # JPEG decoding and the train transform run in the workers; they stay up across data passes
    # (persistent: no respawn at every reshuffle). Batches land in pinned memory for the GPU copy.
    common = dict(
        batch_size=batch_size,
        num_workers=num_workers,
        pin_memory=pin_memory,
        generator=torch.Generator().manual_seed(seed + rank),  # worker seeds, off the global RNG
        worker_init_fn=seed_worker,
        persistent_workers=num_workers > 0,
    )
    if isinstance(dataset, IterableDataset):
        return StreamLoader(DataLoader(dataset, **common))
    if len(dataset) // world_size < batch_size:
        raise ConfigError(
            f"Dataset {getattr(dataset, 'name', '')!r} has {len(dataset)} samples, fewer than {world_size} "
            f"process(es) x run.batch_size_train {batch_size}: no full batch can be drawn. Lower run.batch_size_train."
        )
    sampler = ResumableDistributedSampler(dataset, world_size, rank, shuffle=True, seed=seed)
    loader = DataLoader(dataset, sampler=sampler, collate_fn=getattr(dataset, "collater", None), drop_last=True, **common)
    return InfiniteLoader(loader, sampler)


def build_train_loader(datasets: dict, batch_size: int, num_workers: int, seed: int, rank: int = 0,
                       world_size: int = 1, pin_memory: bool = False) -> MultiIterLoader:
    """One infinite loader per dataset's ``train`` split (``{name: {split: dataset}}``), mixed by
    their ``sample_ratio`` (uniform when the first has none), as the original (REFERENCE 6.6)."""
    members = [splits["train"] for splits in datasets.values() if "train" in splits]
    if not members:
        raise ConfigError("No dataset has a 'train' split: name at least one training dataset under 'datasets:'.")
    records = sum(len(d) for d in members if not isinstance(d, IterableDataset))
    logger.info("Loaded %d records for train split from the dataset.", records)
    ratios = [d.sample_ratio for d in members] if hasattr(members[0], "sample_ratio") else None
    loaders = [_loader(d, batch_size, num_workers, seed, rank, world_size, pin_memory) for d in members]
    return MultiIterLoader(loaders, ratios)
