"""The registered processors, built from config nodes as the builders build them."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

import minigpt4  # noqa: F401
from minigpt4.common.registry import registry
from minigpt4.processors.blip_processors import CLIP_MEAN, CLIP_STD


def build(node: dict):
    node = OmegaConf.create(node)
    return registry.get_processor_class(node.name).from_config(node)


def test_caption_rule():
    proc = build({"name": "blip_caption"})
    assert proc('A "Funny" (cat)!  Sat: here; ~really*  #1.\n') == "a funny cat sat here really 1"
    assert proc("Don't stop, OK? well-known") == "don't stop, ok? well-known"
    proc = build({"name": "blip_caption", "max_words": 3, "prompt": "a picture of "})
    assert proc("One two three four five") == "a picture of one two three"
    with pytest.raises(TypeError, match="string"):
        proc(42)


def test_eval_processor_resizes_without_crop():
    proc = build({"name": "blip2_image_eval", "image_size": 32})
    img = Image.new("RGB", (80, 40), (255, 0, 0))
    out = proc(img)
    assert out.shape == (3, 32, 32)
    expected = torch.tensor([(1 - CLIP_MEAN[0]) / CLIP_STD[0], -CLIP_MEAN[1] / CLIP_STD[1], -CLIP_MEAN[2] / CLIP_STD[2]])
    assert torch.allclose(out.mean(dim=(1, 2)), expected, atol=1e-4)
    assert torch.equal(proc(img), out)  # deterministic


def test_train_processor_random_resized_crop():
    proc = build({"name": "blip2_image_train", "image_size": 24, "min_scale": 0.5, "max_scale": 1.0})
    crop = proc.transform.transforms[0]
    assert crop.scale == (0.5, 1.0) and crop.size == (24, 24)
    assert crop.interpolation.value == "bicubic"
    assert not any("Flip" in type(t).__name__ for t in proc.transform.transforms)
    gradient = Image.fromarray((torch.arange(64).repeat(64, 1) * 4).byte().numpy()).convert("RGB")
    torch.manual_seed(0)
    a = proc(gradient)
    torch.manual_seed(0)
    assert torch.equal(proc(gradient), a)  # randomness comes from torch's RNG only
    assert a.shape == (3, 24, 24)
    assert any(not torch.equal(proc(gradient), a) for _ in range(5))


def test_custom_mean_std():
    proc = build({"name": "blip2_image_eval", "image_size": 8, "mean": [0, 0, 0], "std": [1, 1, 1]})
    out = proc(Image.new("RGB", (8, 8), (255, 255, 255)))
    assert torch.allclose(out, torch.ones(3, 8, 8))


def test_unknown_processor_name_lists_known():
    with pytest.raises(KeyError, match="blip2_image_train"):
        registry.get_processor_class("blip2_image_trian")
