"""Batched captioning: many images, one ``generate`` call, the same answers as ``Chat.answer``.

Each sample's context is built by the function ``Chat`` uses (:func:`context_embeds`, for
``CONV_VISION`` + image + question), the contexts are left-padded into one batch (pad embedding =
embedding of the pad id, attention mask 0 on pads; transformers derives the position ids from the
mask, so a padded row sees the positions 0..L-1 an unpadded one sees), and generation stops per row
on ``###`` or EOS. The original's stop check only looked at batch row 0.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Sequence

import torch
from transformers import StoppingCriteriaList

from minigpt4.common.errors import ConfigError
from minigpt4.conversation.decoding import (
    StoppingCriteriaSub,
    clean_answer,
    context_embeds,
    cut_at_stop,
    eos_ids_of,
    generation_kwargs,
    stop_words_ids_for,
    strip_leading_special,
)
from minigpt4.conversation.template import CONV_VISION, add_image, add_question
from minigpt4.inference.inputs import image_tensor
from minigpt4.models.compiled import cache_length, static_cache_kwargs


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

    def __init__(self, model, vis_processor, device=None, stop_words_ids=None):
        self.model = model
        self.vis_processor = vis_processor
        self.device = torch.device(device) if device is not None else model.device
        if stop_words_ids is None:
            stop_words_ids = stop_words_ids_for(model.llama_tokenizer)
        self.stop_words_ids = [list(s) for s in stop_words_ids]
        self.stopping_criteria = StoppingCriteriaList([StoppingCriteriaSub(stops=self.stop_words_ids,
                                                                           per_row=True)])
        self.eos_ids = eos_ids_of(model)

    @property
    def pad_token_id(self) -> int:
        return self.model.llama_tokenizer.pad_token_id

    def encode_images(self, images: Sequence) -> torch.Tensor:
        """Paths, PIL images or processed (3, H, W) tensors -> image embeddings (B, Q, D)."""
        pixels = torch.cat([image_tensor(img, self.vis_processor) for img in images], dim=0).to(self.device)
        with torch.no_grad():
            image_embeds, _ = self.model.encode_img(pixels)
        return image_embeds

    def context_embeds(self, image_embeds: torch.Tensor, prompts: Sequence[str],
                       settings: GenerationSettings) -> list[torch.Tensor]:
        """Per sample, the (L_i, D) context ``Chat.answer`` would build for image + prompt."""
        contexts = []
        for image_embed, prompt in zip(image_embeds, prompts):
            conv = CONV_VISION.copy()
            add_image(conv)
            add_question(conv, prompt)
            emb = context_embeds(self.model, conv, [image_embed[None]], settings.max_new_tokens, settings.max_length)
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
        check_num_captions(num_captions, settings)
        with torch.no_grad():
            image_embeds = self.encode_images(images)
            outputs = self._decode(self.context_embeds(image_embeds, prompts, settings), settings, num_captions)
        results = []
        for row, output in enumerate(outputs.tolist()):
            ids = cut_at_stop(output, self.stop_words_ids, self.eos_ids)
            ids = strip_leading_special(torch.tensor(ids, dtype=torch.long))
            caption = Caption(text=clean_answer(self.model.decode_ids(ids)), token_ids=ids.tolist())
            if row % num_captions == 0:
                results.append([])
            results[-1].append(caption)
        return results


    def _decode(self, contexts: list[torch.Tensor], settings: GenerationSettings, num_captions: int,
                cache_tokens: int | None = None) -> torch.Tensor:
        """One ``generate`` over the left-padded contexts; with ``model.compile`` on a static cache whose
        length is bucketed (models/compiled.py), so prompts of other lengths reuse the compiled step."""
        pad_embed = self.model.embed_tokens(torch.tensor([self.pad_token_id], device=self.device))[0]
        inputs_embeds, attention_mask = left_pad(contexts, pad_embed)
        kwargs = static_cache_kwargs(self.model, inputs_embeds.shape[1], settings.max_new_tokens, cache_tokens)
        with self.model.maybe_autocast():
            return self.model.llama_model.generate(
                inputs_embeds=inputs_embeds,
                attention_mask=attention_mask,
                stopping_criteria=self.stopping_criteria,
                pad_token_id=self.pad_token_id,
                num_return_sequences=num_captions,
                **settings.generate_kwargs(),
                **kwargs,
            )

    def warm_up(self, prompt: str, settings: GenerationSettings | None = None, batch_size: int = 1,
                num_captions: int = 1) -> float:
        """With ``model.compile``: compile the decode step now for ``batch_size`` blank images asked
        ``prompt`` (a few tokens, the cache sized for ``settings.max_new_tokens``); returns the seconds
        it took (0 without compile), so that the work after it is timed without the compilation."""
        if not getattr(self.model, "compile_decoding", False):
            return 0.0
        settings = settings or GenerationSettings()
        start = time.perf_counter()
        size = self.model.config.image_size
        cuda = [self.device] if self.device.type == "cuda" else []
        with torch.no_grad(), torch.random.fork_rng(devices=cuda):  # sampled captions stay as without warm-up
            image_embeds, _ = self.model.encode_img(torch.zeros(batch_size, 3, size, size, device=self.device))
            contexts = self.context_embeds(image_embeds, [prompt] * batch_size, settings)
            tokens = min(3, settings.max_new_tokens)
            short = dataclasses.replace(settings, max_new_tokens=tokens, min_length=tokens + 1)
            self._decode(contexts, short, num_captions, cache_length(contexts[0].shape[0], settings.max_new_tokens))
        return time.perf_counter() - start


def check_num_captions(num_captions: int, settings: GenerationSettings) -> None:
    if num_captions > 1 and not settings.do_sample and num_captions > settings.num_beams:
        raise ConfigError("Several captions per image need sampling (--do-sample) or at least as many beams "
                          f"(--num-beams >= {num_captions}); greedy decoding gives one caption.")
