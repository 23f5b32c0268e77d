#!/usr/bin/env python
"""Caption a folder of images with MiniGPT-4, in batches, to JSON Lines.

    python caption.py --cfg-path eval_configs/minigpt4_eval.yaml --images photos/ --out captions.jsonl
    python caption.py --cfg-path eval_configs/minigpt4_tiny_eval.yaml --images 'examples/image/*.jpg' \
        --out /tmp/captions.jsonl --device cpu

``--images`` is a folder, a glob pattern, a ``.txt`` list (one path per line, relative to the list's
folder) or one image. Each output line is one (image, caption): ``image``, ``image_id``, ``prompt``,
``caption``, ``caption_index``, ``num_tokens``, ``settings`` and ``model``; an unreadable image gives a
line with ``error`` instead. Re-running with the same ``--out`` skips the images already there.
Greedy decoding by default (``--do-sample`` for the demo's sampling); answers are cleaned as
``Chat.answer`` cleans them.
"""

from __future__ import annotations

import argparse
import glob
import json
import logging
import os
import random
import sys
import time
from pathlib import Path

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
DEFAULT_PROMPT = "Could you write a funny caption of this image for me?"
IMAGE_MESSAGE = "<Img><ImageHere></Img>"

logger = logging.getLogger("caption")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cfg-path", required=True, help="eval config YAML (e.g. eval_configs/minigpt4_eval.yaml)")
    p.add_argument("--options", nargs="+", help="config overrides, key=value (as train.py/demo.py)")
    p.add_argument("--images", required=True, help="a folder, a glob pattern, a .txt list of paths, or one image")
    p.add_argument("--out", required=True, help="output JSON Lines file (appended to; existing images are skipped)")
    prompt = p.add_mutually_exclusive_group()
    prompt.add_argument("--prompt", help=f"the question asked for every image (default: {DEFAULT_PROMPT!r})")
    prompt.add_argument("--prompt-file", help="prompts, one per line (prompts/alignment.txt works; the "
                                              f"{IMAGE_MESSAGE} prefix is dropped); see --all-prompts")
    p.add_argument("--all-prompts", action="store_true",
                   help="with --prompt-file: caption every image with every prompt (default: each image gets "
                        "one prompt, chosen from the file by a seeded hash of its id)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--num-beams", type=int, default=1)
    p.add_argument("--do-sample", action="store_true", help="sample (as the demo) instead of greedy/beam search")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-p", type=float, default=0.9)
    p.add_argument("--num-captions", type=int, default=1, help="captions per image and prompt (sampling or beams)")
    p.add_argument("--max-new-tokens", type=int, default=60)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--device", help="cpu or cuda:N (default: cuda:0 when CUDA is available, else cpu)")
    p.add_argument("--retry-errors", action="store_true", help="caption again the images with an error line in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    for name in ("batch_size", "num_beams", "num_captions", "max_new_tokens"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1.")
    if args.temperature <= 0 or not 0 < args.top_p <= 1:
        p.error("--temperature must be > 0 and --top-p in (0, 1].")
    if args.all_prompts and not args.prompt_file:
        p.error("--all-prompts needs --prompt-file.")
    return args


