"""Shared by the tests of the stage-2 research options (LoRA, PC loss, validation): a small prepared-HIC
folder, the tiny training runs, a fixed batch and greedy captions."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from PIL import Image

from conftest import ROOT

from minigpt4.cli import train
from minigpt4.humour.scenario import write_scenario

TINY_LORA = ROOT / "train_configs" / "minigpt4_tiny_lora.yaml"
TINY_PC = ROOT / "train_configs" / "minigpt4_tiny_pc.yaml"


def small_hic(folder: Path, val_images: int = 3, captions_per_val_image: int = 2) -> Path:
    """The humour scenario's prepared-HIC folder (36 train images), its val split cut down for speed."""
    write_scenario(folder)
    val = json.loads((folder / "val.json").read_text())
    val["images"] = [{**image, "captions": image["captions"][:captions_per_val_image]}
                     for image in val["images"][:val_images]]
    (folder / "val.json").write_text(json.dumps(val))
    return folder


def run_tiny(cfg_path: Path, out: Path, data: Path, *options: str) -> Path:
    """One tiny training job on ``data``; returns its job folder."""
    return Path(train.main(["--cfg-path", str(cfg_path), "--options", f"run.output_dir={out}",
                            f"datasets.oxford_hic.build_info.storage={data}", "run.log_freq=2", *options]))


def trained_tensors(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def train_batch(data: Path, n: int = 8) -> dict:
    """The first ``n`` training images and captions of a prepared folder, through the eval processor."""
    from minigpt4.processors import Blip2ImageEvalProcessor

    anns = json.loads((data / "filter_cap.json").read_text())["annotations"][:n]
    proc = Blip2ImageEvalProcessor(224)
    images = [proc(Image.open(data / "image" / f"{a['image_id']}.jpg").convert("RGB")) for a in anns]
    return {"image": torch.stack(images), "text_input": [a["caption"] for a in anns]}


def fixed_prompt_loss(model, batch: dict) -> float:
    """The caption cross-entropy of ``batch`` with the first training prompt (no random draw)."""
    with torch.no_grad():
        inputs = model.build_training_inputs(batch, prompt=model.prompt_list[0])
        return model.llama_model(**inputs).loss.item()


def greedy_ids(model, data: Path, n: int = 2) -> list[list[int]]:
    """Greedy caption token ids of the first ``n`` val images."""
    from minigpt4.inference.batch import BatchCaptioner, GenerationSettings
    from minigpt4.processors import Blip2ImageEvalProcessor

    ids = [image["image_id"] for image in json.loads((data / "val.json").read_text())["images"][:n]]
    captioner = BatchCaptioner(model, Blip2ImageEvalProcessor(224), "cpu")
    results = captioner.generate([str(data / "image" / f"{i}.jpg") for i in ids], "Tell a joke about it.",
                                 GenerationSettings(max_new_tokens=12))
    return [caps[0].token_ids for caps in results]
