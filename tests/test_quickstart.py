"""The README's first command: the quickstart model captions each bundled example with its own
caption (memorised by minigpt4/tools/memorise.py), and the demo's Chat answers with text."""

from __future__ import annotations

import json
import shlex

import pytest

from conftest import ROOT
from minigpt4.cli import caption
from minigpt4.datasets.hic_format import read_split


def readme_command() -> list[str]:
    """The caption.py command of README.md's 'See it work' section, as arguments."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## See it work", 1)[1]
    line = next(line for line in section.splitlines() if "caption.py" in line and "--images" in line)
    args = shlex.split(line)
    return args[args.index("caption.py") + 1:]


@pytest.mark.slow
def test_readme_quickstart_prints_each_examples_own_caption(tmp_path, monkeypatch):
    args = readme_command()
    out = tmp_path / "captions.jsonl"
    args[args.index("--out") + 1] = str(out)
    monkeypatch.chdir(ROOT)
    assert caption.main(args + ["--quiet"]) == 0
    expected = {item.image_id: item.captions[0].caption for item in read_split(ROOT / "examples", "train")}
    got = {row["image_id"]: row["caption"] for row in map(json.loads, out.read_text().splitlines())}
    assert got == expected  # twelve distinct, readable captions: the bundled ones


@pytest.mark.slow
def test_quickstart_demo_answers_with_text():
    from minigpt4.conversation.conversation import CONV_VISION, Chat
    from minigpt4.inference.loading import load_for_inference

    loaded = load_for_inference(ROOT / "eval_configs" / "minigpt4_tiny_eval.yaml", device="cpu")
    chat = Chat(loaded.model, loaded.vis_processor)
    conv, images = CONV_VISION.copy(), []
    chat.upload_img(str(ROOT / "examples" / "image" / "chelsea.jpg"), conv, images)
    chat.ask("Describe this image in a funny way.", conv)
    answer = chat.answer(conv, images, max_new_tokens=60, do_sample=False)[0]
    assert answer == "This cat has just been told that the sunbeam is reserved for the dog."
