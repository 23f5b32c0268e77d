#!/usr/bin/env python
"""Prepare the Oxford HIC (OxfordTVG-HIC) humorous-captioning dataset for MiniGPT-4.

OxfordTVG-HIC ships metadata only: ``oxford_hic_image_info.csv`` (image_id, image_url) and
``oxford_hic_data.csv`` (image_id, caption, funny_score). This tool turns them into a folder that
the ``oxford_hic`` (and ``cc_sbu_align``) dataset builders read as is::

    OUT/image/<image_id>.jpg   RGB JPEGs, written atomically (temporary file + rename)
    OUT/failures.csv           image_id,url,reason for every image that could not be fetched
    OUT/selected.jsonl         per image, every kept caption ranked by funny_score (select step)
    OUT/filter_cap.json        training split, {"annotations": [{image_id, caption, funny_score}]}
    OUT/val.json, test.json    per image, every kept caption with its score (evaluation references)
    OUT/shards/train-*.tar     optional webdataset shards (jpg + json)
    OUT/stats.json             counts for every step (deterministic: no timings, no paths)
    OUT/score_hist.png         histogram of the kept funny scores
    OUT/runs.jsonl             one line per run with timings and rates (the only non-deterministic file)

Steps (run all of them, or one at a time)::

    python dataset/prepare_hic.py [all|download|select|split|export] --data-dir DIR --out-dir OUT

The steps live in ``dataset/hic/`` (one module each, typed options); this file is the command line.
See dataset/README_HIC.md for the full guide.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from dataclasses import fields
from pathlib import Path

if str(Path(__file__).resolve().parent) not in sys.path:  # run from any working directory, or imported
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from hic.download import DownloadOptions, step_download  # noqa: E402
from hic.export import ExportOptions, step_export  # noqa: E402
from hic.files import DATA_CSV, IMAGE_INFO_CSV, Exclusive, InputError, clean_stale, prepare_out_dir  # noqa: E402
from hic.select import SelectOptions, step_select  # noqa: E402
from hic.split import SplitOptions, step_split  # noqa: E402

STEPS = ("all", "download", "select", "split", "export")


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not a fraction in [0, 1)")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} must be >= 1")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} must be >= 0")
    return value


# (flag, type, help) per step, the default of each flag being the field of the same name of the step's
# options; (flag, help): an on/off switch, off by default.
FLAGS = {
    DownloadOptions: ("download", (
        ("--workers", _positive_int, "download threads"),
        ("--timeout", float, "seconds per socket operation (the whole response, headers included: 4x)"),
        ("--retries", _non_negative_int, "retries for timeouts, connection errors, HTTP 408/425/429/5xx"),
        ("--retry-failed", "retry images listed in failures.csv"),
        ("--backoff", float, "first retry delay in seconds; doubles each retry, with 0.5-1.5x jitter"),
        ("--max-per-second", float, "global cap on requests per second"),
        ("--limit", _non_negative_int, "only the first N images (a subset)"),
        ("--verify-existing", "fully decode images already present before skipping them (slower)"),
        ("--min-side", _positive_int, "reject images with a smaller side"),
        ("--max-side", _non_negative_int, "resize so the longer side is at most this (0: keep size)"),
        ("--max-pixels", _positive_int, "reject images with more pixels (decompression-bomb guard)"),
        ("--max-bytes", _positive_int, "reject larger responses"),
        ("--jpeg-quality", int, "quality of the saved JPEGs"),
        ("--fsync", "fsync each image before renaming (power-loss safety)"),
        ("--allow-private-redirects",
         "follow redirects from a public host to a loopback/private address (refused by default)"),
    )),
    SelectOptions: ("select (caption cleaning and ranking)", (
        ("--min-score", float, "drop captions with a lower funny_score"),
        ("--min-words", _non_negative_int, "drop captions with fewer words"),
        ("--max-words", _non_negative_int, "drop longer captions (0: no bound)"),
        ("--drop-urls", "drop captions containing URLs"),
        ("--drop-mentions", "drop captions containing @mentions"),
        ("--chunks", _non_negative_int, "hash partitions for grouping captions per image (0: about one per 48 MB "
                                        "of CSV)"),
        ("--skip-image-check", "keep captions whose image is not downloaded (dry runs, benchmarks)"),
    )),
    SplitOptions: ("split", (
        ("--seed", int, "seed of the image_id hash that assigns splits"),
        ("--val-fraction", _fraction, "share of the images in val"),
        ("--test-fraction", _fraction, "share of the images in test"),
        ("--top-k", _non_negative_int, "training captions per image, best funny_score first (0: all)"),
        ("--eval-top-k", _non_negative_int, "reference captions per val/test image (0: every kept caption)"),
    )),
    ExportOptions: ("export", (
        ("--shards", "also write webdataset shards of the training split"),
        ("--shard-size", _positive_int, "samples per shard"),
    )),
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="prepare_hic.py",
        description="Download, clean, select, split and export the Oxford HIC humorous-captioning dataset.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("step", nargs="?", default="all", choices=STEPS,
                   help="which step to run; 'all' runs download, select, split and export in order")
    io_ = p.add_argument_group("input / output")
    io_.add_argument("--data-dir", type=Path, help=f"folder holding {IMAGE_INFO_CSV} and {DATA_CSV}")
    io_.add_argument("--image-info-csv", type=Path, help=f"path of {IMAGE_INFO_CSV} (default: DATA_DIR/...)")
    io_.add_argument("--data-csv", type=Path, help=f"path of {DATA_CSV} (default: DATA_DIR/...)")
    io_.add_argument("--out-dir", type=Path, required=True, help="output folder (point the builders at it)")
    io_.add_argument("--quiet", action="store_true", help="no progress bar or summaries")
    io_.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    for options, (title, flags) in FLAGS.items():
        group = p.add_argument_group(title)
        for flag, *kind, text in flags:
            if not kind:
                group.add_argument(flag, action="store_true", help=text)
            else:
                group.add_argument(flag, type=kind[0], default=getattr(options, flag[2:].replace("-", "_")), help=text)
    return p


def _options(cls, args, **given):
    return cls(**{f.name: given[f.name] if f.name in given else getattr(args, f.name) for f in fields(cls)})


def resolve_args(args) -> dict:
    """The typed options of the steps to run, checked; an InputError says what to fix."""
    need_info = args.step in ("all", "download")
    need_data = args.step in ("all", "select")
    for needed, attr, name, flag in ((need_info, "image_info_csv", IMAGE_INFO_CSV, "--image-info-csv"),
                                     (need_data, "data_csv", DATA_CSV, "--data-csv")):
        if needed and getattr(args, attr) is None:
            if args.data_dir is None:
                raise InputError(f"the {args.step} step reads {name}: pass --data-dir DIR (the folder holding the "
                                 f"OxfordTVG-HIC CSVs) or {flag} FILE")
            setattr(args, attr, args.data_dir / name)
    if args.val_fraction + args.test_fraction >= 1.0:
        raise InputError("--val-fraction + --test-fraction must be below 1 (something must be left to train on)")
    if args.timeout <= 0:
        raise InputError("--timeout must be positive")
    if args.max_per_second is not None and args.max_per_second <= 0:
        raise InputError("--max-per-second must be positive")
    if args.max_words and args.min_words > args.max_words:
        raise InputError("--min-words is larger than --max-words")
    if not 1 <= args.jpeg_quality <= 95:
        raise InputError("--jpeg-quality must be in 1..95")
    if need_info and not args.image_info_csv.is_file():
        raise InputError(f"image info CSV not found: {args.image_info_csv}. See dataset/README_HIC.md for where "
                         f"to get {IMAGE_INFO_CSV}; pass its folder with --data-dir.")
    if need_data and not args.data_csv.is_file():
        raise InputError(f"caption CSV not found: {args.data_csv}. See dataset/README_HIC.md for where to get "
                         f"{DATA_CSV}; pass its folder with --data-dir.")
    opts = {"split": _options(SplitOptions, args), "export": _options(ExportOptions, args)}
    if need_info:
        opts["download"] = _options(DownloadOptions, args)
    if need_data:
        opts["select"] = _options(SelectOptions, args)
    return opts


def run_steps(args) -> None:
    opts = resolve_args(args)
    out_dir = args.out_dir
    prepare_out_dir(out_dir)
    run = {
        "download": lambda: step_download(opts["download"], out_dir),
        "select": lambda: step_select(opts["select"], out_dir),
        "split": lambda: step_split(opts["split"], out_dir),
        "export": lambda: step_export(opts["export"], opts["split"], out_dir),
    }
    with Exclusive(out_dir):
        clean_stale(out_dir)  # holding the lock: whatever a killed run left is no live run's
        for step in ("download", "select", "split", "export") if args.step == "all" else (args.step,):
            run[step]()


def main(argv=None) -> int:
    """Run the command line; returns the exit status (0 ok, 2 bad input, 130 interrupted)."""
    args = build_parser().parse_args(argv)
    from PIL import Image

    # Pixel counts are checked against --max-pixels; Pillow's own warning would only add noise.
    warnings.simplefilter("ignore", Image.DecompressionBombWarning)
    try:
        run_steps(args)
    except InputError as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    code = main()
    if code == 130:  # Ctrl-C: do not wait for download threads still connecting (their files are temporaries)
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)
