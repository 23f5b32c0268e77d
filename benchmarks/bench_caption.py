#!/usr/bin/env python
"""Batched captioning throughput: images/s of ``BatchCaptioner`` at batch 1, 4 and 8 against the
one-image-at-a-time ``Chat`` loop (encode, ask, greedy answer), on the tiny and mid presets (CPU) and,
when CUDA exists, the real-size architecture with random weights (fp16).

    python benchmarks/bench_caption.py [--images 16] [--new-tokens 60 128] [--presets tiny mid] [--best-of 4 8]
        [--precision bf16|int8|...] [--compile]

``--precision``/``--compile`` run every way in that mode (``model.precision``, ``model.compile``; the
compile warm-up runs before the timings); benchmarks/bench_model.py compares the modes with each other.

Every caption is exactly ``--new-tokens`` long (no stop sequence, ``min_length`` = max), so both
ways do the same work; 60 is caption.py's default. Writes benchmarks/results/bench_caption.json and .md.

Batching speeds up decoding (one weight pass serves 8 rows); image encoding and the prompt prefill are
compute-bound and cost the same per image either way, so the speedup grows with the number of new
tokens. (The tiny preset's 320-piece tokenizer makes the chat prompt ~213 tokens; the mid preset's
tokenizer, like Vicuna's, keeps it under 100.)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

from minigpt4.conversation.conversation import CONV_VISION, Chat
from minigpt4.humour import HumourScorer
from minigpt4.inference.batch import BatchCaptioner, GenerationSettings

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_model import RESULTS, build_preset, build_real_size_random, write_results  # noqa: E402
from bench_modes import NEVER, PROMPT, sync  # noqa: E402

SCORER_EVAL = Path(__file__).resolve().parents[1] / "eval_configs" / "hic_scorer_tiny_eval.yaml"


def measure(model, device: str, n_images: int, new_tokens: int, batch_sizes) -> dict:
    device = torch.device(device)
    size = model.visual_encoder.patch_embed.img_size[0]
    generator = torch.Generator().manual_seed(0)
    images = [torch.randn(3, size, size, generator=generator).to(device) for _ in range(n_images)]
    chat = Chat(model, vis_processor=None, device=device, stop_words_ids=NEVER)
    captioner = BatchCaptioner(model, vis_processor=None, device=device, stop_words_ids=NEVER)
    settings = GenerationSettings(max_new_tokens=new_tokens, min_length=new_tokens + 1)
    chat.warm_up(max_new_tokens=new_tokens)  # --compile: the decode step compiles here, not in the timings
    for bs in batch_sizes:
        captioner.warm_up(PROMPT, settings, bs)

    def one_at_a_time(batch):
        for image in batch:
            conv, img_list = CONV_VISION.copy(), []
            chat.upload_img(image, conv, img_list)
            chat.ask(PROMPT, conv)
            chat.answer(conv, img_list, max_new_tokens=new_tokens, min_length=new_tokens + 1, do_sample=False)

    def batched(batch_size):
        def run(batch):
            for first in range(0, len(batch), batch_size):
                out = captioner.generate(batch[first: first + batch_size], PROMPT, settings)
                assert all(len(c[0].token_ids) == new_tokens for c in out)
        return run

    def rate(fn) -> float:
        fn(images[:2])  # warm-up
        sync(device)
        start = time.perf_counter()
        fn(images)
        sync(device)
        return n_images / (time.perf_counter() - start)

    row = {"chat_loop_img_per_s": rate(one_at_a_time)}
    for bs in batch_sizes:
        row[f"batch{bs}_img_per_s"] = rate(batched(bs))
    for bs in batch_sizes:
        row[f"batch{bs}_speedup"] = row[f"batch{bs}_img_per_s"] / row["chat_loop_img_per_s"]
    row["llm_params_M"] = sum(p.numel() for p in model.llama_model.parameters()) / 1e6
    return row


def best_of_n(model, scorer, device: str, n_images: int, new_tokens: int, ns, batch_size: int = 4) -> dict:
    """Images/s of caption.py's best-of-N path: N sampled captions per image (batches of ``batch_size``
    images), each image's N scored by the humour scorer (``--rerank-cfg``), as ``Reranker`` does."""
    device = torch.device(device)
    size = model.visual_encoder.patch_embed.img_size[0]
    generator = torch.Generator().manual_seed(1)
    images = [torch.randn(3, size, size, generator=generator).to(device) for _ in range(n_images)]
    scorer_images = [torch.randn(3, 224, 224, generator=generator) for _ in range(n_images)]
    captioner = BatchCaptioner(model, vis_processor=None, device=device, stop_words_ids=NEVER)
    settings = GenerationSettings(max_new_tokens=new_tokens, min_length=new_tokens + 1, do_sample=True)
    row = {}
    for n in ns:
        def run(count: int) -> float:
            scoring = 0.0
            for first in range(0, count, batch_size):
                out = captioner.generate(images[first: min(first + batch_size, count)], PROMPT, settings, num_captions=n)
                sync(device)
                start = time.perf_counter()
                for k, caps in enumerate(out):
                    scorer.score(scorer_images[first + k], [c.text for c in caps])
                sync(device)
                scoring += time.perf_counter() - start
            return scoring

        run(min(2, n_images))  # warm-up
        start = time.perf_counter()
        scoring = run(n_images)
        elapsed = time.perf_counter() - start
        row[f"best_of_{n}_img_per_s"] = n_images / elapsed
        row[f"best_of_{n}_rerank_share"] = scoring / elapsed
    return row