# -- inputs -----------------------------------------------------------------------------------------
def is_image_name(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def list_images(spec: str) -> list[Path]:
    """The images named by ``spec`` (folder, glob, ``.txt`` list or one file), in a stable order."""
    path = Path(spec).expanduser()
    if path.is_dir():
        images = sorted(p for p in path.iterdir() if p.is_file() and is_image_name(p))
        if not images:
            raise SystemExit(f"error: no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) in folder {spec!r}.")
        return images
    if path.is_file() and path.suffix.lower() == ".txt":
        images = []
        for line in path.read_text(encoding="utf-8").splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                item = Path(line).expanduser()
                images.append(item if item.is_absolute() else path.parent / item)
        if not images:
            raise SystemExit(f"error: the image list {spec!r} is empty.")
        return images
    if path.is_file():
        return [path]
    if glob.has_magic(spec):
        images = sorted(Path(p) for p in glob.glob(os.path.expanduser(spec), recursive=True) if Path(p).is_file())
        if not images:
            raise SystemExit(f"error: the pattern {spec!r} matches no files.")
        return images
    raise SystemExit(f"error: --images {spec!r} is not a folder, a file or a glob pattern that matches anything.")


def strip_image_message(prompt: str) -> str:
    prompt = prompt.strip()
    if prompt.startswith(IMAGE_MESSAGE):
        prompt = prompt[len(IMAGE_MESSAGE):].strip()
    return prompt


def read_prompts(args) -> list[str]:
    if args.prompt_file:
        try:
            lines = Path(args.prompt_file).read_text(encoding="utf-8").splitlines()
        except OSError as err:
            raise SystemExit(f"error: cannot read --prompt-file {args.prompt_file!r}: {err}")
        prompts = [strip_image_message(line) for line in lines if strip_image_message(line)]
        if not prompts:
            raise SystemExit(f"error: --prompt-file {args.prompt_file!r} holds no prompts.")
        return prompts
    prompt = DEFAULT_PROMPT if args.prompt is None else strip_image_message(args.prompt)
    if not prompt:
        raise SystemExit("error: --prompt is empty.")
    return [prompt]


def prompts_for(image_id: str, prompts: list[str], all_prompts: bool, seed: int) -> list[str]:
    if all_prompts or len(prompts) == 1:
        return list(prompts)
    return [random.Random(f"{seed}:{image_id}").choice(prompts)]


def read_done(out: Path, retry_errors: bool) -> set[str]:
    """Image paths already in ``out`` (lines that do not parse are ignored with a warning)."""
    done = set()
    if not out.exists():
        return done
    bad = 0
    with out.open(encoding="utf-8") as fh:
        for line in fh:
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                bad += 1
                continue
            if retry_errors and "error" in record:
                continue
            done.add(str(record.get("image")))
    if bad:
        logger.warning("%s: ignored %d line(s) that are not JSON (an interrupted write?).", out, bad)
    return done


def open_output(out: Path):
    out.parent.mkdir(parents=True, exist_ok=True)
    fh = out.open("a+", encoding="utf-8")
    # An interrupted run may have left a partial last line: start on a fresh one.
    if fh.tell() > 0:
        fh.seek(fh.tell() - 1)
        if fh.read(1) != "\n":
            fh.write("\n")
    return fh


# -- the run ----------------------------------------------------------------------------------------
def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    import torch
    from tqdm import tqdm

    from minigpt4.generation import BatchCaptioner, GenerationSettings, load_for_inference, open_image

    prompts = read_prompts(args)
    images = list_images(args.images)
    out = Path(args.out)
    done = read_done(out, args.retry_errors)
    todo = [p for p in images if str(p) not in done]
    logger.info("%d images, %d already in %s, %d to caption.", len(images), len(images) - len(todo), out, len(todo))
    if not todo:
        return 0

    random.seed(args.seed)
    torch.manual_seed(args.seed)
    model, vis_processor, model_info = load_for_inference(args.cfg_path, args.options, device=args.device)
    captioner = BatchCaptioner(model, vis_processor, model_info["device"])
    settings = GenerationSettings(max_new_tokens=args.max_new_tokens, num_beams=args.num_beams,
                                  do_sample=args.do_sample, temperature=args.temperature, top_p=args.top_p)
    settings_record = {**settings.as_dict(), "num_captions": args.num_captions, "seed": args.seed}
    # A sample is one (image, prompt); an image's lines are written together once all its samples are done.
    samples = [(path, prompt) for path in todo for prompt in prompts_for(path.stem, prompts, args.all_prompts,
                                                                        args.seed)]
    errors = captions = 0
    start = time.perf_counter()
    pending: dict[str, int] = {}  # image path -> samples still to caption
    for path, _ in samples:
        pending[str(path)] = pending.get(str(path), 0) + 1
    buffered: dict[str, list[dict]] = {str(p): [] for p in todo}
    failed: set[str] = set()
    with open_output(out) as fh, tqdm(total=len(todo), unit="img", disable=args.quiet, dynamic_ncols=True) as bar:
        for first in range(0, len(samples), args.batch_size):
            batch = samples[first: first + args.batch_size]
            loaded = []
            for path, prompt in batch:
                if str(path) in failed:
                    continue
                try:
                    loaded.append((path, prompt, open_image(path)))
                except ValueError as err:
                    failed.add(str(path))
                    errors += 1
                    buffered[str(path)] = [{"image": str(path), "image_id": path.stem, "error": str(err),
                                            "model": model_info}]
            if loaded:
                results = captioner.generate([img for _, _, img in loaded], [p for _, p, _ in loaded], settings,
                                             num_captions=args.num_captions)
                for (path, prompt, _), caps in zip(loaded, results):
                    for k, cap in enumerate(caps):
                        buffered[str(path)].append({
                            "image": str(path), "image_id": path.stem, "prompt": prompt, "caption": cap.text,
                            "caption_index": k, "num_tokens": len(cap.token_ids), "settings": settings_record,
                            "model": model_info})
                        captions += 1
            finished = 0
            for path, _ in batch:
                key = str(path)
                pending[key] -= 1
                if pending[key] == 0:  # all of this image's lines at once, so resume never sees half an image
                    for record in buffered.pop(key):
                        fh.write(json.dumps(record, ensure_ascii=False) + "\n")
                    finished += 1
            fh.flush()
            bar.update(finished)
            bar.set_postfix(captions=captions, errors=errors, refresh=False)
    elapsed = time.perf_counter() - start
    n_images = len(todo)
    logger.info("Wrote %d captions for %d images (%d unreadable) to %s in %.1f s (%.2f images/s).",
                captions, n_images - errors, errors, out, elapsed, n_images / max(elapsed, 1e-9))
    return 0


if __name__ == "__main__":
    sys.exit(main())
