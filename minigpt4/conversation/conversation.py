"""The Vicuna v0 conversation template and ``Chat``, the original demo's inference loop.

``CONV_VISION`` renders, after an image and a question ``Q``::

    Give the following image: <Img>ImageContent</Img>. You will be able to see the image once I
    provide it to you. Please answer my questions.###Human: <Img><ImageHere></Img> Q###Assistant:
"""

from __future__ import annotations

import dataclasses
import logging
from enum import Enum, auto
from pathlib import Path
from typing import Any, List, Optional

import torch
from PIL import Image
from transformers import StoppingCriteria, StoppingCriteriaList

logger = logging.getLogger(__name__)

IMAGE_PLACEHOLDER = "<ImageHere>"
# How Vicuna's (LLaMA-1) SentencePiece vocabulary writes "###": alone ("▁###") or glued ("##", "#").
VICUNA_STOP_WORDS_IDS = [[835], [2277, 29937]]


class SeparatorStyle(Enum):
    SINGLE = auto()
    TWO = auto()


@dataclasses.dataclass
class Conversation:
    system: str
    roles: List[str]
    messages: List[List[str]]
    offset: int
    sep_style: SeparatorStyle = SeparatorStyle.SINGLE
    sep: str = "###"
    sep2: Optional[str] = None
    skip_next: bool = False
    conv_id: Any = None

    def get_prompt(self) -> str:
        if self.sep_style == SeparatorStyle.SINGLE:
            seps = [self.sep, self.sep]
        elif self.sep_style == SeparatorStyle.TWO:
            seps = [self.sep, self.sep2]
        else:
            raise ValueError(f"Invalid style: {self.sep_style}")
        ret = self.system + seps[0]
        for i, (role, message) in enumerate(self.messages):
            ret += f"{role}: {message}{seps[i % 2]}" if message else f"{role}:"
        return ret

    def append_message(self, role: str, message: Optional[str]) -> None:
        self.messages.append([role, message])

    def to_gradio_chatbot(self):
        pairs = []
        for i, (_, msg) in enumerate(self.messages[self.offset:]):
            if i % 2 == 0:
                pairs.append([msg, None])
            else:
                pairs[-1][-1] = msg
        return pairs

    def copy(self) -> "Conversation":
        return Conversation(
            system=self.system, roles=self.roles, messages=[[x, y] for x, y in self.messages], offset=self.offset,
            sep_style=self.sep_style, sep=self.sep, sep2=self.sep2, conv_id=self.conv_id,
        )

    def dict(self) -> dict:
        return {"system": self.system, "roles": self.roles, "messages": self.messages, "offset": self.offset,
                "sep": self.sep, "sep2": self.sep2, "conv_id": self.conv_id}


CONV_VISION = Conversation(
    system="Give the following image: <Img>ImageContent</Img>. "
    "You will be able to see the image once I provide it to you. Please answer my questions.",
    roles=("Human", "Assistant"),
    messages=[],
    offset=2,
    sep_style=SeparatorStyle.SINGLE,
    sep="###",
)


class StoppingCriteriaSub(StoppingCriteria):
    """Stop when the generated ids end with one of ``stops``.

    ``per_row=False`` is the original: only batch row 0 is checked and its answer applies to every
    row. ``per_row=True`` checks each row (batched captioning)."""

    def __init__(self, stops=(), encounters=1, per_row: bool = False):
        super().__init__()
        self.stops = [torch.as_tensor(s) for s in stops]
        self.per_row = per_row

    def _row_done(self, row: torch.Tensor) -> bool:
        for stop in self.stops:
            n = len(stop)
            if row.shape[0] >= n and torch.equal(row[-n:], stop.to(row.device)):
                return True
        return False

    def __call__(self, input_ids: torch.LongTensor, scores=None, **kwargs) -> torch.BoolTensor:
        if self.per_row:
            done = [self._row_done(row) for row in input_ids]
        else:
            done = [self._row_done(input_ids[0])] * input_ids.shape[0]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


def stop_words_ids_for(tokenizer) -> list[list[int]]:
    """The ids of "###" for ``tokenizer``, alone and glued to preceding text (Vicuna: 835; 2277 29937)."""
    alone = tokenizer("###", add_special_tokens=False).input_ids
    glued = tokenizer("a###", add_special_tokens=False).input_ids
    prefix = tokenizer("a", add_special_tokens=False).input_ids
    variants = [alone]
    if glued[: len(prefix)] == prefix and glued[len(prefix):] != alone:
        variants.append(glued[len(prefix):])
    return variants


def clean_answer(text: str) -> str:
    """The original's clean-up: cut at the first "###", keep what follows the last "Assistant:"."""
    return text.split("###")[0].split("Assistant:")[-1].strip()


def strip_leading_special(ids: torch.Tensor) -> torch.Tensor:
    """Drop a leading <unk> (0), then a leading <s> (1), as the original does with its outputs."""
    if len(ids) and ids[0] == 0:
        ids = ids[1:]
    if len(ids) and ids[0] == 1:
        ids = ids[1:]
    return ids


def generation_kwargs(max_new_tokens, num_beams, min_length, top_p, repetition_penalty, length_penalty,
                      temperature, do_sample) -> dict:
    """``generate`` arguments that give the original's (transformers 4.28) decoding on today's library.

    4.28 seeded generation from embeddings with one BOS id that counted towards ``min_length``, so
    ``min_length`` becomes ``min_new_tokens = min_length - 1``; its default ``top_k=50`` is explicit."""
    kwargs = dict(max_new_tokens=max_new_tokens, num_beams=num_beams, min_new_tokens=max(0, min_length - 1),
                  repetition_penalty=repetition_penalty, length_penalty=length_penalty, do_sample=do_sample)
    if do_sample:
        kwargs.update(top_p=top_p, top_k=50, temperature=temperature)
    return kwargs