NOTES = ("Images/s include image encoding, context building and greedy generation of exactly `new_tokens` new "
         "tokens per image; speedup = batched rate / `Chat` loop rate. Batching speeds up decoding; image encoding "
         "and the prompt prefill cost the same per image either way, so the speedup grows with the number of new "
         "tokens. best_of_N: `caption.py --num-captions N --do-sample --rerank-cfg` (N sampled captions per image, batches "
         "of 4 images, each image's N scored by the tiny humour scorer); rerank_share: the share of that time spent "
         "scoring.")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=16)
    p.add_argument("--new-tokens", type=int, nargs="+", default=[60, 128])
    p.add_argument("--presets", nargs="+", default=["tiny", "mid"])
    p.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 4, 8])
    p.add_argument("--best-of", nargs="+", type=int, default=[4, 8], help="best-of-N rows (0: none)")
    p.add_argument("--precision", choices=("fp32", "bf16", "fp16", "int8"), help="model.precision (default: auto)")
    p.add_argument("--compile", action="store_true", help="model.compile: compiled static-cache decoding")
    args = p.parse_args(argv)
    mode = (args.precision or "fp32") + ("+compile" if args.compile else "")
    rows = []
    best_of = [n for n in args.best_of if n > 0]
    scorer = HumourScorer.from_config(SCORER_EVAL, device="cpu") if best_of else None
    for preset in args.presets:
        model = build_preset(preset, "cpu", args.precision, args.compile)
        for new_tokens in args.new_tokens:
            rows.append({"preset": preset, "device": "cpu", "dtype": mode, "new_tokens": new_tokens,
                         **measure(model, "cpu", args.images, new_tokens, args.batch_sizes)})
            if best_of:
                rows[-1].update(best_of_n(model, scorer, "cpu", min(args.images, 8), new_tokens, best_of))
            print(json.dumps(rows[-1]), flush=True)
        del model
    if torch.cuda.is_available():
        scorer = HumourScorer.from_config(SCORER_EVAL, device="cuda:0") if best_of else None
        model = build_real_size_random("cuda:0")
        for new_tokens in args.new_tokens:
            rows.append({"preset": "real-size (random)", "device": torch.cuda.get_device_name(0), "dtype": "fp16",
                         "new_tokens": new_tokens,
                         **measure(model, "cuda:0", args.images, new_tokens, args.batch_sizes)})
            if best_of:
                rows[-1].update(best_of_n(model, scorer, "cuda:0", min(args.images, 8), new_tokens, best_of))
            print(json.dumps(rows[-1]), flush=True)
    meta = {"images": args.images, "torch": torch.__version__,
            "cpu_threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
            "load_average_at_end": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
            "cuda": torch.cuda.is_available()}
    write_results("bench_caption", rows, meta, "bench_caption: batched captioning vs one image at a time", NOTES)
    print((RESULTS / "bench_caption.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
