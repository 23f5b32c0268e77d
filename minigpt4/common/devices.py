"""The one device resolver: a requested device (a flag, ``run.device``) as a checked ``torch.device``."""

from __future__ import annotations

import logging

import torch
import torch.distributed as dist

from minigpt4.common.errors import ConfigError

logger = logging.getLogger(__name__)


def resolve_device(requested=None, gpu_id: int = 0, setting: str = "--device") -> torch.device:
    """``requested`` ("cpu", "cuda", "cuda:N", a ``torch.device`` or ``None``) as a checked device.

    ``None`` is ``cuda:<gpu_id>`` when CUDA is available, else the CPU (with a notice); a bare
    ``cuda`` gets index ``gpu_id``. Asking for CUDA without it, or for a GPU that does not exist,
    is a :class:`ConfigError` naming ``setting`` (the flag or config key the request came from)."""
    if requested is None or str(requested) == "":
        if torch.cuda.is_available():
            return torch.device("cuda", gpu_id)
        logger.warning("CUDA is not available: running on the CPU (slow with the real model).")
        return torch.device("cpu")
    try:
        device = torch.device(str(requested))
    except RuntimeError as err:
        raise ConfigError(f"{setting} {str(requested)!r} is not a device: use cpu or cuda:N.") from err
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"{setting} is {str(requested)!r} but CUDA is not available on this machine; "
                              f"set {setting} to cpu.")
        if device.index is None:  # under torchrun/DDP: this process's GPU (set from LOCAL_RANK)
            device = torch.device("cuda", torch.cuda.current_device() if dist.is_available() and dist.is_initialized() else gpu_id)
        if device.index >= torch.cuda.device_count():
            raise ConfigError(f"{setting} asks for GPU {device.index} but this machine has "
                              f"{torch.cuda.device_count()}; use cuda:0 .. cuda:{torch.cuda.device_count() - 1}.")
    return device
