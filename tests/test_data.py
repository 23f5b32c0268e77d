"""Dataset builders: the cc_sbu_align / oxford_hic folders, the stage-1 webdataset shards, and clear
errors for bad input."""

from __future__ import annotations

import io
import json
import pickle
import random
import struct
import tarfile
from collections import Counter

import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image
from torch.utils.data import DataLoader

import minigpt4  # noqa: F401
from minigpt4.common.errors import ConfigError, DatasetError
from minigpt4.common.registry import registry
from minigpt4.datasets.datasets.dataloader_utils import (
    InfiniteLoader, MultiIterLoader, ResumableDistributedSampler, StreamLoader,
)
from conftest import ROOT, make_config

EXAMPLES = ROOT / "examples"
VIS = {"train": {"name": "blip2_image_eval", "image_size": 32}}


def builder(name: str, storage, **extra):
    node = OmegaConf.create({"data_type": "images", "build_info": {"storage": str(storage)},
                             "vis_processor": VIS, "text_processor": {"train": {"name": "blip_caption"}}, **extra})
    return registry.get_builder_class(name)(node)


def write_folder(root, annotations, images=("a", "b")):
    (root / "image").mkdir(parents=True)
    for name in images:
        Image.new("RGB", (40, 30), (200, 10, 10)).save(root / "image" / f"{name}.jpg")
    (root / "filter_cap.json").write_text(json.dumps({"annotations": annotations}))
    return root


def test_cc_sbu_align_examples():
    ds = builder("cc_sbu_align", EXAMPLES).build_datasets()["train"]
    anns = json.loads((EXAMPLES / "filter_cap.json").read_text())["annotations"]
    assert len(ds) == len(anns) == 12
    sample = ds[3]
    assert sample["image"].shape == (3, 32, 32)
    assert sample["text_input"] == anns[3]["caption"]  # raw: case and punctuation kept
    assert sample["image_id"] == 3
    batch = ds.collater([ds[0], ds[1]])
    assert batch["image"].shape == (2, 3, 32, 32) and batch["image_id"].tolist() == [0, 1]
    assert isinstance(batch["text_input"], list)


