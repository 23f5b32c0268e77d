"""Humour-scorer throughput in caption pairs per second, training (forward, backward, AdamW step) and
scoring (no grad), for each way the scorer runs:

* ``itc_cached``: the ``itc`` head on cached image and caption embeddings (a frozen backbone: what
  ``humour_ranking`` does after its one pass over the images);
* ``itc_uncached``: the same head computing the ViT and Q-Former for every batch;
* ``itm``: the joint image-grounded encoding (never cacheable).

for the tiny and mid-size presets on CPU (float32) and, with CUDA, the released sizes (EVA ViT-g,
Q-Former on bert-base, random weights, ViT in fp16).

    python benchmarks/bench_scorer.py [--presets tiny mid] [--batch 32] [--rounds 5] [--out DIR]

Rounds are interleaved (one step of every mode per round; the median per mode), so the ratio
``vs_uncached`` compares modes under the same machine load. Images are pre-processed tensors, so the
uncached rates leave out JPEG decoding (which slows them further). The target: ``itc_cached``
training at least 20x ``itc_uncached``. Writes ``bench_scorer.json`` and ``.md`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import minigpt4  # noqa: E402,F401  (registration)
from minigpt4.models.hic_scorer import HICScorer  # noqa: E402
from minigpt4.models.hic_scorer_config import HICScorerConfig  # noqa: E402
from minigpt4.tasks.humour_ranking import HumourRankingTask  # noqa: E402
from minigpt4.tools.make_tiny import ensure_tiny  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
MODES = ("itc_cached", "itc_uncached", "itm")
WORDS = "when your cat thinks the laptop is a heated bed and the dog pretends to understand the joke again".split()


def config(preset: str, head: str) -> HICScorerConfig:
    node = OmegaConf.load(ROOT / "minigpt4" / "configs" / "models" / f"hic_scorer_{preset}.yaml").model
    return HICScorerConfig.from_node(OmegaConf.merge(node, {"head": head, "head_dropout": 0.0}))


def build(preset: str, head: str, device: torch.device) -> HICScorer:
    if preset != "real":
        return HICScorer(config(preset, head), device=device)
    # the released sizes with random weights; the tiny WordPiece vocabulary (the table size hardly matters)
    cfg = HICScorerConfig(head=head, head_dropout=0.0, bert_tokenizer=str(ensure_tiny("tiny") / "bert_tokenizer"))
    with torch.device(device):
        return HICScorer(cfg, device=device, load_weights=False)


def batch(n: int, size: int, device: torch.device, seed: int) -> dict:
    gen = torch.Generator().manual_seed(seed)
    def caption(i):
        start = (i * 7 + seed) % len(WORDS)
        return " ".join(WORDS[start:] + WORDS[:start])[: 40 + 3 * (i % 9)]
    return {"image": torch.randn(n, 3, size, size, generator=gen).to(device), "image_id": [f"{seed}-{i}" for i in range(n)],
            "text_win": [caption(2 * i) for i in range(n)], "text_lose": [caption(2 * i + 1) for i in range(n)],
            "weight": torch.ones(n, device=device)}


class Mode:
    def __init__(self, name: str, preset: str, device: torch.device, n: int):
        self.name, self.device = name, device
        self.model = build(preset, "itm" if name == "itm" else "itc", device)
        self.model.caches_embeddings = name == "itc_cached"
        self.task = HumourRankingTask()
        with torch.no_grad():  # a trained-looking head: every part of the step does real work
            self.model.head.mlp[-1].weight.normal_(std=0.02)
        self.optimizer = torch.optim.AdamW([p for p in self.model.parameters() if p.requires_grad], lr=1e-4)
        self.samples = batch(n, self.model.config.image_size, device, seed=1)
        if self.model.caches_embeddings:  # what fill_embedding_cache does once before training
            with torch.no_grad():
                self.model.image_feats(self.samples["image"], self.samples["image_id"])
                self.model.text_feats(self.samples["text_win"] + self.samples["text_lose"])
            self.samples = {k: v for k, v in self.samples.items() if k != "image"}
        self.train_s, self.score_s = [], []

    def _sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def round(self) -> None:
        self.model.train()
        self._sync()
        start = time.perf_counter()
        loss = self.task.train_step(self.model, self.samples)["loss"]
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad()
        self._sync()
        self.train_s.append(time.perf_counter() - start)
        self.model.eval()
        start = time.perf_counter()
        with torch.no_grad():
            self.model(self.samples)
        self._sync()
        self.score_s.append(time.perf_counter() - start)


def measure(preset: str, device: torch.device, n: int, rounds: int) -> list[dict]:
    modes = [Mode(name, preset, device, n) for name in MODES]
    for mode in modes:
        mode.round()  # warm-up
        mode.train_s.clear()
        mode.score_s.clear()
    for _ in range(rounds):
        for mode in modes:
            mode.round()
    rows = []
    for mode in modes:
        train, score = statistics.median(mode.train_s), statistics.median(mode.score_s)
        rows.append({"preset": preset, "device": str(device), "mode": mode.name, "batch_pairs": n,
                     "train_pairs_per_s": n / train, "score_pairs_per_s": n / score})
    uncached = next(r for r in rows if r["mode"] == "itc_uncached")
    for row in rows:
        row["train_vs_uncached"] = row["train_pairs_per_s"] / uncached["train_pairs_per_s"]
        row["score_vs_uncached"] = row["score_pairs_per_s"] / uncached["score_pairs_per_s"]
    return rows


def write(rows: list[dict], meta: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_scorer.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    lines = ["# bench_scorer", "", ", ".join(f"{k}: {v}" for k, v in meta.items()), "",
             "| preset | device | mode | batch | train pairs/s | score pairs/s | train vs uncached | score vs uncached |",
             "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['preset']} | {r['device']} | {r['mode']} | {r['batch_pairs']} | {r['train_pairs_per_s']:.1f} | "
              f"{r['score_pairs_per_s']:.1f} | {r['train_vs_uncached']:.1f}x | {r['score_vs_uncached']:.1f}x |" for r in rows]
    (out / "bench_scorer.md").write_text("\n".join(lines) + "\n")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--presets", nargs="+", default=["tiny", "mid"], choices=["tiny", "mid"])
    p.add_argument("--batch", type=int, default=32, help="pairs per step")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--out", default=str(RESULTS))
    args = p.parse_args(argv)
    torch.manual_seed(0)
    rows = []
    for preset in args.presets:
        rows += measure(preset, torch.device("cpu"), args.batch, args.rounds)
        print(json.dumps(rows[-3:], indent=1), flush=True)
    if torch.cuda.is_available():
        rows += measure("real", torch.device("cuda"), args.batch, args.rounds)
    meta = {"torch": torch.__version__, "threads": torch.get_num_threads(), "cpu": platform.machine(),
            "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else False, "rounds": args.rounds,
            "load_average_1m": round(os.getloadavg()[0], 2)}
    write(rows, meta, Path(args.out))
    print(f"Wrote {Path(args.out) / 'bench_scorer.md'}")


if __name__ == "__main__":
    main()
