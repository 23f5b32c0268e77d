"""Caption a folder of images with MiniGPT-4, in batches, to JSON Lines: ``caption.py``.

    python caption.py --cfg-path eval_configs/minigpt4_eval.yaml --images photos/ --out captions.jsonl
    python caption.py --cfg-path eval_configs/minigpt4_tiny_eval.yaml --images 'examples/image/*.jpg' \
        --out /tmp/captions.jsonl --device cpu

``--images`` is a folder, a glob pattern, a ``.txt`` list (one path per line, relative to the list's
folder) or one image. Each output line is one (image, caption): ``image`` (absolute path),
``image_id``, ``prompt``, ``caption``, ``caption_index``, ``num_tokens``, ``settings`` and ``model``
(:mod:`minigpt4.inference.records`); an unreadable image gives a line with ``error`` instead.
Re-running with the same ``--out`` skips the images already there (matched by their real path);
a rerun with other settings is refused unless ``--force-append``. Greedy decoding by default
(``--do-sample`` for the demo's sampling); answers are cleaned as ``Chat.answer`` cleans them.

Over many processes, ``torchrun --nproc-per-node N caption.py ...`` or ``--shard i/n`` (cluster job
arrays) split the images into part files beside ``--out`` and merge them into it in input order
(:mod:`minigpt4.inference.shards`).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import random
import sys
import time
from pathlib import Path
from typing import Iterator

import torch
from tqdm import tqdm

from minigpt4.cli.errors import add_debug_flag, run_cli
from minigpt4.common.config import parse_options
from minigpt4.common.errors import ConfigError, DatasetError
from minigpt4.common.logger import console_logging
from minigpt4.constants import DEFAULT_PROMPT, IMAGE_MESSAGE
from minigpt4.humour.rerank import Reranker, add_rerank_arguments, check_rerank_args
from minigpt4.inference.batch import BatchCaptioner, GenerationSettings, check_num_captions
from minigpt4.inference.inputs import list_images, open_image, read_prompt_file, strip_image_message
from minigpt4.inference.loading import (add_speed_flags, build_for_inference, load_config, model_info, resolve_device,
                                        speed_options)
from minigpt4.inference.records import CaptionRecord, CaptionWriter, RunSettings, check_output_file, image_key
from minigpt4.inference.shards import ShardRun, parse_shard

logger = logging.getLogger("caption")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="caption.py", description=__doc__.split("\n\n")[0])
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
    add_speed_flags(p)  # --precision, --compile
    p.add_argument("--retry-errors", action="store_true", help="caption again the images with an error line in --out")
    p.add_argument("--force-append", action="store_true",
                   help="append to an --out made with other settings (its lines are kept and not counted as done)")
    p.add_argument("--shard", metavar="I/N",
                   help="without torchrun (cluster job arrays): caption shard I of N (0-based) into a part file "
                        "beside --out; the run that finds all N parts done merges them into --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_rerank_arguments(p)  # best-of-N: --rerank-cfg, --rerank-options, --keep
    add_debug_flag(p)
    args = p.parse_args(argv)
    check_args(args)
    return args


def check_args(args) -> None:
    """Value checks, before anything is loaded."""
    for name in ("batch_size", "num_beams", "num_captions", "max_new_tokens"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be at least 1; got {getattr(args, name)}.")
    if not args.temperature > 0 or not 0 < args.top_p <= 1:
        raise ConfigError("--temperature must be > 0 and --top-p in (0, 1].")
    if args.all_prompts and not args.prompt_file:
        raise ConfigError("--all-prompts needs --prompt-file.")
    parse_options(args.options)  # a malformed --options item fails here, naming it
    parse_shard(args.shard)
    check_rerank_args(args)
    check_num_captions(args.num_captions, generation_settings(args))


def generation_settings(args) -> GenerationSettings:
    return GenerationSettings(max_new_tokens=args.max_new_tokens, num_beams=args.num_beams, do_sample=args.do_sample,
                              temperature=args.temperature, top_p=args.top_p)


def read_prompts(args) -> list[str]:
    if args.prompt_file:
        prompts = read_prompt_file(args.prompt_file)
        if not prompts:
            raise ConfigError(f"--prompt-file {args.prompt_file!r} holds no prompts.")
        return prompts
    prompt = DEFAULT_PROMPT if args.prompt is None else strip_image_message(args.prompt)
    if not prompt:
        raise ConfigError("--prompt is empty.")
    return [prompt]


def prompts_for(image_id: str, prompts: list[str], all_prompts: bool, seed: int) -> list[str]:
    if all_prompts or len(prompts) == 1:
        return list(prompts)
    return [random.Random(f"{seed}:{image_id}").choice(prompts)]


@dataclasses.dataclass
class ImageJob:
    """One image of the run: where it is, what it is matched on, the prompts it is asked."""

    path: Path
    key: str
    prompts: list[str]

    @property
    def image_id(self) -> str:
        return self.path.stem

    def expected(self, num_captions: int) -> set[tuple[str, int]]:
        return {(p, k) for p in self.prompts for k in range(num_captions)}


def plan_jobs(args, prompts: list[str]) -> list[ImageJob]:
    return [ImageJob(Path(os.path.abspath(path)), image_key(str(path)),
                     prompts_for(path.stem, prompts, args.all_prompts, args.seed))
            for path in list_images(args.images)]


def caption_jobs(captioner: BatchCaptioner, jobs: list[ImageJob], settings: GenerationSettings, args,
                 run: RunSettings) -> Iterator[list[CaptionRecord]]:
    """Caption ``jobs`` in batches of ``--batch-size`` (image, prompt) samples; yields each image's
    records once all its samples are done (an unreadable image: one error record)."""
    samples = [(job, prompt) for job in jobs for prompt in job.prompts]
    pending = {job.key: len(job.prompts) for job in jobs}
    buffered: dict[str, list[CaptionRecord]] = {job.key: [] for job in jobs}
    failed: set[str] = set()
    opened: dict = {}  # each image is read once, however many prompts it is asked
    for first in range(0, len(samples), args.batch_size):
        batch = samples[first: first + args.batch_size]
        loaded = []
        for job, prompt in batch:
            if job.key in failed:
                continue
            if job.key not in opened:
                try:
                    opened[job.key] = open_image(job.path)
                except DatasetError as err:
                    failed.add(job.key)
                    buffered[job.key] = [CaptionRecord(str(job.path), job.image_id, error=str(err), model=run.model)]
                    continue
            loaded.append((job, prompt, opened[job.key]))
        if loaded:
            results = captioner.generate([img for _, _, img in loaded], [p for _, p, _ in loaded], settings,
                                         num_captions=args.num_captions)
            for (job, prompt, _), caps in zip(loaded, results):
                buffered[job.key] += [
                    CaptionRecord(str(job.path), job.image_id, prompt=prompt, caption=cap.text, caption_index=k,
                                  num_tokens=len(cap.token_ids), settings=run.settings, model=run.model)
                    for k, cap in enumerate(caps)]
        for job, _ in batch:
            pending[job.key] -= 1
            if pending[job.key] == 0:
                opened.pop(job.key, None)
                yield buffered.pop(job.key)


def main(argv=None) -> int:
    """Caption the images; user errors raise (``cli`` prints them as one ``error:`` line)."""
    args = parse_args(argv)
    console_logging(logging.INFO, "%(asctime)s %(levelname)s %(name)s: %(message)s")
    prompts = read_prompts(args)
    out = Path(args.out)
    check_output_file(out)
    with ShardRun(out, args.shard) as shard:  # locks --out; under torchrun or --shard: this process's part
        return caption_run(args, prompts, out, shard)


def caption_run(args, prompts: list[str], out: Path, shard: ShardRun) -> int:
    """Caption this process's share of the images (all of them without sharding) into ``shard.target``."""
    jobs = plan_jobs(args, prompts)
    device = resolve_device(args.device, gpu_id=shard.local_rank)
    cfg = load_config(args.cfg_path, speed_options(args.options, args.precision, args.compile, args.merge_lora), device)
    settings = generation_settings(args)
    info = model_info(cfg, device)
    run = RunSettings({**settings.as_dict(), "num_captions": args.num_captions, "seed": args.seed,
                       "precision": info["precision"]}, info, prompts)
    reranker = Reranker.from_args(args, device)  # best-of-N; a scorer that does not load fails before any work
    run.settings.update(reranker.settings())
    done, dropped = shard.plan_resume({job.key: job.expected(reranker.kept(args.num_captions)) for job in jobs}, run,
                                args.retry_errors, args.force_append)
    if dropped:
        logger.warning("%s: dropped %d line(s) of images whose captions were cut short (they are captioned "
                       "again).", shard.target, dropped)
    mine = shard.share(jobs)
    todo = [job for job in mine if job.key not in done]
    logger.info("%s%d images, %d already captioned, %d to caption.", shard.tag, len(mine), len(mine) - len(todo),
                len(todo))
    if not todo:
        return shard.finish()

    random.seed(args.seed)
    torch.manual_seed(args.seed)
    model, vis_processor, _ = build_for_inference(cfg, device)
    captioner = BatchCaptioner(model, vis_processor, device)
    warm = captioner.warm_up(prompts[0], settings, min(args.batch_size, len(todo)), args.num_captions)
    if warm:
        logger.info("--compile: compiled the decode step in %.1f s (warm-up, not in the rate below).", warm)
    errors = captions = 0
    start = time.perf_counter()
    with (CaptionWriter(shard.target) as writer,
          tqdm(total=len(todo), unit="img", disable=args.quiet, dynamic_ncols=True) as bar):
        for records in caption_jobs(captioner, todo, settings, args, run):
            records = reranker(records)
            writer.write_image(records)  # one write: resume never sees half an image
            errors += records[0].is_error
            captions += sum(not r.is_error for r in records)
            bar.update(1)
            bar.set_postfix(captions=captions, errors=errors, refresh=False)
    elapsed = time.perf_counter() - start
    logger.info("Wrote %d captions for %d images (%d unreadable) to %s in %.1f s (%.2f images/s).",
                captions, len(todo) - errors, errors, shard.target, elapsed, len(todo) / max(elapsed, 1e-9))
    return shard.finish()


def cli(argv=None) -> None:
    """The console entry point: user errors are one ``error:`` line and exit code 2."""
    sys.exit(run_cli(main, sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    cli()