def test_relative_storage_resolves_against_project_root(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    assert len(builder("cc_sbu_align", "examples/").build_datasets()["train"]) == 12


def test_seeded_samples_are_reproducible():
    node = {"train": {"name": "blip2_image_train", "image_size": 32}}
    ds = builder("cc_sbu_align", EXAMPLES, vis_processor=node).build_datasets()["train"]
    torch.manual_seed(1)
    a = ds[(2, 123)]["image"]
    torch.manual_seed(2)
    state = torch.get_rng_state()
    assert torch.equal(ds[(2, 123)]["image"], a)
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is left alone
    assert not torch.equal(ds[(2, 124)]["image"], a)


@pytest.mark.parametrize("case,match", [
    ("missing", "does not exist"),
    ("placeholder", "placeholder"),
    ("empty", "empty 'annotations'"),
    ("no_caption", r"annotations\[1\] has no 'caption'"),
    ("not_string", r"annotations\[0\]\['caption'\] must be a string"),
    ("no_image", "b.jpg"),
    ("bad_json", "not valid JSON"),
])
def test_bad_folders_fail_at_build_time(tmp_path, case, match):
    root = tmp_path / "data"
    good = [{"image_id": "a", "caption": "x"}, {"image_id": "b", "caption": "y"}]
    storage = root
    if case == "missing":
        storage = tmp_path / "nowhere"
    elif case == "placeholder":
        storage = "/path/to/oxford_hic/"
    elif case == "empty":
        write_folder(root, [])
    elif case == "no_caption":
        write_folder(root, [good[0], {"image_id": "b", "text": "y"}])
    elif case == "not_string":
        write_folder(root, [{"image_id": "a", "caption": ["x"]}, good[1]])
    elif case == "no_image":
        write_folder(root, good, images=("a",))
    elif case == "bad_json":
        write_folder(root, good)
        (root / "filter_cap.json").write_text("{oops")
    with pytest.raises((DatasetError, ConfigError), match=match) as info:
        builder("cc_sbu_align", storage).build_datasets()
    if case in ("empty", "no_caption", "not_string", "bad_json"):
        assert "filter_cap.json" in str(info.value)


def test_unknown_processor_names_the_key():
    b = builder("cc_sbu_align", EXAMPLES, vis_processor={"train": {"name": "blip2_image_trian"}})
    with pytest.raises(ConfigError, match=r"datasets\.cc_sbu_align\.vis_processor\.train\.name.*blip2_image_train"):
        b.build_datasets()


def test_unknown_builder_name_in_config(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: {arch: mini_gpt4, model_type: tiny}\ndatasets: {oxford_hci: {}}\nrun: {task: image_text_pretrain}\n")
    with pytest.raises(ConfigError, match=r"oxford_hci.*oxford_hic"):
        make_config(cfg, check_paths=False)


def test_corrupt_image_is_skipped_with_count(tmp_path, caplog):
    root = write_folder(tmp_path / "data", [{"image_id": "a", "caption": "x"}, {"image_id": "b", "caption": "y"}])
    (root / "image" / "a.jpg").write_bytes(b"not a jpeg at all")
    ds = builder("cc_sbu_align", root).build_datasets()["train"]
    with caplog.at_level("WARNING"):
        sample = ds[0]
    assert sample["text_input"] == "y"  # the next readable sample
    assert ds.num_skipped == 1 and "1 skipped" in caplog.text
    ds[(0, 5)]
    assert ds.num_skipped == 2


def test_oxford_hic_with_eval_splits(tmp_path):
    root = write_folder(tmp_path / "hic", [{"image_id": "a", "caption": "Funny!", "funny_score": 3.5}], images=("a", "b"))
    (root / "val.json").write_text(json.dumps({"split": "val", "images": [
        {"image_id": "b", "captions": [{"caption": "one", "funny_score": 2.0}, {"caption": "two", "funny_score": 1.0}]}]}))
    splits = builder("oxford_hic", root).build_datasets()
    assert sorted(splits) == ["train", "val"]
    assert splits["train"][0]["text_input"] == "Funny!"
    item = splits["val"][0]
    assert item["captions"] == ["one", "two"] and item["funny_scores"] == [2.0, 1.0] and item["image"].shape == (3, 32, 32)
    (root / "test.json").write_text(json.dumps({"split": "test", "images": [{"image_id": "zzz", "captions": []}]}))
    with pytest.raises(DatasetError, match="zzz.jpg"):
        builder("oxford_hic", root).build_datasets()


def test_resumable_sampler_and_infinite_loader():
    ds = builder("cc_sbu_align", EXAMPLES).build_datasets()["train"]
    def loader():
        sampler = ResumableDistributedSampler(ds, num_replicas=1, rank=0, shuffle=True, seed=7)
        return InfiniteLoader(DataLoader(ds, batch_size=5, sampler=sampler, collate_fn=ds.collater, drop_last=True), sampler)
    straight = loader()
    ids = [next(straight)["image_id"].tolist() for _ in range(7)]  # 2 batches per pass: crosses 3 passes
    assert straight.state_dict() == {"data_pass": 3, "consumed": 1}
    assert ids[0] != ids[2]  # reshuffled each pass
    resumed = loader()
    for _ in range(3):
        next(resumed)
    state = resumed.state_dict()
    resumed = loader()
    resumed.load_state_dict(state)
    assert [next(resumed)["image_id"].tolist() for _ in range(4)] == ids[3:]
    # two ranks together see what one process sees
    halves = [ResumableDistributedSampler(ds, num_replicas=2, rank=r, shuffle=True, seed=7) for r in range(2)]
    whole = ResumableDistributedSampler(ds, num_replicas=1, rank=0, shuffle=True, seed=7)
    assert sorted(list(halves[0]) + list(halves[1])) == sorted(whole)
    assert [i for i, _ in whole][:4] == sorted([i for i, _ in halves[0]][:2] + [i for i, _ in halves[1]][:2],
                                               key=[i for i, _ in whole].index)


# -- stage 1: webdataset shards ---------------------------------------------------------------------
def jpeg_bytes(color) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), color).save(buf, format="JPEG")
    return buf.getvalue()


