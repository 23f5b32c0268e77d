"""caption.py and minigpt4.generation: batched greedy captions equal Chat.answer's, per-row stopping,
resume, unreadable images, input forms."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from minigpt4.conversation.conversation import CONV_VISION, Chat
from minigpt4.generation import BatchCaptioner, GenerationSettings, cut_at_stop, left_pad

ROOT = Path(__file__).resolve().parents[1]


def _load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


caption = _load_script("caption")
TINY_CFG = ROOT / "eval_configs" / "minigpt4_tiny_eval.yaml"
SKIMAGE_NAMES = ("astronaut", "coffee", "chelsea", "rocket", "camera")
# Two prompts of different token lengths, so batches mix lengths and left padding is exercised.
PROMPTS = ("Describe this image in a funny way.", "Could you write a funny caption of this image for me?")


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory) -> Path:
    import skimage.data

    folder = tmp_path_factory.mktemp("images")
    for name in SKIMAGE_NAMES:
        Image.fromarray(getattr(skimage.data, name)()).convert("RGB").save(folder / f"{name}.jpg")
    return folder


@pytest.fixture(scope="module")
def vis_processor():
    from conftest import make_config
    from minigpt4.common.registry import registry

    node = make_config(TINY_CFG).inference_vis_processor_cfg
    return registry.get_processor_class(node.name).from_config(node)


def single_answer(model, vis_processor, image, prompt, max_new_tokens, stop_words_ids=None):
    chat = Chat(model, vis_processor, device="cpu", stop_words_ids=stop_words_ids)
    conv, img_list = CONV_VISION.copy(), []
    chat.upload_img(image, conv, img_list)
    chat.ask(prompt, conv)
    text, ids = chat.answer(conv, img_list, max_new_tokens=max_new_tokens, do_sample=False)
    return text, ids.tolist()


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def test_cut_at_stop_and_left_pad():
    assert cut_at_stop([5, 6, 7, 8], [[7]], {2}) == [5, 6, 7]
    assert cut_at_stop([5, 6, 7, 8], [[6, 7]], {2}) == [5, 6, 7]
    assert cut_at_stop([5, 2, 2, 2], [[7]], {2}) == [5, 2]
    assert cut_at_stop([5, 6], [[7]], {2}) == [5, 6]
    embeds, mask = left_pad([torch.ones(2, 3), torch.full((4, 3), 2.0)], torch.zeros(3))
    assert embeds.shape == (2, 4, 3) and mask.tolist() == [[0, 0, 1, 1], [1, 1, 1, 1]]
    assert embeds[0, :2].abs().sum() == 0 and embeds[0, 2:].eq(1).all()


@pytest.mark.slow
def test_batched_greedy_equals_chat_answer(tiny_model, vis_processor, image_dir, tmp_path):
    """Acceptance 1: caption.py at batch size 4 == Chat.answer(do_sample=False), ids and text."""
    prompt_file = tmp_path / "prompts.txt"
    prompt_file.write_text("".join(f"<Img><ImageHere></Img> {p}\n" for p in PROMPTS))
    out = tmp_path / "captions.jsonl"
    caption.main(["--cfg-path", str(TINY_CFG), "--images", str(image_dir), "--out", str(out), "--batch-size", "4",
                  "--prompt-file", str(prompt_file), "--all-prompts", "--max-new-tokens", "24", "--device", "cpu",
                  "--quiet"])
    records = read_jsonl(out)
    assert len(records) == len(SKIMAGE_NAMES) * len(PROMPTS)
    assert {r["image_id"] for r in records} == set(SKIMAGE_NAMES)
    for record in records:
        assert record["settings"]["do_sample"] is False and record["model"]["model_type"] == "tiny"
        image = Image.open(record["image"]).convert("RGB")
        text, ids = single_answer(tiny_model, vis_processor, image, record["prompt"], 24)
        assert record["caption"] == text
        assert record["num_tokens"] == len(ids)

    # The ids themselves, through the library (caption.py writes the text only).
    captioner = BatchCaptioner(tiny_model, vis_processor, "cpu")
    images = [Image.open(image_dir / f"{n}.jpg").convert("RGB") for n in SKIMAGE_NAMES[:4]]
    prompts = [PROMPTS[i % 2] for i in range(4)]
    batched = captioner.generate(images, prompts, GenerationSettings(max_new_tokens=24))
    for image, prompt, caps in zip(images, prompts, batched):
        text, ids = single_answer(tiny_model, vis_processor, image, prompt, 24)
        assert caps[0].token_ids == ids and caps[0].text == text


@pytest.mark.slow
def test_per_row_stop_matches_single(tiny_model, vis_processor, image_dir):
    """A stop sequence that fires in some rows only: each row still equals its single-image answer."""
    images = [Image.open(image_dir / f"{n}.jpg").convert("RGB") for n in SKIMAGE_NAMES]
    prompts = ["Describe this image in a funny way.", "Take a look at this image and tell a joke about it.",
               "Please provide a humourous description of the picture.",
               "Could you write a funny caption of this image for me?", "What is this?"]
    max_new = 30
    plain = [single_answer(tiny_model, vis_processor, im, p, max_new)[1] for im, p in zip(images, prompts)]
    # A token pair that occurs in some greedy outputs and not in others.
    pairs = [set(zip(ids, ids[1:])) for ids in plain]
    candidates = sorted(set.union(*pairs) - set.intersection(*pairs))
    assert candidates, "the tiny model's greedy outputs are all alike; pick other prompts"
    stop = list(candidates[0])
    stop_words_ids = Chat(tiny_model, vis_processor, device="cpu").stop_words_ids + [stop]

    captioner = BatchCaptioner(tiny_model, vis_processor, "cpu", stop_words_ids=stop_words_ids)
    batched = captioner.generate(images, prompts, GenerationSettings(max_new_tokens=max_new))
    fired = []
    for image, prompt, caps in zip(images, prompts, batched):
        text, ids = single_answer(tiny_model, vis_processor, image, prompt, max_new, stop_words_ids)
        assert caps[0].token_ids == ids and caps[0].text == text
        fired.append(ids[-2:] == stop)
    assert any(fired) and not all(fired)


@pytest.mark.slow
def test_resume_and_unreadable_image(image_dir, tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for name in SKIMAGE_NAMES[:2]:
        (folder / f"{name}.jpg").write_bytes((image_dir / f"{name}.jpg").read_bytes())
    (folder / "broken.jpg").write_text("this is not a JPEG")
    out = tmp_path / "out" / "captions.jsonl"
    args = ["--cfg-path", str(TINY_CFG), "--images", str(folder), "--out", str(out), "--max-new-tokens", "4",
            "--device", "cpu", "--quiet", "--prompt", "Tell a joke."]
    assert caption.main(args) == 0
    records = read_jsonl(out)
    errors = [r for r in records if "error" in r]
    assert len(records) == 3 and len(errors) == 1
    assert errors[0]["image_id"] == "broken" and "not a readable image" in errors[0]["error"]
    assert all(r["prompt"] == "Tell a joke." for r in records if "error" not in r)

    # Nothing new to do: the file is unchanged.
    before = out.read_text()
    caption.main(args)
    assert out.read_text() == before

    # An interrupted write left half a line; a new image appears: only the new image is captioned.
    with out.open("a") as fh:
        fh.write('{"image": "half')
    (folder / f"{SKIMAGE_NAMES[2]}.jpg").write_bytes((image_dir / f"{SKIMAGE_NAMES[2]}.jpg").read_bytes())
    caption.main(args)
    lines = out.read_text().splitlines()
    assert lines[-2] == '{"image": "half'
    new = json.loads(lines[-1])
    assert new["image_id"] == SKIMAGE_NAMES[2] and new["caption_index"] == 0


def test_input_forms(image_dir, tmp_path):
    listing = tmp_path / "list.txt"
    listing.write_text(f"# two images\n{image_dir / 'coffee.jpg'}\n\n{image_dir / 'rocket.jpg'}\n")
    assert [p.name for p in caption.list_images(str(listing))] == ["coffee.jpg", "rocket.jpg"]
    assert [p.name for p in caption.list_images(str(image_dir / "c*.jpg"))] == ["camera.jpg", "chelsea.jpg",
                                                                                 "coffee.jpg"]
    assert len(caption.list_images(str(image_dir))) == len(SKIMAGE_NAMES)
    with pytest.raises(SystemExit, match="matches no files"):
        caption.list_images(str(tmp_path / "*.png"))
    with pytest.raises(SystemExit, match="not a folder"):
        caption.list_images(str(tmp_path / "missing"))
    assert caption.strip_image_message("<Img><ImageHere></Img> Tell a joke.") == "Tell a joke."
    prompts = list(PROMPTS)
    chosen = caption.prompts_for("abc", prompts, all_prompts=False, seed=1)
    assert chosen == caption.prompts_for("abc", prompts, all_prompts=False, seed=1) and chosen[0] in prompts
    with pytest.raises(SystemExit):
        caption.parse_args(["--cfg-path", "x", "--images", "y", "--out", "z", "--batch-size", "0"])


def test_several_greedy_captions_are_refused(tiny_model, vis_processor, image_dir):
    captioner = BatchCaptioner(tiny_model, vis_processor, "cpu")
    with pytest.raises(ValueError, match="need sampling"):
        captioner.generate([Image.open(image_dir / "coffee.jpg")], "Hi", GenerationSettings(), num_captions=2)
    sampled = captioner.generate([Image.open(image_dir / "coffee.jpg")], "Hi",
                                 GenerationSettings(do_sample=True, max_new_tokens=3), num_captions=2)
    assert len(sampled) == 1 and len(sampled[0]) == 2


def test_open_image_refuses_huge_and_non_images(image_dir, tmp_path):
    from minigpt4.generation import open_image

    assert open_image(image_dir / "coffee.jpg").mode == "RGB"
    with pytest.raises(ValueError, match="too large"):
        open_image(image_dir / "coffee.jpg", max_pixels=100)
    fake = tmp_path / "fake.png"
    fake.write_text("hello")
    with pytest.raises(ValueError, match="fake.png: not a readable image") as err:
        open_image(fake)
    assert str(tmp_path) not in str(err.value)  # no server paths in messages shown to users
