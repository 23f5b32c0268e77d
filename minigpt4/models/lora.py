"""LoRA adapters on MiniGPT-4's language model, through peft (the optional ``lora`` extra).

``model.lora: {r, alpha, dropout, target_modules}`` wraps the LLM in a ``PeftModelForCausalLM``
whose adapters (``lora_A``, ``lora_B``) train beside ``llama_proj``; every other LLM weight stays
frozen. A checkpoint holds the adapters under ``llama_model.`` + peft's own names (those of
``get_peft_model_state_dict``, as in an ``adapter_model.safetensors``: no adapter name), e.g.
``llama_model.base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight``.

On a quantised LLM (``model.quantization``: QLoRA) the model is first prepared with peft's
``prepare_model_for_kbit_training`` (norms and embeddings in float32). ``merge_lora`` folds the
adapters into the weights (``merge_and_unload``) for faster inference.
"""

from __future__ import annotations

import importlib
import logging
import warnings

from torch import nn

from minigpt4.common.errors import CheckpointError, ConfigError

logger = logging.getLogger(__name__)

PREFIX = "llama_model."  # where the LLM sits in MiniGPT-4's state dict
ADAPTER_MARK = ".lora_"  # in every peft LoRA tensor name (lora_A, lora_B, lora_embedding_A, ...)


def require_peft():
    """The peft module, or a :class:`ConfigError` saying how to install it."""
    try:
        return importlib.import_module("peft")
    except ImportError:
        raise ConfigError("model.lora needs the peft package: pip install -e '.[lora]' (or pip install peft), "
                          "or remove model.lora to train llama_proj only.") from None


def is_adapter_key(key: str) -> bool:
    return key.startswith(PREFIX) and ADAPTER_MARK in key


def linear_module_names(llm: nn.Module) -> list[str]:
    """The last name part of every linear module of ``llm`` (what ``target_modules`` may name)."""
    return sorted({name.rsplit(".", 1)[-1] for name, module in llm.named_modules() if isinstance(module, nn.Linear)})


def apply_lora(llm: nn.Module, settings, quantized: bool = False) -> nn.Module:
    """``llm`` wrapped with fresh LoRA adapters of ``settings`` (a ``model.lora`` section); only the
    adapters require grad (``lora_B`` starts at zero, so the wrapped model computes what ``llm`` does)."""
    peft = require_peft()
    names = linear_module_names(llm)
    unknown = [t for t in settings.target_modules if t not in names]
    if unknown:
        raise ConfigError(f"model.lora.target_modules names {', '.join(map(repr, unknown))}, which "
                          f"{'is not a linear module' if len(unknown) == 1 else 'are not linear modules'} of the "
                          f"language model; its linear modules are: {', '.join(names)}.")
    if quantized:
        llm = peft.prepare_model_for_kbit_training(llm, use_gradient_checkpointing=False)
    config = peft.LoraConfig(r=int(settings.r), lora_alpha=settings.alpha, lora_dropout=float(settings.dropout),
                             target_modules=list(settings.target_modules), bias="none", task_type="CAUSAL_LM")
    with warnings.catch_warnings():  # peft asks transformers a deprecated question; nothing for the user to do
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        model = peft.get_peft_model(llm, config)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    logger.info("LoRA on %s: r %d, alpha %s, dropout %s; %d adapter parameters.", ", ".join(settings.target_modules),
                settings.r, settings.alpha, settings.dropout, trainable)
    return model


def has_adapters(model: nn.Module) -> bool:
    return any(ADAPTER_MARK in name for name, _ in model.named_parameters())


def checkpoint_key_map(model: nn.Module) -> dict[str, str]:
    """``checkpoint key -> state-dict key`` for every adapter tensor of ``model`` (a MiniGPT-4): the
    checkpoint names are peft's (``get_peft_model_state_dict``), the state-dict ones carry the adapter name."""
    llm = model.llama_model
    if not has_adapters(llm):
        return {}
    peft = require_peft()
    by_storage = {t.data_ptr(): k for k, t in llm.state_dict().items() if ADAPTER_MARK in k}
    return {PREFIX + key: PREFIX + by_storage[t.data_ptr()]
            for key, t in peft.get_peft_model_state_dict(llm).items() if t.data_ptr() in by_storage}


def to_checkpoint_names(model: nn.Module, tensors: dict) -> dict:
    """``tensors`` keyed by parameter name, with the adapters renamed to their checkpoint (peft) names."""
    back = {ours: theirs for theirs, ours in checkpoint_key_map(model).items()}
    return {back.get(key, key): value for key, value in tensors.items()}


def check_adapters_match(model: nn.Module, state: dict, what: str, fresh_ok: bool, saved_config=None) -> bool:
    """Whether ``state`` (a checkpoint's tensors in checkpoint names) holds ``model``'s adapters. A
    checkpoint with adapters for a model without ``model.lora`` is an error, and so is one without
    adapters for a model with them -- unless ``fresh_ok`` (training starts from it: fresh adapters)."""
    in_ckpt = sorted(k for k in state if is_adapter_key(k))
    wanted = has_adapters(model.llama_model)
    if in_ckpt and not wanted:
        hint = f" It was trained with model.lora = {saved_config}." if saved_config else ""
        raise CheckpointError(f"{what} holds LoRA adapters ({len(in_ckpt)} tensors, e.g. {in_ckpt[0]}) but model.lora is "
                          f"not set: set model.lora to the adapters' r / alpha / target_modules.{hint}")
    if wanted and not in_ckpt and not fresh_ok:
        raise CheckpointError(f"{what} holds no LoRA adapters, but model.lora is set: name the checkpoint of a LoRA run "
                          "(its model entry holds llama_model.*.lora_A / lora_B tensors), or remove model.lora to use "
                          "this checkpoint as it is.")
    return bool(in_ckpt)


def saved_lora_config(checkpoint: dict):
    """The ``model.lora`` section of the config a checkpoint of ``train.py`` carries (or None)."""
    config = checkpoint.get("config")
    model = config.get("model") if isinstance(config, dict) else None
    return model.get("lora") if isinstance(model, dict) else None


def merge_lora(model: nn.Module) -> None:
    """Fold the adapters of ``model.llama_model`` into its weights; the LLM is a plain model again."""
    if not has_adapters(model.llama_model):
        raise ConfigError("model.merge_lora: the model has no LoRA adapters to merge (set model.lora).")
    model.llama_model = model.llama_model.merge_and_unload()
    logger.info("LoRA adapters merged into the language model's weights.")
