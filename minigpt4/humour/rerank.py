"""Best-of-N reranking in ``caption.py``: sample N captions per image and prompt, score them with a
humour scorer, keep the best (or all, ranked).

    python caption.py --cfg-path eval_configs/minigpt4_eval.yaml --images DIR --out best.jsonl \
        --num-captions 8 --do-sample --rerank-cfg eval_configs/hic_scorer_eval.yaml \
        --rerank-options model.ckpt=output/hic_scorer/<job>/checkpoint_best.pth [--keep best|all]

Every written line gets ``humour_score``, ``rank`` (1 = the highest score among the image's N
candidates for its prompt; ties keep the sampling order) and ``chosen`` (rank 1), and ``scorer``: the
scorer's config, overrides, head checkpoint and its sha256. ``--keep best`` (the default) writes only
the chosen candidate, as ``caption_index`` 0; ``--keep all`` writes the N candidates in sampling order.
The run's settings record the scorer, so a resume with another scorer is refused like any other
change. Evaluating such captions with the same scorer checkpoint inflates their humour numbers by
construction; ``evaluate.py`` warns when it sees that.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from minigpt4.common.config import parse_options
from minigpt4.common.errors import ConfigError
from minigpt4.humour.scorer import HumourScorer, file_sha256
from minigpt4.inference.records import CaptionRecord

logger = logging.getLogger(__name__)
KEEP = ("best", "all")


def add_rerank_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rerank-cfg", help="best-of-N: score the --num-captions candidates with this humour scorer "
                                        "config (model.arch hic_scorer) and rank them")
    p.add_argument("--rerank-options", nargs="+", help="overrides of the --rerank-cfg config, key=value "
                                                       "(e.g. model.ckpt=.../checkpoint_best.pth)")
    p.add_argument("--keep", choices=KEEP, default=None,
                   help="with --rerank-cfg: write only the best candidate (best, the default) or all, ranked (all)")


def check_rerank_args(args) -> None:
    """Flag checks, before anything is loaded."""
    if not args.rerank_cfg:
        if args.rerank_options or args.keep:
            raise ConfigError("--rerank-options and --keep need --rerank-cfg (the humour scorer that ranks the "
                              "candidates).")
        return
    if args.num_captions < 2:
        raise ConfigError(f"--rerank-cfg ranks several candidates per image: pass --num-captions 2 or more (with "
                          f"--do-sample); got --num-captions {args.num_captions}.")
    if not Path(args.rerank_cfg).is_file():
        raise ConfigError(f"--rerank-cfg {args.rerank_cfg} not found: name a humour scorer eval config, e.g. "
                          "eval_configs/hic_scorer_eval.yaml.")
    parse_options(args.rerank_options)


class Reranker:
    """Ranks the candidates of one image; with no scorer (no ``--rerank-cfg``) it passes them through."""

    def __init__(self, scorer: HumourScorer | None = None, keep: str = "best"):
        self.scorer, self.keep = scorer, keep
        self.info = None
        if scorer is not None:
            info = scorer.info
            self.info = {key: info.get(key) for key in ("cfg", "options", "ckpt", "ckpt_sha256", "head", "use_image",
                                                        "model_type")}
            self.info.update(cfg_sha256=file_sha256(info["cfg"]) if Path(info["cfg"]).is_file() else None, keep=keep)

    @classmethod
    def from_args(cls, args, device) -> "Reranker":
        if not args.rerank_cfg:
            return cls()
        scorer = HumourScorer.from_config(args.rerank_cfg, args.rerank_options, device)
        logger.info("Best-of-%d: ranking candidates with %s (head %s).", args.num_captions, args.rerank_cfg,
                    scorer.info["ckpt"] or "untrained")
        return cls(scorer, args.keep or "best")

    def settings(self) -> dict:
        """What a resume must match: the scorer (by its head's sha256) and what is kept."""
        if self.scorer is None:
            return {"rerank": None}
        return {"rerank": {k: self.info[k] for k in ("cfg", "options", "ckpt_sha256", "cfg_sha256", "keep")}}

    def kept(self, num_captions: int) -> int:
        """Captions written per image and prompt."""
        return 1 if self.scorer is not None and self.keep == "best" else num_captions

    def __call__(self, records: list[CaptionRecord]) -> list[CaptionRecord]:
        """One image's records, ranked per prompt (an error record passes through)."""
        if self.scorer is None or not records or records[0].is_error:
            return records
        scores = self.scorer.score(records[0].image, [r.caption for r in records]).tolist()
        by_prompt: dict[str, list[int]] = {}
        for i, record in enumerate(records):
            by_prompt.setdefault(record.prompt, []).append(i)
        out = []
        for rows in by_prompt.values():
            order = sorted(rows, key=lambda i: (-scores[i], records[i].caption_index))
            for rank, i in enumerate(order, 1):
                r = records[i]
                r.humour_score, r.rank, r.chosen, r.scorer = float(scores[i]), rank, rank == 1, dict(self.info)
            if self.keep == "best":
                best = records[order[0]]
                best.caption_index = 0
                out.append(best)
            else:
                out += [records[i] for i in rows]
        return out
