#!/usr/bin/env python
"""The humour evaluation's own costs, without the scorer: the bootstrap (1000 resamples over 10k
images, one metric and a paired difference) and the near-copy search (captions/s against 100k
training captions, about a quarter of HIC's filter_cap.json), on the CPU.

    python benchmarks/bench_evaluate.py [--images 10000] [--resamples 1000] [--training 100000]

Writes benchmarks/results/bench_evaluate.json and .md.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import string
import sys
import time
from pathlib import Path

import numpy as np

from minigpt4.evaluation.bootstrap import mean_ci, paired_ci
from minigpt4.evaluation.originality import CopyIndex

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_model import RESULTS, write_results  # noqa: E402

def timed(fn, repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=10_000)
    p.add_argument("--resamples", type=int, default=1000)
    p.add_argument("--training", type=int, default=100_000, help="training captions for the near-copy search")
    p.add_argument("--queries", type=int, default=2000)
    args = p.parse_args(argv)
    rng = np.random.default_rng(0)
    a = rng.random(args.images)
    b = a + rng.normal(0.01, 0.05, args.images)
    rows = [{"what": f"mean_ci: {args.resamples} resamples of {args.images} images",
             "seconds": timed(lambda: mean_ci(a, args.resamples, 0)), "rate": "", "unit": ""},
            {"what": f"paired_ci: {args.resamples} resamples of {args.images} images",
             "seconds": timed(lambda: paired_ci(a, b, args.resamples, 0)), "rate": "", "unit": ""}]
    text = random.Random(0)
    vocab = ["".join(text.choice(string.ascii_lowercase) for _ in range(text.randint(2, 9))) for _ in range(20_000)]
    zipf = 1 / np.arange(1, len(vocab) + 1)
    zipf /= zipf.sum()

    def sentence() -> str:  # English-like: a Zipf-distributed vocabulary of 20k words, 4-13 words
        return " ".join(vocab[i] for i in rng.choice(len(vocab), size=int(rng.integers(4, 14)), p=zipf))

    training = [sentence() for _ in range(args.training)]
    start = time.perf_counter()
    index = CopyIndex(training)
    build = time.perf_counter() - start
    queries = [t if i % 4 else t + " again" for i, t in enumerate(text.sample(training, args.queries // 2))]
    queries += [sentence() for _ in range(args.queries // 2)]
    start = time.perf_counter()
    near = sum(index.copy_flags(q)["copy_near"] for q in queries)
    search = time.perf_counter() - start
    rows.append({"what": f"CopyIndex of {len(index)} distinct training captions (build)", "seconds": build,
                 "rate": "", "unit": ""})
    rows.append({"what": f"near-copy search of {len(queries)} captions ({int(near)} near copies)", "seconds": search,
                 "rate": f"{len(queries) / search:.0f}", "unit": "captions/s"})
    meta = {"numpy": np.__version__, "cpu": platform.processor() or platform.machine(),
            "load_average_at_end": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None}
    write_results("bench_evaluate", rows, meta, "bench_evaluate: bootstrap and near-copy search",
                  "Seconds are the best of 3 runs (the index build and the search: one run). The bootstrap draws "
                  "int32 resample indices in blocks of about 4M (minigpt4/evaluation/bootstrap.py).")
    print((RESULTS / "bench_evaluate.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
