"""Batched captioning: many images, one ``generate`` call, the same answers as ``Chat.answer``.

Each sample's context is built exactly as ``Chat`` builds it for ``CONV_VISION`` + image + question
(``<Img><ImageHere></Img> <prompt>###Assistant:``), the contexts are left-padded into one batch (pad
embedding = embedding of the pad id, attention mask 0 on pads; transformers derives the position ids
from the mask, so a padded row sees the positions 0..L-1 an unpadded one sees), and generation stops
per row on ``###`` or EOS. The original's stop check only looked at batch row 0.

Also here: ``load_for_inference`` (config -> model, vision processor, identifiers), shared by
``demo.py``, ``caption.py`` and the benchmark.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from pathlib import Path
from typing import Sequence

import torch
from PIL import Image
from transformers import StoppingCriteriaList

from minigpt4.conversation.conversation import (
    CONV_VISION,
    Chat,
    StoppingCriteriaSub,
    generation_kwargs,
    strip_leading_special,
)

logger = logging.getLogger(__name__)

IMAGE_MESSAGE = "<Img><ImageHere></Img>"
# Larger images are refused before decoding (a 8000x8000 photo is 64 MP); PIL's own bomb check is at ~179 MP.
MAX_IMAGE_PIXELS = 64_000_000


# -- model loading ----------------------------------------------------------------------------------
def default_device(gpu_id: int = 0) -> str:
    return f"cuda:{gpu_id}" if torch.cuda.is_available() else "cpu"


def load_for_inference(cfg_path: str, options: Sequence[str] | None = None, device: str | None = None,
                       gpu_id: int | None = None):
    """Build the model and the eval image processor from a config, placed on ``device``.

    On CPU, ``model.low_resource`` (8-bit, CUDA only) is switched off with a notice; on CUDA the 8-bit
    LLM goes to ``device``'s index (``model.device_8bit``), as the original demo's ``--gpu-id``.
    Returns ``(model, vis_processor, info)`` where ``info`` names the config, weights and device."""
    import minigpt4  # noqa: F401  (registers models and processors)
    from minigpt4.common.config import Config
    from minigpt4.common.registry import registry

    device = torch.device(device or default_device(gpu_id or 0))
    options = list(options or [])
    if device.type == "cuda":
        index = device.index if device.index is not None else (gpu_id or 0)
        options.append(f"model.device_8bit={index}")
    cfg = Config(argparse.Namespace(cfg_path=str(cfg_path), options=options or None))
    if device.type != "cuda" and cfg.model_cfg.get("low_resource", False):
        logger.warning("model.low_resource (8-bit LLM) needs CUDA; running on %s in float32 instead.", device)
        cfg.model_cfg.low_resource = False
    model_cfg = cfg.model_cfg
    model = registry.get_model_class(model_cfg.arch).from_config(model_cfg, device=str(device))
    model.eval()
    vis_cfg = cfg.inference_vis_processor_cfg
    vis_processor = registry.get_processor_class(vis_cfg.name).from_config(vis_cfg)
    info = {
        "cfg_path": str(cfg_path),
        "arch": str(model_cfg.arch),
        "model_type": str(model_cfg.get("model_type", "")),
        "llama_model": str(model_cfg.get("llama_model", "")),
        "ckpt": str(model_cfg.get("ckpt", "")),
        "low_resource": bool(model_cfg.get("low_resource", False)),
        "device": str(device),
    }
    return model, vis_processor, info


def open_image(path, max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """Open ``path`` as an RGB image; ``ValueError`` with a readable reason if it is not one or too large."""
    try:
        with Image.open(path) as img:
            width, height = img.size
            if width * height > max_pixels:
                raise ValueError(f"{Path(str(path)).name}: the image is too large ({width}x{height} pixels; "
                                 f"the limit is {max_pixels / 1e6:.0f} megapixels).")
            return img.convert("RGB")
    except ValueError:
        raise
    except Image.DecompressionBombError as err:
        raise ValueError(f"{Path(str(path)).name}: the image is too large ({err}).") from err
    except (OSError, SyntaxError) as err:
        # PIL's message names the full path (a server's temporary folder in the demo): keep the file name only.
        reason = str(err).replace(str(path), Path(str(path)).name)
        if isinstance(err, Image.UnidentifiedImageError):
            reason = "not an image format that can be read"
        raise ValueError(f"{Path(str(path)).name}: not a readable image ({reason}).") from err


# -- generation settings ----------------------------------------------------------------------------
@dataclasses.dataclass
class GenerationSettings:
    """The ``Chat.answer`` decoding arguments; ``do_sample=False`` (greedy / beam search) by default."""

    max_new_tokens: int = 60
    num_beams: int = 1
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 0.9
    min_length: int = 1
    repetition_penalty: float = 1.0
    length_penalty: float = 1.0
    max_length: int = 2000

    def generate_kwargs(self) -> dict:
        return generation_kwargs(self.max_new_tokens, self.num_beams, self.min_length, self.top_p,
                                 self.repetition_penalty, self.length_penalty, self.temperature, self.do_sample)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class Caption:
    text: str
    token_ids: list[int]


def cut_at_stop(ids: Sequence[int], stops: Sequence[Sequence[int]], eos_ids: set[int]) -> list[int]:
    """``ids`` up to and including the first stop sequence or EOS (what a one-row generation returns)."""
    ids = list(ids)
    for t, token in enumerate(ids):
        if token in eos_ids:
            return ids[: t + 1]
        for stop in stops:
            n = len(stop)
            if t + 1 >= n and ids[t + 1 - n: t + 1] == list(stop):
                return ids[: t + 1]
    return ids


def left_pad(embeds: Sequence[torch.Tensor], pad_embed: torch.Tensor):
    """A list of (L_i, D) -> ``inputs_embeds`` (B, L, D) padded on the left with ``pad_embed`` (D,),
    and ``attention_mask`` (B, L) with 0 on the pads."""
    length = max(e.shape[0] for e in embeds)
    batch, dim = len(embeds), embeds[0].shape[1]
    inputs = pad_embed.to(embeds[0].dtype).expand(batch, length, dim).clone()
    mask = torch.zeros(batch, length, dtype=torch.long, device=embeds[0].device)
    for row, emb in enumerate(embeds):
        inputs[row, length - emb.shape[0]:] = emb
        mask[row, length - emb.shape[0]:] = 1
    return inputs, mask


class BatchCaptioner:
    """Caption a batch of images in one ``generate`` call.

    ``stop_words_ids`` defaults to the ``###`` ids of the model's tokenizer (as ``Chat``)."""

    def __init__(self, model, vis_processor, device, stop_words_ids=None):
        self.chat = Chat(model, vis_processor, device=device, stop_words_ids=stop_words_ids)
        self.model = model
        self.device = self.chat.device
        stops = [torch.tensor(s, device=self.device) for s in self.chat.stop_words_ids]
        self.stopping_criteria = StoppingCriteriaList([StoppingCriteriaSub(stops=stops, per_row=True)])
        eos = model.llama_model.generation_config.eos_token_id
        if eos is None:
            eos = model.llama_tokenizer.eos_token_id
        self.eos_ids = set(eos) if isinstance(eos, (list, tuple)) else {int(eos)}

    @property
    def pad_token_id(self) -> int:
        return self.model.llama_tokenizer.pad_token_id

    def encode_images(self, images: Sequence) -> torch.Tensor:
        """Paths, PIL images or processed (3, H, W) tensors -> image embeddings (B, Q, D)."""
        pixels = torch.cat([self.chat.prepare_image(img) for img in images], dim=0)
        with torch.no_grad():
            image_embeds, _ = self.model.encode_img(pixels)
        return image_embeds

    def context_embeds(self, image_embeds: torch.Tensor, prompts: Sequence[str],
                       settings: GenerationSettings) -> list[torch.Tensor]:
        """Per sample, the (L_i, D) context ``Chat.answer`` would build for image + prompt."""
        contexts = []
        for image_embed, prompt in zip(image_embeds, prompts):
            conv = CONV_VISION.copy()
            conv.append_message(conv.roles[0], IMAGE_MESSAGE)
            self.chat.ask(prompt, conv)
            emb = self.chat.context_for_generation(conv, [image_embed[None]], settings.max_new_tokens,
                                                   settings.max_length)
            contexts.append(emb[0])
        return contexts

    def generate(self, images: Sequence, prompts: str | Sequence[str], settings: GenerationSettings | None = None,
                 num_captions: int = 1) -> list[list[Caption]]:
        """Caption ``images`` (one prompt for all, or one per image); ``num_captions`` per image
        (needs sampling or beam search). Returns, per image, a list of ``Caption(text, token_ids)``."""
        settings = settings or GenerationSettings()
        if isinstance(prompts, str):
            prompts = [prompts] * len(images)
        if len(prompts) != len(images):
            raise ValueError(f"{len(images)} images but {len(prompts)} prompts.")
        if not images:
            return []
        if num_captions > 1 and not settings.do_sample and num_captions > settings.num_beams:
            raise ValueError("Several captions per image need sampling (--do-sample) or at least as many beams "
                             f"(--num-beams >= {num_captions}); greedy decoding gives one caption.")
        with torch.no_grad():
            image_embeds = self.encode_images(images)
            contexts = self.context_embeds(image_embeds, prompts, settings)
            pad_embed = self.model.embed_tokens(torch.tensor([self.pad_token_id], device=self.device))[0]
            inputs_embeds, attention_mask = left_pad(contexts, pad_embed)
            with self.model.maybe_autocast():
                outputs = self.model.llama_model.generate(
                    inputs_embeds=inputs_embeds,
                    attention_mask=attention_mask,
                    stopping_criteria=self.stopping_criteria,
                    pad_token_id=self.pad_token_id,
                    num_return_sequences=num_captions,
                    **settings.generate_kwargs(),
                )
        results = []
        for row, output in enumerate(outputs.tolist()):
            ids = cut_at_stop(output, self.chat.stop_words_ids, self.eos_ids)
            ids = strip_leading_special(torch.tensor(ids, dtype=torch.long)).tolist()
            caption = Caption(text=self.chat.decode(torch.tensor(ids, dtype=torch.long)), token_ids=ids)
            if row % num_captions == 0:
                results.append([])
            results[-1].append(caption)
        return results
