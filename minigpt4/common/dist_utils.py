"""Distributed helpers: rank queries that work with and without ``torch.distributed``."""

from __future__ import annotations

import logging
import os
from datetime import timedelta
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


def barrier() -> None:
    if is_dist_avail_and_initialized():
        dist.barrier()


def broadcast_object(obj, src: int = 0):
    """``obj`` from rank ``src`` on every rank (the object itself without a process group)."""
    if not is_dist_avail_and_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_object(obj) -> list:
    """One ``obj`` per rank, in rank order (``[obj]`` without a process group)."""
    if not is_dist_avail_and_initialized():
        return [obj]
    out = [None] * get_world_size()
    dist.all_gather_object(out, obj)
    return out


def init_distributed_mode(device: str = "cuda", dist_url: str = "env://") -> None:
    """Start ``torch.distributed`` from torchrun (RANK, WORLD_SIZE, LOCAL_RANK) or SLURM
    (SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID) variables; otherwise train in one process.

    Backend ``nccl`` on CUDA (``device`` a CUDA device and CUDA present), ``gloo`` otherwise; each
    process then uses GPU ``LOCAL_RANK``. The rank and world size come from the launcher, never from
    the config (the original's ``run.distributed``/``run.world_size`` keys are not read); unlike the
    original, SLURM's world size is read from the environment too.
    """
    cuda = torch.cuda.is_available() and str(device).startswith("cuda")
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        gpu = int(os.environ.get("LOCAL_RANK", 0))
    elif "SLURM_PROCID" in os.environ:
        rank = int(os.environ["SLURM_PROCID"])
        world_size = int(os.environ.get("SLURM_NTASKS", 1))
        gpu = int(os.environ.get("SLURM_LOCALID", rank % max(torch.cuda.device_count(), 1)))
    else:
        logging.getLogger(__name__).info("Not using distributed mode")
        return

    backend = "nccl" if cuda else "gloo"
    if cuda:
        torch.cuda.set_device(gpu)
    print(f"| distributed init (rank {rank}, world {world_size}): {dist_url}", flush=True)
    dist.init_process_group(
        backend=backend, init_method=dist_url, world_size=world_size, rank=rank,
        timeout=timedelta(days=365),  # as the original: rank 0 may spend long on checkpoints/eval
    )
    dist.barrier()


def destroy_process_group() -> None:
    if is_dist_avail_and_initialized():
        dist.destroy_process_group()
