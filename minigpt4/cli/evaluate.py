"""Evaluate generated captions against the Oxford HIC references; write a browsable report: ``evaluate.py``.

    python evaluate.py --captions captions.jsonl --references data/hic/test.json --out report/

``--captions`` is ``caption.py``'s JSON Lines; ``--references`` is the HIC test split written by
``dataset/prepare_hic.py`` (every kept human caption per image with its funny_score), or any file in
the ``cc_sbu_align`` layout (``{"annotations": [{image_id, caption, funny_score}]}``). Writes
``report/metrics.json`` (BLEU-1..4, ROUGE-L, CIDEr-D, diversity, lengths, unmatched ids),
``report/per_image.jsonl`` (one line per caption), ``report/length_hist.png`` and
``report/index.html`` (a gallery, sorted by ``--sort-by``).

Humour (docs/HUMOUR.md): ``--data-dir PREPARED`` adds diversity and originality (the copy rate
against its training captions) and ``--scorer-cfg CFG [--options ...]`` the humour numbers against
each test image's own human captions and grounding, each with a bootstrap CI (``per_caption.jsonl``,
``human_captions.jsonl``); several ``--captions`` files (``--labels``) add a paired comparison;
``--human-study K`` / ``--human-results`` make and score a blinded human study; ``--scorer-card``
writes a humour scorer's card.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from minigpt4.cli.errors import add_debug_flag, run_cli
from minigpt4.cli.evaluate_humour import (
    add_humour_arguments,
    check_humour_args,
    run_evaluation,
    run_human_results,
    run_human_study,
)
from minigpt4.common.errors import ConfigError
from minigpt4.common.logger import console_logging
from minigpt4.evaluation.captions import METRIC_NAMES, EvaluationResult
from minigpt4.humour import card as scorer_card

logger = logging.getLogger("evaluate")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="evaluate.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--captions", nargs="+", help="caption.py output (JSON Lines); several files: a paired comparison")
    p.add_argument("--references", help="HIC test.json (or the cc_sbu_align layout); default: --data-dir's test.json")
    p.add_argument("--out", help="report folder")
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
    add_humour_arguments(p)
    add_debug_flag(p)
    args = p.parse_args(argv)
    for flag, value in (("--gallery-size", args.gallery_size), ("--self-bleu-sample", args.self_bleu_sample)):
        if value < 0:
            raise ConfigError(f"{flag} must be 0 or more; got {value}.")
    check_humour_args(args)
    return args


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
    console_logging(logging.INFO, "%(levelname)s %(name)s: %(message)s")
    if args.human_results:
        run_human_results(args)
    elif args.human_study is not None:
        run_human_study(args)
    else:
        runs = run_evaluation(args)
        if len(runs) == 1:
            log_summary(runs[0].result, Path(args.out) / "index.html")
    return 0


def cli(argv=None) -> None:
    """The console entry point: user errors are one ``error:`` line and exit code 2."""
    sys.exit(run_cli(main, sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    cli()
