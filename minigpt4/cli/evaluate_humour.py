"""The humour modes of ``evaluate.py`` (:mod:`minigpt4.cli.evaluate` parses the flags and calls these):

    evaluate.py --captions C.jsonl --data-dir PREPARED --scorer-cfg CFG [--options ...] --out R/
    evaluate.py --captions A.jsonl B.jsonl --labels base humour-ft --data-dir PREPARED --scorer-cfg CFG --out R/
    evaluate.py --human-study K --captions C.jsonl --data-dir PREPARED --out S/
    evaluate.py --human-results answers.json [more.json ...] --study S/

With several captions files, ``R/<label>/`` holds each file's report and ``R/metrics.json`` /
``R/index.html`` the comparison (docs/HUMOUR.md).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from minigpt4.common.config import parse_options
from minigpt4.common.errors import ConfigError
from minigpt4.datasets.hic_format import SPLIT_FILES
from minigpt4.evaluation.captions import as_references, load_references
from minigpt4.evaluation.human_study import build_study, score_answers
from minigpt4.evaluation.humour_eval import HumourEvaluator, TestSplit
from minigpt4.evaluation.humour_report import write_comparison, write_run_report
from minigpt4.evaluation.originality import CopyIndex
from minigpt4.evaluation.paired import compare, run_labels
from minigpt4.evaluation.report import check_report_dir
from minigpt4.evaluation.suite import evaluate_run, read_captions, settings_of
from minigpt4.humour.scorer import HumourScorer, file_sha256

logger = logging.getLogger("evaluate")


def add_humour_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", help="the prepared HIC folder: humour numbers against its TEST captions, copy rate "
                                      "against its TRAINING captions (and --references defaults to its test.json)")
    p.add_argument("--scorer-cfg", help="humour scorer eval config (model.arch hic_scorer), with --data-dir")
    p.add_argument("--options", nargs="+", help="overrides of the --scorer-cfg config, key=value (e.g. model.ckpt=...)")
    p.add_argument("--labels", nargs="+", help="one name per --captions file (default: the file names)")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples over images for the 95%% CIs")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap, mismatch images and the study")
    p.add_argument("--device", help="the scorer's device: cpu or cuda[:N] (default: cuda when available)")
    p.add_argument("--batch-size", type=int, default=64, help="captions per scorer batch")
    p.add_argument("--human-study", type=int, metavar="K",
                   help="instead, write a blinded human study of K pairs into --out (with --captions, --data-dir)")
    p.add_argument("--human-results", nargs="+", metavar="ANSWERS",
                   help="instead, score the study's answer files (one per rater) against --study's key")
    p.add_argument("--study", help="the folder --human-study wrote (with --human-results)")


def check_humour_args(args) -> None:
    """Which flags go together, before anything is read."""
    if args.human_results:
        if not args.study:
            raise ConfigError("--human-results needs --study, the folder evaluate.py --human-study wrote.")
        return
    if args.study:
        raise ConfigError("--study goes with --human-results (the answer files to score).")
    if not args.captions:
        raise ConfigError("--captions is required (caption.py's output), unless --human-results.")
    if not args.out:
        raise ConfigError("--out is required (the report folder).")
    if args.human_study is not None:
        if not args.data_dir:
            raise ConfigError("--human-study needs --data-dir (the prepared HIC folder with the human captions).")
        if len(args.captions) != 1:
            raise ConfigError("--human-study takes one --captions file.")
        if args.human_study < 1:
            raise ConfigError(f"--human-study needs a number of pairs of 1 or more; got {args.human_study}.")
        return
    if not args.references and not args.data_dir:
        raise ConfigError("pass --references (the HIC test.json) or --data-dir (the prepared HIC folder).")
    if args.scorer_cfg and not args.data_dir:
        raise ConfigError("--scorer-cfg needs --data-dir: the generated captions are compared with the human captions "
                          "of its test images.")
    if args.options and not args.scorer_cfg:
        raise ConfigError("--options overrides the --scorer-cfg config; pass --scorer-cfg too.")
    if args.labels is not None and len(args.captions) == 1 and len(args.labels) != 1:
        raise ConfigError(f"--labels gives {len(args.labels)} labels for one --captions file.")
    for flag, value in (("--bootstrap", args.bootstrap), ("--batch-size", args.batch_size)):
        if value < 1:
            raise ConfigError(f"{flag} must be 1 or more; got {value}.")
    parse_options(args.options)


def run_human_results(args) -> dict:
    results = score_answers(args.study, args.human_results)
    low, high = results["ci95"]
    logger.info("Generated captions win %.3f [%.3f, %.3f] (ties half) of %d judgements by %d rater(s): %d wins, "
                "%d ties, %d losses -> %s", results["win_rate"], low, high, results["num_judgements"],
                results["num_raters"], results["wins"], results["ties"], results["losses"],
                Path(args.study) / "results.json")
    return results


def run_human_study(args) -> dict:
    source = args.captions[0]
    captions = read_captions(source, args.strict, with_data_dir=True)
    split = TestSplit.load(args.data_dir)
    return build_study(captions, source, split, args.human_study, args.out, args.seed, file_sha256(source))


def run_evaluation(args) -> list:
    """Read and check every input, then compute every number, then write the report(s)."""
    paths = list(args.captions)
    labels = run_labels(paths, args.labels)
    out = check_report_dir(args.out)
    data_dir = Path(args.data_dir) if args.data_dir else None
    captions = [read_captions(p, args.strict, with_data_dir=data_dir is not None) for p in paths]
    split = TestSplit.load(data_dir) if data_dir else None  # test.json read once: also the default references
    references = load_references(args.references) if args.references else as_references(split.references)
    scorer = HumourScorer.from_config(args.scorer_cfg, args.options, args.device) if args.scorer_cfg else None
    evaluator = HumourEvaluator(scorer, split, args.batch_size, args.seed) if scorer else None
    index = CopyIndex(split.train_captions) if split else None
    runs = [evaluate_run(label, path, caps, references, split, evaluator, index, args.bootstrap, args.seed,
                         args.self_bleu_sample, args.strict) for label, path, caps in zip(labels, paths, captions)]
    settings = settings_of(args)
    for run in runs:
        run.result.metrics["settings"] = settings
    sources = {"references": str(args.references or data_dir / SPLIT_FILES["test"])}
    if len(runs) == 1:
        write_run_report(runs[0], out, data_dir, args.sort_by, args.ascending, args.gallery_size,
                         {"captions": paths[0], **sources})
        return runs
    summary = {"runs": {}, "settings": settings, "warnings": []}
    for run in runs:
        metrics = run.result.metrics
        summary["runs"][run.label] = {
            "source": run.source, "report": f"{run.label}/index.html", "num_captions": metrics["num_captions"],
            **{key: metrics[key] for key in ("humour", "grounding", "originality", "metrics", "diversity",
                                             "test_split", "inputs") if key in metrics}}
        summary["warnings"] += [f"{run.label}: {w}" for w in metrics.get("warnings", [])]
    summary["paired"] = compare([(run.label, run.per_image) for run in runs], args.bootstrap, args.seed)
    for run in runs:
        write_run_report(run, out / run.label, data_dir, args.sort_by, args.ascending, args.gallery_size,
                         {"captions": run.source, **sources})
    paths_written = write_comparison(summary, out)
    left = {k: len(v) for k, v in summary["paired"]["left_out_images"].items() if v}
    if left:
        logger.warning("Images not in every file, left out of the paired comparison: %s", left)
    logger.info("Comparison of %s on %d common images: %s", ", ".join(labels), summary["paired"]["num_common_images"],
                paths_written["html"])
    return runs
