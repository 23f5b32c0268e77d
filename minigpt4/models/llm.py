"""The Vicuna (LLaMA) language model and its tokenizer, through the transformers Auto classes."""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from minigpt4.common.errors import ConfigError

logger = logging.getLogger(__name__)


def _llm_dir(llama_model: str) -> Path:
    if not llama_model:
        raise ConfigError("model.llama_model is empty: set it to a local Vicuna v0 HF directory (see README.md, 'Weights').")
    path = Path(os.path.expanduser(str(llama_model)))
    if not path.is_dir():
        raise ConfigError(
            f"model.llama_model {str(path)!r} is not a directory. Point it at a Hugging Face format Vicuna v0 "
            "folder (config.json, tokenizer.model, weights); see README.md, 'Weights'."
        )
    return path


def load_tokenizer(llama_model: str):
    """The LLaMA SentencePiece tokenizer; pad = EOS as the original (so padding is masked as EOS)."""
    path = _llm_dir(llama_model)
    if not (path / "tokenizer.model").is_file() and not (path / "tokenizer.json").is_file():
        raise ConfigError(
            f"{str(path)!r} (model.llama_model) has no tokenizer.model: copy the LLaMA tokenizer.model "
            "(and tokenizer_config.json) into it; Vicuna v0 folders made with FastChat's apply_delta have them."
        )
    tokenizer = AutoTokenizer.from_pretrained(str(path), use_fast=False, legacy=True)
    tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def quantization_bits(low_resource: bool, quantization: str | None) -> str | None:
    """``"8bit"``, ``"4bit"`` or ``None``: ``model.quantization`` when set, else 8-bit for the original's
    ``low_resource: True``."""
    return quantization or ("8bit" if low_resource else None)


def check_quantization(bits: str | None, device=None) -> None:
    """A quantised LLM needs bitsandbytes on a CUDA GPU: a :class:`ConfigError` saying how to run instead."""
    if bits is None:
        return
    key = "model.low_resource=True (or model.quantization=8bit)" if bits == "8bit" else f"model.quantization={bits}"
    what = "8-bit" if bits == "8bit" else "NF4 4-bit (QLoRA / 4-bit inference)"
    on_cpu = device is not None and torch.device(device).type == "cpu"
    if on_cpu or not torch.cuda.is_available():
        raise ConfigError(
            f"{key} loads the LLM in {what} with bitsandbytes, which needs a CUDA GPU"
            f"{' (this run is on the CPU)' if on_cpu else ' (none is available)'}. On CPU drop it "
            "(--options model.low_resource=False model.quantization=null: everything then runs in float32), "
            "or run on a machine with a CUDA GPU."
        )
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ConfigError(f"{key} needs bitsandbytes: pip install -e '.[quant]'.")


def quantization_config(bits: str):
    """The ``BitsAndBytesConfig`` of ``bits``: LLM.int8() for 8-bit; NF4 with double quantisation and
    bf16 compute for 4-bit (the QLoRA recipe)."""
    from transformers import BitsAndBytesConfig

    if bits == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    if bits == "4bit":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                  bnb_4bit_compute_dtype=torch.bfloat16)
    raise ConfigError(f"model.quantization must be 8bit or 4bit; got {bits!r}.")


def is_quantized(llm) -> bool:
    return bool(getattr(llm, "is_loaded_in_8bit", False) or getattr(llm, "is_loaded_in_4bit", False))


def load_llm(llama_model: str, dtype: torch.dtype, low_resource: bool = False, device_8bit: int = 0,
             load_weights: bool = True, device=None, quantization: str | None = None,
             attn_implementation: str | None = None):
    """``LlamaForCausalLM`` in ``dtype``; with ``low_resource`` in 8-bit on GPU ``device_8bit``, with
    ``quantization`` (``8bit`` / ``4bit``) quantised on that GPU (``device_8bit`` unless ``device`` is one).
    ``load_weights=False`` builds the architecture of ``config.json`` with random weights (benchmarks).
    ``attn_implementation`` (``"eager"``/``"sdpa"``; None: transformers' default) is handed to transformers."""
    path = _llm_dir(llama_model)
    if not (path / "config.json").is_file():
        raise ConfigError(f"{str(path)!r} (model.llama_model) has no config.json; it is not a Hugging Face model folder.")
    kwargs = {"dtype": dtype}
    if device is not None and torch.device(device).type == "cuda":
        kwargs["device_map"] = {"": str(torch.device(device))}  # straight to the GPU, no CPU copy
    bits = quantization_bits(low_resource, quantization)
    if bits is not None:
        check_quantization(bits, device)
        on_device = device is not None and torch.device(device).type == "cuda" and quantization is not None
        kwargs = {
            "dtype": torch.float16 if bits == "8bit" else dtype,
            "quantization_config": quantization_config(bits),
            "device_map": kwargs["device_map"] if on_device else {"": int(device_8bit)},
        }
    attn = {"attn_implementation": attn_implementation} if attn_implementation else {}
    if not load_weights:
        from transformers import AutoConfig

        return AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(str(path)), dtype=dtype, **attn)
    return AutoModelForCausalLM.from_pretrained(str(path), **kwargs, **attn)


class OriginalDecoder:
    """Decode ids exactly as the original's slow ``LlamaTokenizer`` (transformers 4.28) did.

    Runs of ordinary pieces go through SentencePiece; special tokens are written verbatim, with a
    space before a special token that follows ordinary text. transformers 5 decodes byte-fallback
    pieces differently, which changes the text of partial UTF-8 sequences."""

    def __init__(self, tokenizer):
        import sentencepiece as spm

        self.tokenizer = tokenizer
        vocab_file = getattr(tokenizer, "vocab_file", None)
        self.sp = spm.SentencePieceProcessor(model_file=str(vocab_file)) if vocab_file and Path(vocab_file).is_file() else None
        self.special = set(tokenizer.all_special_tokens)

    def __call__(self, ids) -> str:
        ids = [int(i) for i in ids]
        if self.sp is None:
            return self.tokenizer.decode(ids, skip_special_tokens=False)
        text, run, prev_special = "", [], False
        for i, piece in enumerate(self.sp.id_to_piece(j) for j in ids):
            if piece in self.special:
                if not prev_special and i != 0:
                    text += " "
                text += self.sp.decode_pieces(run) + piece
                run, prev_special = [], True
            else:
                run.append(piece)
                prev_special = False
        return text + self.sp.decode_pieces(run)
