"""caption.py (minigpt4.cli.caption) and minigpt4.inference: batched greedy captions equal Chat.answer's,
per-row stopping, resume (whole images only, real paths, settings checked), unreadable and damaged images,
file names that are not UTF-8, input forms, errors before the model loads."""

from __future__ import annotations

import io
import json
import os
import pickle
import struct
from pathlib import Path

import pytest
import torch
from PIL import Image

from conftest import cli_error_line
from minigpt4.cli import caption
from minigpt4.common.errors import ConfigError, DatasetError
from minigpt4.conversation.conversation import CONV_VISION, Chat
from minigpt4.conversation.decoding import cut_at_stop
from minigpt4.inference.batch import BatchCaptioner, GenerationSettings, left_pad
from minigpt4.inference.inputs import list_images, open_image, strip_image_message
from minigpt4.inference.records import CaptionRecord, CaptionWriter, read_caption_file

ROOT = Path(__file__).resolve().parents[1]
TINY_CFG = ROOT / "tests" / "fixtures" / "minigpt4_tiny_random_eval.yaml"  # random weights (conftest.TINY_RANDOM_EVAL)
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


def copy_images(image_dir: Path, folder: Path, names) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / f"{name}.jpg").write_bytes((image_dir / f"{name}.jpg").read_bytes())
    return folder


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
        assert Path(record["image"]).is_absolute()
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


def damaged_tiff() -> bytes:
    """A TIFF whose StripOffsets entry claims the FLOAT type: Pillow raises TypeError while decoding."""
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), "red").save(buf, format="TIFF")
    data = bytearray(buf.getvalue())
    ifd = struct.unpack("<I", data[4:8])[0]
    for k in range(struct.unpack("<H", data[ifd: ifd + 2])[0]):
        entry = ifd + 2 + 12 * k
        if struct.unpack("<H", data[entry: entry + 2])[0] == 273:  # StripOffsets
            data[entry + 2: entry + 4] = struct.pack("<H", 11)
    return bytes(data)


def test_open_image_refuses_huge_non_and_damaged_images(image_dir, tmp_path):
    assert open_image(image_dir / "coffee.jpg").mode == "RGB"
    with pytest.raises(DatasetError, match="too large"):
        open_image(image_dir / "coffee.jpg", max_pixels=100)
    fake = tmp_path / "fake.png"
    fake.write_text("hello")
    with pytest.raises(DatasetError, match="fake.png: not a readable image") as err:
        open_image(fake)
    assert str(tmp_path) not in str(err.value)  # no server paths in messages shown to users
    qoi = tmp_path / "qoi.jpg"  # a 14-byte QOI header: Pillow's decoder raises IndexError
    qoi.write_bytes(b"qoif" + struct.pack(">II", 4, 4) + bytes([3, 0]))
    tiff = tmp_path / "strip.tif"
    tiff.write_bytes(damaged_tiff())
    for path in (qoi, tiff):
        with pytest.raises(DatasetError, match=f"{path.name}: not a readable image"):
            open_image(path)


@pytest.mark.slow
def test_resume_unreadable_damaged_and_undecodable_names(image_dir, tmp_path):
    folder = copy_images(image_dir, tmp_path / "imgs", SKIMAGE_NAMES[:2])
    (folder / "broken.jpg").write_text("this is not a JPEG")
    (folder / "qoi.jpg").write_bytes(b"qoif" + struct.pack(">II", 4, 4) + bytes([3, 0]))
    (folder / "strip.tif").write_bytes(damaged_tiff())
    odd_name = os.fsdecode(b"caf\xe9-" + SKIMAGE_NAMES[2].encode() + b".jpg")  # not UTF-8: a surrogate escape
    (folder / odd_name).write_bytes((image_dir / f"{SKIMAGE_NAMES[2]}.jpg").read_bytes())
    out = tmp_path / "out" / "captions.jsonl"
    args = ["--cfg-path", str(TINY_CFG), "--images", str(folder), "--out", str(out), "--max-new-tokens", "4",
            "--device", "cpu", "--quiet", "--prompt", "Tell a joke."]
    assert caption.main(args) == 0
    records = read_jsonl(out)  # the file is UTF-8 throughout
    errors = {r["image_id"]: r["error"] for r in records if "error" in r}
    assert len(records) == 6 and set(errors) == {"broken", "qoi", "strip"}
    assert all("not a readable image" in e for e in errors.values())
    assert all(r["prompt"] == "Tell a joke." for r in records if "error" not in r)
    odd = [r for r in records if r["image_id"].startswith("caf")]
    assert len(odd) == 1 and os.fsencode(odd[0]["image"]) == os.fsencode(str(folder / odd_name))  # lossless

    # Nothing new to do (the odd name matched too): the file is unchanged.
    before = out.read_bytes()
    assert caption.main(args) == 0
    assert out.read_bytes() == before

    # An interrupted write left half a line; a new image appears: only the new image is captioned and
    # the torn line is gone, so every line is a record again.
    with out.open("a") as fh:
        fh.write('{"image": "half')
    copy_images(image_dir, folder, SKIMAGE_NAMES[3:4])
    assert caption.main(args) == 0
    lines = out.read_bytes().splitlines(keepends=True)
    assert b"".join(lines[:-1]) == before
    new = json.loads(lines[-1])
    assert new["image_id"] == SKIMAGE_NAMES[3] and new["caption_index"] == 0
    assert read_caption_file(out).torn is None


