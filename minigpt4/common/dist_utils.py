"""Distributed helpers: rank queries that work with and without ``torch.distributed``."""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.distributed as dist


def is_dist_avail_and_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_world_size() -> int:
    return dist.get_world_size() if is_dist_avail_and_initialized() else 1


def get_rank() -> int:
    return dist.get_rank() if is_dist_avail_and_initialized() else 0


def is_main_process() -> bool:
    return get_rank() == 0


def download_once(url: str, target: Path) -> Path:
    """Download ``url`` to ``target`` on the main process (atomically), then wait for the others."""
    target = Path(target)
    if is_main_process() and not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(target.suffix + ".part")
        torch.hub.download_url_to_file(url, str(tmp), progress=True)
        os.replace(tmp, target)
    if is_dist_avail_and_initialized():
        dist.barrier()
    return target
