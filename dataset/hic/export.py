"""The export step: ``score_hist.png`` (the kept funny scores) and, with ``--shards``, webdataset tar
shards of the training split (one sample per image-caption pair, in the split's mixed order)."""

from __future__ import annotations

import io
import json
import os
import tarfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from .files import atomic_write_bytes, say, unlink_quiet, update_stats
from .split import SplitOptions, iter_selected, iter_splits


@dataclass(frozen=True)
class ExportOptions:
    shards: bool = False
    shard_size: int = 10000
    quiet: bool = False


def _tarinfo(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


class _ShardWriter:
    """``train-NNNNNN.tar`` files of ``size`` samples each, each written as a temporary and renamed."""

    def __init__(self, shard_dir: Path, size: int):
        self.dir, self.size = shard_dir, size
        self.index = self.in_shard = self.samples = 0
        self.tar = self.tmp = None
        self.written: list[str] = []

    def add(self, image_id: str, jpg: bytes, caption: str, score) -> None:
        if self.tar is not None and self.in_shard >= self.size:
            self.close_current()
            self.index += 1
            self.in_shard = 0
        if self.tar is None:
            self.tmp = self.dir / f".train-{self.index:06d}.tar.tmp"
            self.tar = tarfile.open(self.tmp, "w", format=tarfile.USTAR_FORMAT)
        key = f"{self.samples:09d}"  # webdataset keys cannot contain dots; the id is in the json
        meta = json.dumps({"image_id": image_id, "caption": caption, "funny_score": score},
                          ensure_ascii=False, sort_keys=True).encode("utf-8")
        self.tar.addfile(_tarinfo(f"{key}.jpg", len(jpg)), io.BytesIO(jpg))
        self.tar.addfile(_tarinfo(f"{key}.json", len(meta)), io.BytesIO(meta))
        self.in_shard += 1
        self.samples += 1

    def close_current(self) -> None:
        if self.tar is not None:
            self.tar.close()
            final = self.dir / f"train-{self.index:06d}.tar"
            os.replace(self.tmp, final)
            self.written.append(final.name)
            self.tar = None

    def discard(self) -> None:
        if self.tar is not None:
            self.tar.close()
            unlink_quiet(self.tmp)


def write_shards(opts: ExportOptions, split: SplitOptions, out_dir: Path) -> dict:
    """Webdataset tar shards of the training split: one sample per (image, caption) pair."""
    shard_dir = out_dir / "shards"
    shard_dir.mkdir(parents=True, exist_ok=True)
    for stale in shard_dir.glob(".*.tmp"):
        unlink_quiet(stale)
    writer = _ShardWriter(shard_dir, opts.shard_size)
    try:
        for name, image_id, caps in iter_splits(split, out_dir):
            if name != "train":
                continue
            jpg = (out_dir / "image" / f"{image_id}.jpg").read_bytes()
            for caption, score in caps:
                writer.add(image_id, jpg, caption, score)
        writer.close_current()
    except BaseException:
        writer.discard()
        raise
    keep = set(writer.written)
    for old in shard_dir.glob("train-*.tar"):
        if old.name not in keep:
            old.unlink()  # left over from an earlier run with other settings
    n = len(writer.written)
    pattern = f"train-{{000000..{n - 1:06d}}}.tar" if n else None
    return {"shard_size": opts.shard_size, "shards": n, "samples": writer.samples, "pattern": pattern}


def write_histogram(out_dir: Path, kept_scores: Counter) -> None:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    if kept_scores:
        values = sorted(kept_scores)
        counts = [kept_scores[v] for v in values]
        top = max(values)
        if top <= 60:
            ax.bar(values, counts, width=0.8, color="#3b6ea8")
        else:
            edges = sorted({0.0, *[float(round(top ** (i / 40), 6)) for i in range(41)]})
            ax.hist(np.repeat(np.asarray(values, dtype=float), counts), bins=edges, color="#3b6ea8")
            ax.set_xscale("symlog")
        ax.set_yscale("log")
    ax.set_xlabel("funny_score")
    ax.set_ylabel("captions kept")
    ax.set_title(f"Oxford HIC: funny_score of kept captions (n={sum(kept_scores.values())})")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    plt.close(fig)
    atomic_write_bytes(out_dir / "score_hist.png", buf.getvalue())


def step_export(opts: ExportOptions, split: SplitOptions, out_dir: Path) -> dict:
    kept = Counter()
    for rec in iter_selected(out_dir):
        for _, score in rec["captions"]:
            kept[score] += 1
    write_histogram(out_dir, kept)
    payload = {"histogram": "score_hist.png"}
    if opts.shards:
        payload["shards"] = write_shards(opts, split, out_dir)
        say(opts.quiet, f"export: {payload['shards']['samples']} samples in {payload['shards']['shards']} shards "
                        f"under {out_dir / 'shards'}")
    update_stats(out_dir, "export", payload)
    return payload