class Chat:
    """Upload an image, ask, answer: the original demo's logic, usable from Python.

    ``device`` is where images and embeddings go (``"cpu"`` or ``"cuda:N"``)."""

    def __init__(self, model, vis_processor, device="cuda:0", stop_words_ids=None):
        self.device = torch.device(device)
        self.model = model
        self.vis_processor = vis_processor
        if stop_words_ids is None:
            stop_words_ids = stop_words_ids_for(model.llama_tokenizer)
        self.stop_words_ids = [list(s) for s in stop_words_ids]
        stops = [torch.tensor(ids, device=self.device) for ids in self.stop_words_ids]
        self.stopping_criteria = StoppingCriteriaList([StoppingCriteriaSub(stops=stops)])

    def ask(self, text: str, conv: Conversation) -> None:
        if not isinstance(text, str) or not text.strip():
            raise ValueError("The message is empty: type a question or an instruction.")
        if conv.messages and conv.messages[-1][0] == conv.roles[0] and conv.messages[-1][1].endswith("</Img>"):
            conv.messages[-1][1] = " ".join([conv.messages[-1][1], text])
        else:
            conv.append_message(conv.roles[0], text)

    def prepare_image(self, image) -> torch.Tensor:
        """A path, PIL image or tensor -> a (1, 3, H, W) tensor on the chat device. Tensors are taken
        as already processed, as the original."""
        if isinstance(image, (str, Path)):
            try:
                with Image.open(image) as img:
                    image = img.convert("RGB")
            except (OSError, ValueError) as err:
                raise ValueError(f"Could not read {str(image)!r} as an image ({err}).") from err
        if isinstance(image, Image.Image):
            image = self.vis_processor(image.convert("RGB")).unsqueeze(0)
        elif isinstance(image, torch.Tensor):
            if image.dim() == 3:
                image = image.unsqueeze(0)
        else:
            raise TypeError(f"upload_img takes a file path, a PIL image or a tensor; got {type(image).__name__}.")
        return image.to(self.device)

    def upload_img(self, image, conv: Conversation, img_list: list) -> str:
        image = self.prepare_image(image)
        with torch.no_grad():
            image_emb, _ = self.model.encode_img(image)
        img_list.append(image_emb)
        conv.append_message(conv.roles[0], "<Img><ImageHere></Img>")
        return "Received."

    def get_context_emb(self, conv: Conversation, img_list: list) -> torch.Tensor:
        """(1, L, D): the prompt's text segments embedded, with the image embeddings between them.
        Only the first segment gets BOS."""
        prompt = conv.get_prompt()
        segments = prompt.split(IMAGE_PLACEHOLDER)
        if len(segments) != len(img_list) + 1:
            raise ValueError("Unmatched numbers of image placeholders and images.")
        tok = self.model.llama_tokenizer
        seg_embs = [
            self.model.embed_tokens(
                tok(seg, return_tensors="pt", add_special_tokens=(i == 0)).input_ids.to(self.device)
            )
            for i, seg in enumerate(segments)
        ]
        mixed = [seg_embs[0]]
        for img, seg in zip(img_list, seg_embs[1:]):
            mixed += [img.to(seg.dtype), seg]
        return torch.cat(mixed, dim=1)

    def context_for_generation(self, conv, img_list, max_new_tokens, max_length) -> torch.Tensor:
        conv.append_message(conv.roles[1], None)
        embs = self.get_context_emb(conv, img_list)
        current_max_len = embs.shape[1] + max_new_tokens
        if current_max_len > max_length:
            logger.warning(
                "The number of tokens in current conversation exceeds the max length. "
                "The model will not see the contexts outside the range."
            )
        begin_idx = max(0, current_max_len - max_length)
        return embs[:, begin_idx:]

    def decode(self, output_ids: torch.Tensor) -> str:
        return clean_answer(self.model.decode_ids(output_ids))

    def answer(self, conv, img_list, max_new_tokens=300, num_beams=1, min_length=1, top_p=0.9,
               repetition_penalty=1.0, length_penalty=1, temperature=1.0, max_length=2000, do_sample=True,
               streamer=None):
        """Generate the assistant's reply; returns ``(text, token_ids as a numpy array)``.
        ``do_sample=True`` as the original; ``False`` is greedy (or beam search)."""
        embs = self.context_for_generation(conv, img_list, max_new_tokens, max_length)
        kwargs = generation_kwargs(max_new_tokens, num_beams, min_length, top_p, repetition_penalty,
                                   length_penalty, temperature, do_sample)
        with torch.no_grad(), self.model.maybe_autocast():
            outputs = self.model.llama_model.generate(
                inputs_embeds=embs,
                attention_mask=torch.ones(embs.shape[:2], dtype=torch.long, device=embs.device),
                stopping_criteria=self.stopping_criteria,
                pad_token_id=self.model.llama_tokenizer.pad_token_id,
                streamer=streamer,
                **kwargs,
            )
        output_token = strip_leading_special(outputs[0])
        output_text = self.decode(output_token)
        conv.messages[-1][1] = output_text
        return output_text, output_token.cpu().numpy()