@pytest.mark.slow
def test_resume_redoes_an_image_cut_short(image_dir, tmp_path):
    """Three captions per image; the file holds two of one image's three lines (a kill between two
    writes of the old code): on resume that image is not done, its two lines are dropped, it gets three."""
    folder = copy_images(image_dir, tmp_path / "imgs", SKIMAGE_NAMES[:2])
    out = tmp_path / "captions.jsonl"
    args = ["--cfg-path", str(TINY_CFG), "--images", str(folder), "--out", str(out), "--max-new-tokens", "3",
            "--device", "cpu", "--quiet", "--do-sample", "--num-captions", "3"]
    assert caption.main(args) == 0
    lines = out.read_text(encoding="utf-8").splitlines(keepends=True)
    assert len(lines) == 6
    cut = [line for line in lines if json.loads(line)["image_id"] != SKIMAGE_NAMES[1]]
    cut += [line for line in lines if json.loads(line)["image_id"] == SKIMAGE_NAMES[1]][:2]
    out.write_text("".join(cut), encoding="utf-8")
    assert caption.main(args) == 0
    records = read_jsonl(out)
    assert len(records) == 6
    by_image = {}
    for record in records:
        by_image.setdefault(record["image_id"], []).append(record["caption_index"])
    assert by_image == {SKIMAGE_NAMES[0]: [0, 1, 2], SKIMAGE_NAMES[1]: [0, 1, 2]}
    assert out.read_text(encoding="utf-8").startswith("".join(lines[:3]))  # the whole image was kept as it was


def test_each_image_is_one_write(tmp_path):
    writes = []

    class Recorder:
        def __init__(self, inner):
            self.inner = inner

        def write(self, data):
            writes.append(bytes(data))
            return self.inner.write(data)

        def __getattr__(self, name):
            return getattr(self.inner, name)

    path = tmp_path / "c.jsonl"
    records = [CaptionRecord("/x/a.jpg", "a", prompt="p", caption=f"c{k}", caption_index=k) for k in range(3)]
    with CaptionWriter(path) as writer:
        writer._file = Recorder(writer._file)
        writer.write_image(records)
    assert len(writes) == 1 and writes[0].count(b"\n") == 3
    assert [r.caption for r in read_caption_file(path).records] == ["c0", "c1", "c2"]


@pytest.mark.slow
def test_resume_keys_on_real_path_and_checks_settings(image_dir, tmp_path, monkeypatch, capsys):
    folder = copy_images(image_dir, tmp_path / "imgs", SKIMAGE_NAMES[:2])
    (tmp_path / "link").symlink_to(folder, target_is_directory=True)
    out = tmp_path / "captions.jsonl"
    common = ["--cfg-path", str(TINY_CFG), "--out", str(out), "--max-new-tokens", "3", "--device", "cpu", "--quiet"]
    assert caption.main(["--images", str(folder), *common]) == 0
    before = out.read_bytes()
    monkeypatch.chdir(tmp_path)
    assert caption.main(["--images", "imgs", *common]) == 0  # relative this time
    assert caption.main(["--images", "link/*.jpg", *common]) == 0  # through a link
    assert out.read_bytes() == before

    message = cli_error_line(caption.cli, ["--images", "imgs", *common, "--prompt", "Say something else."], capsys)
    assert "other settings" in message and "prompt" in message and "--force-append" in message
    message = cli_error_line(caption.cli, ["--images", "imgs", *common, "--do-sample", "--num-captions", "2"], capsys)
    assert "num_captions (1 there, 2 now)" in message and "do_sample" in message
    assert out.read_bytes() == before

    assert caption.main(["--images", "imgs", *common, "--prompt", "Say something else.", "--force-append"]) == 0
    records = read_jsonl(out)
    assert len(records) == 4 and out.read_bytes().startswith(before)
    assert sorted(r["prompt"] for r in records)[:2] == ["Could you write a funny caption of this image for me?"] * 2