def write_shards(folder, prefix, n_shards=2, per_shard=4, corrupt=None):
    folder.mkdir(parents=True, exist_ok=True)
    for s in range(n_shards):
        with tarfile.open(folder / f"{s:05d}.tar", "w") as tar:
            for k in range(per_shard):
                key = f"{s:05d}{k:04d}"
                jpg = b"\xff\xd8 corrupt" if (s, k) == corrupt else jpeg_bytes((10 * k, 50, 100))
                files = {"jpg": jpg, "json": json.dumps({"caption": f"{prefix} Sample #{k}!", "key": key}).encode(),
                         "txt": f"{prefix} {k}".encode()}
                for ext, data in files.items():
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    return str(folder / ("{00000..%05d}.tar" % (n_shards - 1)))


def test_stage1_shards_and_ratio_mixing(tmp_path, caplog):
    laion = write_shards(tmp_path / "laion", "Laion", corrupt=(0, 1))
    cc = write_shards(tmp_path / "cc", "CC")
    cfg = tmp_path / "stage1.yaml"
    vis = {"train": {"name": "blip2_image_train", "image_size": 16}}
    text = {"train": {"name": "blip_caption"}}
    cfg.write_text(OmegaConf.to_yaml(OmegaConf.create({
        "model": {"arch": "mini_gpt4", "model_type": "tiny"},
        "datasets": {"laion": {"build_info": {"storage": laion}, "vis_processor": vis, "text_processor": text, "sample_ratio": 3},
                     "cc_sbu": {"build_info": {"storage": cc}, "vis_processor": vis, "text_processor": text, "sample_ratio": 1}},
        "run": {"task": "image_text_pretrain"}})))
    config = make_config(cfg, check_paths=False)
    datasets = minigpt4.tasks.setup_task(config).build_datasets(config)
    members = [datasets["laion"]["train"], datasets["cc_sbu"]["train"]]
    assert [m.sample_ratio for m in members] == [3, 1] and members[0].name == "laion"
    loader = MultiIterLoader([StreamLoader(DataLoader(m, batch_size=2, num_workers=0)) for m in members],
                             [m.sample_ratio for m in members])
    counts = Counter()
    random.seed(0)  # MultiIterLoader draws the dataset of each batch from Python's RNG
    with caplog.at_level("WARNING"):
        for _ in range(400):
            batch = next(loader)
            assert batch["image"].shape == (2, 3, 16, 16)
            sources = {t.split()[0] for t in batch["text_input"]}
            assert len(sources) == 1  # one whole batch from one dataset
            counts[sources.pop()] += 1
    assert "skipping a bad sample" in caplog.text and "skipped so far" in caplog.text  # the corrupt jpg
    assert set(counts) == {"laion", "cc"}  # captions went through blip_caption (lower case)
    assert counts["laion"] / 400 == pytest.approx(0.75, abs=0.07)
    assert batch["text_input"][0].startswith(("laion sample", "cc sample"))


def test_stage1_missing_shards(tmp_path):
    pattern = write_shards(tmp_path / "laion", "L", n_shards=1).replace("00000}", "00003}")
    with pytest.raises(DatasetError, match=r"3 of 4 shard\(s\) missing"):
        builder("laion", pattern).build_datasets()


