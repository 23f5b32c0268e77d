#!/usr/bin/env python
"""The GPU benchmark of issue 12 in one script (under 8 minutes on one GPU): the released architecture
(EVA ViT-g, Q-Former, Vicuna-7B shape) with random weights, in the original's precision (``auto``: fp16
ViT Linear/Conv, fp16 LLM, autocast) and in ``model.precision: bf16`` eager and compiled
(``model.compile``):

* encode images/s at batch 32, time to first token, batch-1 decode tokens/s and that as a fraction of
  the bandwidth bound (bytes of the LLM's weights / the measured device copy bandwidth);
* batched captioning images/s at batch 32;
* stage-2 training samples/s at batch 12 and peak memory (``auto``: fp16 autocast + GradScaler, the
  original; ``bf16``: stored bf16 weights, fp32 ``llama_proj``, no autocast, no scaler).

    python benchmarks/bench_gpu.py OUT_DIR [--device cuda:0] [--budget-s 450]
    python benchmarks/bench_gpu.py /tmp/dry --arch tiny --device cpu     # dry run of every step on CPU

Writes OUT_DIR/bench_gpu.json after every step (a run cut short keeps what it measured) and
bench_gpu.md at the end. A step that fails is recorded with its error and the script goes on; steps
that would not fit in ``--budget-s`` are skipped and listed.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import resource
import sys
import time
import traceback
from pathlib import Path
from types import SimpleNamespace

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_model import build_for_training, build_real_size_random, markdown_table  # noqa: E402
from bench_modes import (chat_answer, clock, exact, interleaved, pixels, training_step,  # noqa: E402
                         warm_up)
from bench_modes import NEVER, PROMPT  # noqa: E402

from minigpt4.common.atomic import atomic_write_text  # noqa: E402
from minigpt4.conversation.conversation import Chat  # noqa: E402
from minigpt4.inference.batch import BatchCaptioner  # noqa: E402


def copy_bandwidth_gbs(device: torch.device, megabytes: int) -> float:
    """Device memory bandwidth from a large copy (bytes read + bytes written per second)."""
    n = megabytes * 2**20 // 2
    src = torch.empty(n, dtype=torch.float16, device=device).normal_()
    dst = torch.empty_like(src)
    dst.copy_(src)
    seconds = min(clock(lambda: dst.copy_(src), device) for _ in range(5))
    del src, dst
    return 2 * n * 2 / seconds / 1e9


def weight_bytes(module: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in list(module.parameters()) + list(module.buffers()))


def peak_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def build(args, precision: str, compile_: bool):
    if args.arch == "tiny":
        model = build_for_training("tiny", precision if precision != "auto" else None)
        model.compile_decoding = compile_
        return model.eval()
    return build_real_size_random(str(args.device), precision=precision, compile=compile_)


class Run:
    """Steps with a time budget; the JSON is rewritten after each one."""

    def __init__(self, args):
        self.args, self.start = args, time.time()
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.result = {"meta": meta(args), "steps": {}, "skipped": [], "errors": {}}

    def left(self) -> float:
        return self.args.budget_s - (time.time() - self.start)

    def step(self, name: str, needs_s: float, fn):
        if self.left() < needs_s:
            self.result["skipped"].append(f"{name} (needs ~{needs_s:.0f} s, {self.left():.0f} s left)")
            return None
        began = time.time()
        try:
            value = fn()
            self.result["steps"][name] = value
        except Exception as err:  # noqa: BLE001  (recorded; the next steps still run)
            value = None
            self.result["errors"][name] = f"{type(err).__name__}: {err}"
            traceback.print_exc()
        self.result["steps"].setdefault("seconds", {})[name] = round(time.time() - began, 1)
        self.save()
        print(name, json.dumps(value), flush=True)
        return value

    def save(self):
        self.result["meta"]["wall_s"] = round(time.time() - self.start, 1)
        atomic_write_text(self.out / "bench_gpu.json", json.dumps(self.result, indent=2) + "\n")


def meta(args) -> dict:
    device = torch.device(args.device)
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    return {"device": str(device), "name": gpu, "arch": args.arch, "torch": torch.__version__,
            "new_tokens": args.new_tokens, "caption_tokens": args.caption_tokens, "batch": args.batch,
            "train_batch": args.train_batch}


def inference_steps(run: Run, label: str, model, bound_tok_s: float | None):
    args, device = run.args, torch.device(run.args.device)
    chat = Chat(model, None, device=model.device, stop_words_ids=NEVER)
    image = pixels(model, 1)[0]

    def encode():
        x = pixels(model, args.batch)
        with torch.no_grad():
            model.encode_img(x)
            sec = min(clock(lambda: model.encode_img(x), device) for _ in range(3))
        return {"encode_img_s": args.batch / sec}

    def decode():
        chat_answer(chat, image, 2)
        first = min(clock(lambda: chat_answer(chat, image, 1), device) for _ in range(2))
        full = min(clock(lambda: chat_answer(chat, image, args.new_tokens), device) for _ in range(2))
        tok_s = (args.new_tokens - 1) / max(full - first, 1e-9)
        row = {"ttft_ms": 1000 * first, "decode_tok_s": tok_s}
        if bound_tok_s:
            row["fraction_of_bandwidth_bound"] = tok_s / bound_tok_s
        return row

    def captions():
        captioner = BatchCaptioner(model, None, device=model.device, stop_words_ids=NEVER)
        images = list(pixels(model, args.batch, seed=1))
        settings = exact(args.caption_tokens)
        captioner.generate(images, PROMPT, exact(2))  # untimed: first-call costs (same shapes as timed)
        return {"caption_img_s": args.batch / clock(lambda: captioner.generate(images, PROMPT, settings), device)}

    row = {}
    for name, needs, fn in (("encode", 20, encode), ("decode", 40, decode), ("caption", 60, captions)):
        value = run.step(f"{label}:{name}", needs, fn)
        row.update(value or {})
    return row


def training(run: Run, label: str, model, autocast, scaler):
    device = torch.device(run.args.device)

    def measure():
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        step = training_step(model, run.args.train_batch, autocast, scaler)
        sec = interleaved({"step": step}, device, run.args.train_steps)["step"]
        model.eval()
        return {"train_samples_s": run.args.train_batch / sec, "train_peak_mem_MB": peak_mb(device)}

    return run.step(f"{label}:train", 60, measure) or {}


def free(model):
    del model
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", help="folder for bench_gpu.json / .md")
    p.add_argument("--device", default="cuda:0")
    p.add_argument("--arch", choices=("real", "tiny"), default="real", help="tiny: a CPU dry run of every step")
    p.add_argument("--budget-s", type=float, default=450.0, help="stop starting steps past this (8 min = 480 s)")
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--caption-tokens", type=int, default=32)
    p.add_argument("--batch", type=int, default=32, help="encode and captioning batch")
    p.add_argument("--train-batch", type=int, default=12)
    p.add_argument("--train-steps", type=int, default=3)
    p.add_argument("--copy-mb", type=int, default=2048)
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: no CUDA device here; bench_gpu.py needs a GPU (or --arch tiny --device cpu).", file=sys.stderr)
        return 2
    torch.manual_seed(0)
    torch._dynamo.config.recompile_limit = 64  # several models compile the same transformers forward
    run = Run(args)
    bandwidth = run.step("copy_bandwidth_GBs", 5, lambda: copy_bandwidth_gbs(device, args.copy_mb))
    rows: dict[str, dict] = {}
    # the original recipe (auto: fp16 + autocast) eager is the baseline; then bf16 stored, eager and compiled
    for precision in ("auto", "bf16"):
        holder = {}

        def make():
            holder["model"] = build(args, precision, False)
            return {"params_B": sum(p.numel() for p in holder["model"].parameters()) / 1e9}

        run.step(f"{precision}:build", 60, make)
        model = holder.pop("model", None)
        if model is None:
            continue
        llm_bytes = weight_bytes(model.llama_model)
        bound = bandwidth * 1e9 / llm_bytes if bandwidth else None
        common = {"llm_weight_GB": llm_bytes / 1e9, "bandwidth_bound_tok_s": bound}
        rows[precision] = {"mode": precision, **common, **inference_steps(run, precision, model, bound)}
        if precision == "bf16":
            model.compile_decoding = True
            fake = SimpleNamespace(new_tokens=args.new_tokens, caption_tokens=args.caption_tokens)
            warm = run.step("bf16+compile:warm_up", 200, lambda: warm_up(model, fake, args.batch))
            if warm is not None:
                rows["bf16+compile"] = {"mode": "bf16+compile", **common, "compile_warmup_s": warm,
                                        **inference_steps(run, "bf16+compile", model, bound)}
            model.compile_decoding = False
        on_cuda = device.type == "cuda"
        autocast = torch.float16 if on_cuda and precision == "auto" else None
        scaler = torch.amp.GradScaler("cuda") if autocast is not None else None
        rows[precision].update(training(run, precision, model, autocast, scaler))
        free(model)
        model = None
    base = rows.get("auto", {})
    for row in rows.values():
        for key in ("encode_img_s", "decode_tok_s", "caption_img_s", "train_samples_s"):
            if isinstance(row.get(key), float) and isinstance(base.get(key), float):
                row[key[: -len("_s")] + "_x"] = row[key] / base[key]
    run.result["results"] = list(rows.values())
    run.save()
    lines = [f"# bench_gpu: real-size random weights on one GPU", "",
             ", ".join(f"{k}: {v}" for k, v in run.result["meta"].items()) + f", copy_bandwidth_GBs: {bandwidth}", ""]
    lines += markdown_table(list(rows.values())) if rows else ["(no results)"]
    lines += [""] + [f"Skipped: {s}" for s in run.result["skipped"]]
    lines += [f"Error in {k}: {v}" for k, v in run.result["errors"].items()]
    lines += ["", NOTES]
    (run.out / "bench_gpu.md").write_text("\n".join(lines) + "\n")
    print((run.out / "bench_gpu.md").read_text())
    return 0


NOTES = """`*_x`: ratio to the `auto` row (the original's fp16 + autocast, eager), same run. The bandwidth bound
is the copy bandwidth divided by the bytes of the LLM's weights: the most batch-1 tokens/s any decoder
can reach when every weight is read once per token. Training: one stage-2 step (forward, backward, AdamW
on `llama_proj`) at `train_batch`; `auto` with fp16 autocast and a GradScaler (the original), `bf16`
with the frozen parts stored in bf16 and no autocast."""


if __name__ == "__main__":
    sys.exit(main())