def test_symlink_loops_list_each_image_once(image_dir, tmp_path):
    folder = copy_images(image_dir, tmp_path / "imgs", SKIMAGE_NAMES[:2])
    (folder / "sub").mkdir()
    (folder / "sub" / "loop").symlink_to(folder, target_is_directory=True)
    (folder / "again.jpg").symlink_to(folder / f"{SKIMAGE_NAMES[0]}.jpg")
    found = list_images(str(folder / "**" / "*.jpg"))  # without the dedupe: each image 41 times over the loop
    assert sorted(os.path.realpath(p) for p in found) == sorted(str(folder / f"{n}.jpg") for n in SKIMAGE_NAMES[:2])
    assert [p.name for p in found] == ["again.jpg", f"{SKIMAGE_NAMES[1]}.jpg"]  # the first name in sorted order


def test_output_checked_before_the_model_loads(image_dir, tmp_path, monkeypatch, capsys):
    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(caption, "build_for_inference", no_model)
    monkeypatch.setattr(caption, "load_config", no_model)
    common = ["--cfg-path", str(TINY_CFG), "--images", str(image_dir), "--device", "cpu", "--quiet"]
    assert "is a folder" in cli_error_line(caption.cli, [*common, "--out", str(tmp_path)], capsys)
    (tmp_path / "file").write_text("x")
    assert "cannot be written" in cli_error_line(caption.cli, [*common, "--out", str(tmp_path / "file" / "c.jsonl")], capsys)
    assert "--batch-size must be at least 1" in cli_error_line(caption.cli, [*common, "--out", "x.jsonl", "--batch-size", "0"], capsys)
    assert "not key=value" in cli_error_line(caption.cli, [*common, "--out", "x.jsonl", "--options", "model.ckpt"], capsys)
    assert "need sampling" in cli_error_line(caption.cli, [*common, "--out", "x.jsonl", "--num-captions", "2"], capsys)
    # No CUDA here, or no 100th GPU: either way a clean error naming the flag.
    assert "--device" in cli_error_line(caption.cli, [*common[:4], "--device", "cuda:99", "--out", str(tmp_path / "c.jsonl")], capsys)
    assert "matches no files" in cli_error_line(caption.cli, [*common[:2], "--images", str(tmp_path / "*.png"), *common[4:],
                                            "--out", str(tmp_path / "c.jsonl")], capsys)


@pytest.mark.slow
def test_malicious_checkpoint_is_refused_cleanly(image_dir, tmp_path, capsys):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    evil = tmp_path / "evil.pth"
    evil.write_bytes(pickle.dumps({"model": Payload()}, protocol=2))
    message = cli_error_line(caption.cli, ["--cfg-path", str(TINY_CFG), "--images", str(image_dir), "--out", str(tmp_path / "c.jsonl"),
                         "--device", "cpu", "--quiet", "--options", f"model.ckpt={evil}"], capsys)
    assert "evil.pth" in message and "weights_only=False" not in message
    assert not marker.exists()


def test_input_forms(image_dir, tmp_path):
    listing = tmp_path / "list.txt"
    listing.write_text(f"# two images\n{image_dir / 'coffee.jpg'}\n\n{image_dir / 'rocket.jpg'}\n")
    assert [p.name for p in list_images(str(listing))] == ["coffee.jpg", "rocket.jpg"]
    assert [p.name for p in list_images(str(image_dir / "c*.jpg"))] == ["camera.jpg", "chelsea.jpg", "coffee.jpg"]
    assert len(list_images(str(image_dir))) == len(SKIMAGE_NAMES)
    with pytest.raises(DatasetError, match="matches no files"):
        list_images(str(tmp_path / "*.png"))
    with pytest.raises(DatasetError, match="not a folder"):
        list_images(str(tmp_path / "missing"))
    assert strip_image_message("<Img><ImageHere></Img> Tell a joke.") == "Tell a joke."
    prompts = list(PROMPTS)
    chosen = caption.prompts_for("abc", prompts, all_prompts=False, seed=1)
    assert chosen == caption.prompts_for("abc", prompts, all_prompts=False, seed=1) and chosen[0] in prompts
    with pytest.raises(ConfigError):
        caption.parse_args(["--cfg-path", "x", "--images", "y", "--out", "z", "--batch-size", "0"])


def test_several_greedy_captions_are_refused(tiny_model, vis_processor, image_dir):
    captioner = BatchCaptioner(tiny_model, vis_processor, "cpu")
    with pytest.raises(ConfigError, match="need sampling"):
        captioner.generate([Image.open(image_dir / "coffee.jpg")], "Hi", GenerationSettings(), num_captions=2)
    sampled = captioner.generate([Image.open(image_dir / "coffee.jpg")], "Hi",
                                 GenerationSettings(do_sample=True, max_new_tokens=3), num_captions=2)
    assert len(sampled) == 1 and len(sampled[0]) == 2
