"""Reading weight files safely and loading them strictly.

Every file goes through :func:`load_weights_file` (``torch.load(weights_only=True)`` or safetensors,
so a downloaded file cannot run code) and every load through :func:`strict_load`, which raises on
an unexpected key, a missing key or a wrong shape, naming them.
"""

from __future__ import annotations

import logging
import os
import pickle
from pathlib import Path
from typing import Callable, Iterable, Mapping

import torch
from safetensors.torch import load_file
from torch import nn

from minigpt4.common.dist_utils import download_once
from minigpt4.common.errors import CheckpointError
from minigpt4.common.paths import cache_root, is_url

logger = logging.getLogger(__name__)


def resolve_weights(path_or_url: str, what: str, key: str) -> Path:
    """Local path of a weight file; a URL is downloaded once into ``cache_root()/checkpoints``."""
    if not path_or_url:
        raise CheckpointError(f"No {what} weights given: set model.{key} to a file path or URL.")
    if is_url(path_or_url):
        target = cache_root() / "checkpoints" / os.path.basename(path_or_url.split("?")[0])
        if not target.exists():
            download_once(path_or_url, target)
        return target
    path = Path(os.path.expanduser(path_or_url))
    if not path.is_file():
        raise CheckpointError(
            f"{what} weights file {str(path)!r} (model.{key}) does not exist. "
            f"Download it (see README.md, 'Weights') and set model.{key} to its path."
        )
    return path


def load_weights_file(path: str | Path, what: str = "checkpoint") -> dict:
    """Read a ``.pth``/``.bin`` (weights only) or ``.safetensors`` file into a dict on the CPU."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} file {str(path)!r} does not exist.")
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path), device="cpu")
        except Exception as err:  # truncated, or not a safetensors file at all
            raise CheckpointError(
                f"Could not read {what} file {str(path)!r} as safetensors ({_first_line(err)}). "
                "The file is truncated or not a safetensors file: download it again."
            ) from err
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"Refusing to load {what} file {str(path)!r}: it is not a weights-only checkpoint (it holds Python "
            "objects other than tensors, which could run code when unpickled), so it is not read. Use a checkpoint that holds only weights "
            "(a state dict saved with torch.save, or a .safetensors file)."
        ) from err
    except Exception as err:  # truncated files, not a PyTorch file
        raise CheckpointError(
            f"Could not read {what} file {str(path)!r} as a PyTorch checkpoint ({_first_line(err)}). "
            "Check that the download is complete and that it is the right file."
        ) from err
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{what} file {str(path)!r} holds a {type(obj).__name__}, not a state dict.")
    return dict(obj)


def _first_line(err: Exception) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def _fmt(keys: Iterable[str], limit: int = 20) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def strict_load(
    module: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    what: str,
    may_be_missing: Callable[[str], bool] = lambda key: False,
) -> list[str]:
    """Load ``state_dict`` into ``module``; raise on unexpected keys, values that are not tensors,
    wrong shapes, and missing keys (unless ``may_be_missing(key)``). Returns the loaded key names."""
    expected = module.state_dict()
    unexpected = [k for k in state_dict if k not in expected]
    if unexpected:
        raise CheckpointError(f"{what}: unexpected keys {_fmt(unexpected)}. Is this the right checkpoint for this model?")
    for k, v in state_dict.items():
        if not isinstance(v, torch.Tensor):
            raise CheckpointError(f"{what}: key {k!r} holds a {type(v).__name__}, not a tensor. Is this a weight file?")
        if tuple(v.shape) != tuple(expected[k].shape):
            raise CheckpointError(
                f"{what}: key {k!r} has shape {tuple(v.shape)} in the checkpoint but {tuple(expected[k].shape)} "
                "in the model. The checkpoint was made for another architecture or size; check the model config."
            )
    missing = [k for k in expected if k not in state_dict and not may_be_missing(k)]
    if missing:
        raise CheckpointError(f"{what}: missing keys {_fmt(missing)}.")
    with torch.no_grad():
        for k, v in state_dict.items():
            expected[k].copy_(v.to(expected[k].dtype))
    return list(state_dict)
