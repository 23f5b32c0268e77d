"""From an eval config to a model and its image processor, on the device chosen here.

:func:`resolve_device` is the one place the project turns a requested device (``--device``,
``--gpu-id``, ``run.device``) into a ``torch.device``.
"""

from __future__ import annotations

import argparse
import logging
from typing import NamedTuple, Sequence

import torch

from minigpt4.common.config import Config
from minigpt4.common.devices import resolve_device  # noqa: F401  (re-exported for the CLIs)
from minigpt4.common.errors import ConfigError
from minigpt4.common.registry import registry
from minigpt4.models.compiled import check_compile
from minigpt4.models.precision import PRECISION_MODES, resolve_precision, store_frozen_

logger = logging.getLogger(__name__)


class LoadedModel(NamedTuple):
    model: torch.nn.Module
    vis_processor: object
    info: dict  # config, model identity and device, written into every caption record


def add_speed_flags(parser: argparse.ArgumentParser) -> None:
    """``--precision`` and ``--compile`` (caption.py, demo.py, the benchmarks): ``model.precision`` and
    ``model.compile`` from the command line (models/precision.py, models/compiled.py)."""
    parser.add_argument("--precision", choices=PRECISION_MODES,
                        help="model.precision: auto (the original: fp32 on CPU, fp16 + autocast on GPU), fp32, "
                             "bf16 (weights stored in bfloat16, no autocast), fp16 (GPU only) or int8 (bf16 with "
                             "int8 LLM weights: the fastest CPU decoding)")
    parser.add_argument("--compile", action="store_true",
                        help="model.compile: static KV cache + torch.compile of the decode step (the first "
                             "generation compiles it; greedy ids as without)")
    parser.add_argument("--merge-lora", action="store_true",
                        help="model.merge_lora: merge a LoRA checkpoint's adapters into the LLM weights after "
                             "loading (faster decoding, same greedy output)")


def speed_options(options: Sequence[str] | None, precision: str | None = None, compile: bool = False,
                  merge_lora: bool = False) -> list[str]:
    """``options`` plus the ``model.precision`` / ``model.compile`` / ``model.merge_lora`` items of
    ``--precision`` / ``--compile`` / ``--merge-lora``."""
    options = list(options or [])
    if merge_lora:
        options.append("model.merge_lora=true")
    if precision:
        options.append(f"model.precision={precision}")
    if compile:
        options.append("model.compile=true")
    return options


def check_speed_settings(cfg: Config, device) -> str | None:
    """Fail early (before any weight loads) on a precision or compile setting this device cannot run;
    returns the precision the model will run in (None for a model without the setting)."""
    model = getattr(cfg, "model", None)
    if not hasattr(model, "precision"):
        return None
    quantized = bool(cfg.model_cfg.get("low_resource", False)) or model.quantization is not None
    plan = resolve_precision(model.precision, device or "cpu", model.vit_precision, model.llama_precision, quantized)
    check_compile(model.compile, device or "cpu")
    return plan.mode


def load_config(cfg_path: str, options: Sequence[str] | None = None, device: torch.device | None = None) -> Config:
    """The merged config; on CUDA the 8-bit LLM goes to ``device``'s index (``model.device_8bit``),
    as the original demo's ``--gpu-id``; on CPU, ``model.low_resource`` (8-bit, CUDA only) is
    switched off with a notice. Precision and compile settings the device cannot run fail here."""
    options = list(options or [])
    if device is not None and device.type == "cuda":
        options.append(f"model.device_8bit={device.index or 0}")
    cfg = Config(argparse.Namespace(cfg_path=str(cfg_path), options=options or None))
    if (device is None or device.type != "cuda") and cfg.model_cfg.get("low_resource", False):
        logger.warning("model.low_resource (8-bit LLM) needs CUDA; running on %s with the LLM unquantised "
                       "instead.", device or "cpu")
        # read again with the override, so the typed sections (cfg.model) agree with the node
        cfg = Config(argparse.Namespace(cfg_path=str(cfg_path), options=options + ["model.low_resource=False"]))
    check_speed_settings(cfg, device)
    return cfg


def model_info(cfg: Config, device: torch.device) -> dict:
    model_cfg = cfg.model_cfg
    return {
        "cfg_path": str(cfg.args.cfg_path),
        "arch": str(model_cfg.arch),
        "model_type": str(model_cfg.get("model_type", "")),
        "llama_model": str(model_cfg.get("llama_model", "")),
        "ckpt": str(model_cfg.get("ckpt", "")),
        "low_resource": bool(model_cfg.get("low_resource", False)),
        "device": str(device),
        "precision": check_speed_settings(cfg, device),  # what the model runs in (auto on CPU: fp32)
        "compile": bool(model_cfg.get("compile", False)),
    }


def build_for_inference(cfg: Config, device: torch.device) -> LoadedModel:
    """The model (eval mode) and the inference image processor (``inference.vis_processor``) of ``cfg``."""
    model_cfg = cfg.model_cfg
    model = registry.get_model_class(model_cfg.arch).from_config(model_cfg, device=str(device))
    model.eval()
    stored = getattr(getattr(model, "precision", None), "stored", None)
    if stored is not None:  # bf16/fp16 inference: nothing trains, so the projection is stored in it too
        model.llama_proj.requires_grad_(False)
        store_frozen_(stored, model.llama_proj)
    vis_cfg = cfg.inference_vis_processor_cfg
    vis_processor = registry.get_processor_class(vis_cfg.name).from_config(vis_cfg)
    return LoadedModel(model, vis_processor, model_info(cfg, device))


def load_for_inference(cfg_path: str, options: Sequence[str] | None = None, device=None,
                       gpu_id: int = 0) -> LoadedModel:
    """Config -> model and image processor, on ``device`` (see :func:`resolve_device`)."""
    device = resolve_device(device, gpu_id)
    return build_for_inference(load_config(cfg_path, options, device), device)
