"""What ``Chat`` and ``BatchCaptioner`` share to turn a conversation into an answer: the context
embeddings, the one stop-sequence matcher, the generation arguments and the answer clean-up."""

from __future__ import annotations

import logging
import queue
import threading
from typing import Iterator, Sequence

import torch
from transformers import StoppingCriteria
from transformers.generation.streamers import BaseStreamer

from minigpt4.constants import IMAGE_PLACEHOLDER
from minigpt4.conversation.template import Conversation

logger = logging.getLogger(__name__)


# -- context ----------------------------------------------------------------------------------------
def prompt_embeds(model, conv: Conversation, img_list: Sequence[torch.Tensor]) -> torch.Tensor:
    """(1, L, D): the prompt's text segments around each image placeholder embedded (BOS on the
    first only), with the image embeddings (1, Q, D) between them."""
    segments = conv.get_prompt().split(IMAGE_PLACEHOLDER)
    if len(segments) != len(img_list) + 1:
        raise ValueError("Unmatched numbers of image placeholders and images.")
    tok = model.llama_tokenizer
    device = model.device
    seg_embs = [
        model.embed_tokens(tok(seg, return_tensors="pt", add_special_tokens=(i == 0)).input_ids.to(device))
        for i, seg in enumerate(segments)
    ]
    mixed = [seg_embs[0]]
    for img, seg in zip(img_list, seg_embs[1:]):
        mixed += [img.to(device=seg.device, dtype=seg.dtype), seg]
    return torch.cat(mixed, dim=1)


def context_embeds(model, conv: Conversation, img_list: Sequence[torch.Tensor], max_new_tokens: int,
                   max_length: int) -> torch.Tensor:
    """The context to generate from (the one builder for ``Chat`` and ``BatchCaptioner``): open the
    Assistant turn, embed the prompt (:func:`prompt_embeds`), and left-truncate it so that
    L + ``max_new_tokens`` fits in ``max_length``, as the original."""
    conv.append_message(conv.roles[1], None)
    embs = prompt_embeds(model, conv, img_list)
    current_max_len = embs.shape[1] + max_new_tokens
    if current_max_len > max_length:
        logger.warning("The number of tokens in current conversation exceeds the max length. "
                       "The model will not see the contexts outside the range.")
    return embs[:, max(0, current_max_len - max_length):]


# -- stopping ---------------------------------------------------------------------------------------
def ends_with_stop(ids: Sequence[int], stops: Sequence[Sequence[int]]) -> bool:
    """Whether ``ids`` ends with one of the ``stops`` sequences (the one stop matcher)."""
    return any(len(ids) >= len(stop) and list(ids[len(ids) - len(stop):]) == list(stop) for stop in stops if stop)


def cut_at_stop(ids: Sequence[int], stops: Sequence[Sequence[int]], eos_ids: set[int]) -> list[int]:
    """``ids`` up to and including the first stop sequence or EOS (what a one-row generation returns)."""
    ids = list(ids)
    for t, token in enumerate(ids):
        if token in eos_ids or ends_with_stop(ids[: t + 1], stops):
            return ids[: t + 1]
    return ids


class StoppingCriteriaSub(StoppingCriteria):
    """Stop when the generated ids end with one of ``stops``.

    ``per_row=False`` is the original: only batch row 0 is checked and its answer applies to every
    row. ``per_row=True`` checks each row (batched captioning)."""

    def __init__(self, stops=(), encounters=1, per_row: bool = False):
        super().__init__()
        self.stops = [[int(i) for i in torch.as_tensor(s).reshape(-1).tolist()] for s in stops]
        self.longest = max((len(s) for s in self.stops), default=0)
        self.per_row = per_row

    def __call__(self, input_ids: torch.LongTensor, scores=None, **kwargs) -> torch.BoolTensor:
        rows = input_ids if self.per_row else input_ids[:1]
        tails = rows[:, -self.longest:].tolist() if self.longest else [[]] * rows.shape[0]  # one copy per step
        done = [ends_with_stop(tail, self.stops) for tail in tails]
        if not self.per_row:
            done *= input_ids.shape[0]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


class CancelCriteria(StoppingCriteria):
    """Stop every row once ``event`` is set (a request that was cancelled or whose client left)."""

    def __init__(self, event: threading.Event):
        super().__init__()
        self.event = event

    def __call__(self, input_ids: torch.LongTensor, scores=None, **kwargs) -> torch.BoolTensor:
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


def stop_words_ids_for(tokenizer) -> list[list[int]]:
    """The ids of "###" for ``tokenizer``, alone and glued to preceding text (Vicuna: 835; 2277 29937)."""
    alone = tokenizer("###", add_special_tokens=False).input_ids
    glued = tokenizer("a###", add_special_tokens=False).input_ids
    prefix = tokenizer("a", add_special_tokens=False).input_ids
    variants = [alone]
    if glued[: len(prefix)] == prefix and glued[len(prefix):] != alone:
        variants.append(glued[len(prefix):])
    return variants


def eos_ids_of(model) -> set[int]:
    eos = model.llama_model.generation_config.eos_token_id
    if eos is None:
        eos = model.llama_tokenizer.eos_token_id
    return set(eos) if isinstance(eos, (list, tuple)) else {int(eos)}


# -- arguments and answers --------------------------------------------------------------------------
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


class TokenQueue(BaseStreamer):
    """A streamer that hands each new token id to the reading thread; iterating ends with the generation.

    ``poll`` (seconds): iteration yields ``None`` when no token came for that long, so the reader
    can notice a cancelled request while a long step (or a beam search, which cannot stream) runs."""

    def __init__(self, poll: float | None = None):
        self.queue: queue.Queue = queue.Queue()
        self.poll = poll
        self._ended = object()

    def put(self, value):
        # The first call carries the prompt ids, empty when generating from embeddings.
        for token in value.reshape(-1).tolist():
            self.queue.put(token)

    def end(self):
        self.queue.put(self._ended)

    def __iter__(self) -> Iterator[int | None]:
        while True:
            try:
                item = self.queue.get(timeout=self.poll)
            except queue.Empty:
                yield None
                continue
            if item is self._ended:
                return
            yield item