# -- hostile or broken input --------------------------------------------------------------------------
class _Touch:
    """Unpickling this creates a file: a stand-in for code run by a malicious shard member."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def add_member(tar, name, data: bytes):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def qoi_header() -> bytes:
    """The 14-byte header of a 4x4 QOI image and no pixels: Pillow raises IndexError decoding it."""
    return b"qoif" + struct.pack(">II", 4, 4) + bytes([3, 0])


def corrupt_tiff() -> bytes:
    """A valid 8x8 TIFF whose StripOffsets entry claims the FLOAT type: Pillow raises TypeError."""
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(buf, format="TIFF")
    data = bytearray(buf.getvalue())
    (ifd,) = struct.unpack("<I", data[4:8])
    for k in range(struct.unpack("<H", data[ifd:ifd + 2])[0]):
        entry = ifd + 2 + 12 * k
        if struct.unpack("<H", data[entry:entry + 2])[0] == 273:  # StripOffsets
            data[entry + 2:entry + 4] = struct.pack("<H", 11)
    return bytes(data)


def test_shard_members_other_than_image_and_caption_are_never_unpickled(tmp_path):
    marker = tmp_path / "pwned"
    folder = tmp_path / "shards"
    folder.mkdir()
    with tarfile.open(folder / "00000.tar", "w") as tar:
        for k in range(3):
            key = f"{k:06d}"
            add_member(tar, f"{key}.jpg", jpeg_bytes((200, 10 * k, 10)))
            add_member(tar, f"{key}.json", json.dumps({"caption": f"Picture {k}"}).encode())
            for ext in ("pyd", "pickle", "pth"):  # webdataset's default handlers would unpickle these
                add_member(tar, f"{key}.{ext}", pickle.dumps(_Touch(marker), protocol=2))
    ds = builder("cc_sbu", str(folder / "{00000..00000}.tar")).build_datasets()["train"]
    samples = [s for _, s in zip(range(6), ds)]
    assert not marker.exists()
    assert {s["text_input"] for s in samples} <= {"picture 0", "picture 1", "picture 2"}
    assert samples[0]["image"].shape == (3, 32, 32) and set(samples[0]) == {"image", "text_input"}


def test_unreadable_images_of_any_kind_are_skipped_and_counted(tmp_path, caplog):
    anns = [{"image_id": i, "caption": i} for i in ("qoi", "tiff", "good")]
    root = write_folder(tmp_path / "data", anns, images=("qoi", "tiff", "good"))
    (root / "image" / "qoi.jpg").write_bytes(qoi_header())
    (root / "image" / "tiff.jpg").write_bytes(corrupt_tiff())
    ds = builder("cc_sbu_align", root).build_datasets()["train"]
    with caplog.at_level("WARNING"):
        assert ds[0]["text_input"] == "good" and ds[(1, 3)]["text_input"] == "good"
    assert ds.num_skipped == 3 and "IndexError" in caplog.text and "TypeError" in caplog.text

    folder = tmp_path / "shards"
    folder.mkdir()
    with tarfile.open(folder / "00000.tar", "w") as tar:
        for key, image in (("000000", qoi_header()), ("000001", corrupt_tiff()), ("000002", jpeg_bytes((1, 2, 3)))):
            add_member(tar, f"{key}.jpg", image)
            add_member(tar, f"{key}.json", json.dumps({"caption": key}).encode())
    stream = builder("cc_sbu", str(folder / "{00000..00000}.tar")).build_datasets()["train"]
    assert {s["text_input"] for _, s in zip(range(4), stream)} == {"000002"}


def test_image_ids_that_leave_the_image_folder_are_refused(tmp_path):
    root = write_folder(tmp_path / "data", [{"image_id": "a", "caption": "x"}, {"image_id": "../b", "caption": "y"}],
                        images=("a",))
    Image.new("RGB", (8, 8)).save(root / "b.jpg")  # the file it names exists, outside image/
    with pytest.raises(DatasetError, match=r"filter_cap\.json: annotations\[1\]\['image_id'\] '\.\./b'.*refused"):
        builder("cc_sbu_align", root).build_datasets()


@pytest.mark.parametrize("section,match", [
    ("{vis_procesor: {train: {name: blip2_image_eval}}}", r"datasets\.cc_sbu_align\.vis_procesor.*user\.yaml.*'vis_processor'"),
    ("{build_info: {storag: examples/}}", r"datasets\.cc_sbu_align\.build_info\.storag.*user\.yaml.*'storage'"),
    ("{vis_processor: {trian: {name: blip2_image_eval}}}", r"vis_processor\.trian.*'train'"),
    ("{sample_ratio: 0}", r"datasets\.cc_sbu_align\.sample_ratio.*positive"),
])
def test_unknown_dataset_keys_name_key_file_and_suggestion(tmp_path, section, match):
    cfg = tmp_path / "user.yaml"
    cfg.write_text("model: {arch: mini_gpt4, model_type: tiny}\n"
                   f"datasets: {{cc_sbu_align: {section}}}\nrun: {{task: image_text_pretrain}}\n")
    with pytest.raises(ConfigError, match=match):  # at start-up, when the config is read
        make_config(cfg, check_paths=False)
