"""A small prepared-HIC folder with a planted humour signal, for the tiny scorer's quickstart and tests.

    python -m minigpt4.humour.scenario --out data/hic_planted

The folder has the layout ``dataset/prepare_hic.py`` writes (``selected.jsonl``, ``filter_cap.json``,
``val.json``, ``test.json``, ``image/``). Each caption is 5-8 words drawn from two word lists; its
``funny_score`` is ``popularity(image) * 4 ** (number of FUNNY words)`` plus a little noise: the
signal is in the words, not in the length, and raw scores differ across images (popular pictures
get more votes), as in HIC. Deterministic for a seed.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from PIL import Image

from minigpt4.common.atomic import atomic_write_text

FUNNY = ("banana", "penguin", "llama", "pickle", "zombie", "ninja")
PLAIN = ("table", "chair", "door", "window", "road", "grass", "book", "tree")
SPLIT_SIZES = (("train", 36), ("val", 12), ("test", 12))


def planted_caption(rng: random.Random, funny_words: int) -> str:
    length = rng.randint(5, 8)
    words = [rng.choice(FUNNY) for _ in range(funny_words)] + [rng.choice(PLAIN) for _ in range(length - funny_words)]
    rng.shuffle(words)
    return " ".join(words)


def planted_images(seed: int = 0, captions_per_image: int = 6) -> list[tuple[str, str, list]]:
    """``(split, image_id, [[caption, funny_score], ...] best first)`` per image."""
    rng = random.Random(seed)
    out = []
    for split, count in SPLIT_SIZES:
        for _ in range(count):
            image_id = f"img{len(out):04d}"
            popularity = rng.randint(1, 20)
            captions = {}
            while len(captions) < captions_per_image:
                funny = rng.randint(0, 3)
                captions.setdefault(planted_caption(rng, funny), popularity * 4 ** funny + rng.randint(0, 1))
            ranked = sorted(captions.items(), key=lambda item: -item[1])
            out.append((split, image_id, [[c, s] for c, s in ranked]))
    return out


def write_scenario(out: str | Path, seed: int = 0) -> Path:
    out = Path(out)
    (out / "image").mkdir(parents=True, exist_ok=True)
    images = planted_images(seed)
    rng = random.Random(seed + 1)
    for _, image_id, _ in images:
        colour = tuple(rng.randrange(256) for _ in range(3))
        Image.new("RGB", (48, 40), colour).save(out / "image" / f"{image_id}.jpg", quality=90)
    atomic_write_text(out / "selected.jsonl", "".join(
        json.dumps({"image_id": i, "captions": caps}) + "\n" for _, i, caps in images))
    train = [{"image_id": i, "caption": caps[0][0], "funny_score": caps[0][1]} for s, i, caps in images if s == "train"]
    atomic_write_text(out / "filter_cap.json", json.dumps({"annotations": train}))
    for split in ("val", "test"):
        rows = [{"image_id": i, "captions": [{"caption": c, "funny_score": f} for c, f in caps]}
                for s, i, caps in images if s == split]
        atomic_write_text(out / f"{split}.json", json.dumps({"split": split, "images": rows}))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m minigpt4.humour.scenario", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="the folder to write (a prepared-HIC layout)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    print(f"Wrote a planted-signal HIC folder to {write_scenario(args.out, args.seed)}.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
