"""Compiled decoding (``model.compile`` / ``--compile``): a static KV cache and ``torch.compile`` of the
LLM's decode step, through transformers' ``generate`` (``cache_implementation="static"`` with a
``CompileConfig``; the prefill runs eagerly).

The step compiles on its first use, which :func:`minigpt4.conversation.decoding.warm_up` triggers
before the timed work so that its cost is reported apart. Recompiles stay bounded: the cache length
is rounded up to a multiple of :data:`CACHE_BUCKET` tokens and transformers keeps the largest length
it has seen, so prompts of any length up to that share one compiled step; a new batch size compiles
once more (dynamo then makes that dimension dynamic).

Exactness: the compiled step rounds as eager does (:data:`EXACT_CASTS`), so its greedy ids are
identical to the same static-cache decoding run uncompiled in every precision, and in fp32 identical
to the default eager path (dynamic cache). In bf16/int8 the static cache itself can part from the
dynamic one: attention over the padded cache length sums in another order (a bf16 ulp here and there),
which flips a greedy pick only at a near tie (tests/test_compile.py; the shares are in
benchmarks/results/bench_model.md).
"""

from __future__ import annotations

import logging
import math
import shutil

import torch

from minigpt4.common.errors import ConfigError

logger = logging.getLogger(__name__)

CACHE_BUCKET = 256  # tokens; the static cache holds a multiple of this
FLAG = "--compile (model.compile)"


def cpp_compiler() -> str | None:
    """The C++ compiler inductor would use for CPU kernels, or None when there is none."""
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler

        return get_cpp_compiler()
    except Exception:  # noqa: BLE001  (inductor raises its own error types when none is found)
        return shutil.which("g++") or shutil.which("clang++")


def compile_unavailable(device) -> str | None:
    """Why ``torch.compile`` cannot work for ``device`` here, or None when it can."""
    device = torch.device(device)
    if not torch._dynamo.is_dynamo_supported():
        return "torch.compile does not support this Python version"
    if device.type == "cuda":
        from torch.utils._triton import has_triton

        return None if has_triton() else "Triton is not installed (pip install triton)"
    if device.type == "cpu" and cpp_compiler() is None:
        return ("no C++ compiler was found (torch.compile builds its CPU kernels with one: install g++, "
                "e.g. apt-get install g++, or set CXX)")
    return None


def check_compile(enabled: bool, device) -> None:
    """A :class:`ConfigError` naming the flag when compiled decoding is asked for and cannot work."""
    if not enabled:
        return
    reason = compile_unavailable(device)
    if reason:
        raise ConfigError(f"{FLAG} needs torch.compile, which cannot work on {torch.device(device)} here: "
                          f"{reason}. Run without --compile.")


def cache_length(context_len: int, max_new_tokens: int) -> int:
    """Static cache length for a context and a token budget: rounded up to :data:`CACHE_BUCKET`."""
    return CACHE_BUCKET * max(1, math.ceil((context_len + max_new_tokens) / CACHE_BUCKET))


# Inductor fuses chains of pointwise ops and keeps their intermediates in fp32, where eager rounds each
# one to the tensor's dtype (bf16, fp16): with near-tied logits that flips a greedy pick. Rounding as
# eager does keeps compiled greedy ids identical to the eager path in every precision (tested on CPU);
# in fp32 it changes nothing.
EXACT_CASTS = {"emulate_precision_casts": True}


def compile_config(device):
    """transformers' ``CompileConfig`` for ``device``: CUDA graphs on CUDA (what its default mode,
    "reduce-overhead", turns on), inductor's default elsewhere with the flag that lets ``generate``
    compile on any device; both with :data:`EXACT_CASTS`."""
    from transformers import CompileConfig

    device = torch.device(device)
    if device.type == "cuda":
        return CompileConfig(mode=None, options={"triton.cudagraphs": True, **EXACT_CASTS})
    config = CompileConfig(mode=None, options=dict(EXACT_CASTS))
    config._compile_all_devices = True
    return config


def static_cache_kwargs(model, context_len: int, max_new_tokens: int, cache_tokens: int | None = None) -> dict:
    """The ``generate`` arguments of compiled decoding (empty when ``model.compile`` is off)."""
    if not getattr(model, "compile_decoding", False):
        return {}
    return {"cache_implementation": "static", "compile_config": compile_config(model.device),
            "max_cache_len": cache_tokens or cache_length(context_len, max_new_tokens)}
