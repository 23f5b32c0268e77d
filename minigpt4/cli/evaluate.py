"""Evaluate generated captions against the Oxford HIC references; write a browsable report: ``evaluate.py``.

    python evaluate.py --captions captions.jsonl --references data/hic/test.json --out report/

``--captions`` is ``caption.py``'s JSON Lines; ``--references`` is the HIC test split written by
``dataset/prepare_hic.py`` (every kept human caption per image with its funny_score), or any file in
the ``cc_sbu_align`` layout (``{"annotations": [{image_id, caption, funny_score}]}``). Writes
``report/metrics.json`` (BLEU-1..4, ROUGE-L, CIDEr-D, diversity, lengths, unmatched ids),
``report/per_image.jsonl`` (one line per caption), ``report/length_hist.png`` and
``report/index.html`` (a gallery, sorted by ``--sort-by``).
"""

from __future__ import annotations

import argparse
import logging
import sys

from minigpt4.cli.errors import add_debug_flag, run_cli
from minigpt4.common.errors import ConfigError, EvaluationError
from minigpt4.evaluation.captions import (
    METRIC_NAMES,
    CaptionSet,
    EvaluationResult,
    evaluate,
    load_captions,
    load_references,
)
from minigpt4.evaluation.report import check_report_dir, write_report
from minigpt4.humour import card as scorer_card

logger = logging.getLogger("evaluate")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="evaluate.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--captions", required=True, help="caption.py output (JSON Lines)")
    p.add_argument("--references", required=True, help="HIC test.json (or the cc_sbu_align layout)")
    p.add_argument("--out", required=True, help="report folder")
    p.add_argument("--sort-by", default="CIDEr-D", choices=[*METRIC_NAMES, "length"], help="gallery order")
    p.add_argument("--ascending", action="store_true", help="worst first")
    p.add_argument("--gallery-size", type=int, default=200, help="captions shown in the gallery (0: none)")
    p.add_argument("--self-bleu-sample", type=int, default=500,
                   help="captions sampled for self-BLEU (0: not computed)")
    p.add_argument("--strict", action="store_true",
                   help="fail if a captioned image has no reference, a caption line repeats, or the last line is torn")
    p.add_argument("--scorer-card", action="store_true",
                   help="instead, write a humour scorer's card on the HIC test split: evaluate.py --scorer-card "
                        "--scorer-cfg CFG [--options ...] --data-dir PREPARED --out REPORT/ (docs/HUMOUR.md)")
    add_debug_flag(p)
    args = p.parse_args(argv)
    for flag, value in (("--gallery-size", args.gallery_size), ("--self-bleu-sample", args.self_bleu_sample)):
        if value < 0:
            raise ConfigError(f"{flag} must be 0 or more; got {value}.")
    return args


def load_inputs(args) -> tuple[CaptionSet, dict]:
    references = load_references(args.references)
    captions = load_captions(args.captions, strict=args.strict)
    if not captions.candidates:
        raise EvaluationError(f"{args.captions} holds only error lines ({len(captions.errors)} unreadable images).")
    return captions, references


def score(args, captions: CaptionSet, references: dict) -> EvaluationResult:
    result = evaluate(captions.candidates, references, captions.errors, self_bleu_sample=args.self_bleu_sample,
                      strict=args.strict)
    result.metrics["captions_file"] = captions.file_notes()
    return result


def log_summary(result: EvaluationResult, html_path) -> None:
    unmatched = result.metrics["unmatched"]
    if unmatched["captions_without_references"]:
        logger.warning("%d captioned image(s) have no reference and are not scored: %s",
                       unmatched["captions_without_references"],
                       ", ".join(unmatched["captions_without_references_ids"][:10]))
    if unmatched["references_without_captions"]:
        logger.warning("%d reference image(s) were not captioned.", unmatched["references_without_captions"])
    if unmatched["caption_errors"]:
        logger.warning("%d image(s) were unreadable in caption.py.", unmatched["caption_errors"])
    m = result.metrics["metrics"]
    logger.info("%d captions / %d images: %s", result.metrics["num_captions"], result.metrics["num_images"],
                ", ".join(f"{k} {m[k]:.4f}" for k in METRIC_NAMES))
    logger.info("Report: %s", html_path)


def main(argv=None) -> int:
    """Evaluate and write the report; user errors raise (``cli`` prints them as one ``error:`` line)."""
    if "--scorer-card" in (sys.argv[1:] if argv is None else argv):
        return scorer_card.main(argv)
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    check_report_dir(args.out)
    captions, references = load_inputs(args)
    result = score(args, captions, references)
    # Further report blocks (scores of their own) add to result.metrics and pass extra_sections here.
    paths = write_report(result, args.out, sort_by=args.sort_by, ascending=args.ascending,
                         gallery_size=args.gallery_size,
                         sources={"captions": args.captions, "references": args.references})
    log_summary(result, paths["html"])
    return 0


def cli(argv=None) -> None:
    """The console entry point: user errors are one ``error:`` line and exit code 2."""
    sys.exit(run_cli(main, sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    cli()
