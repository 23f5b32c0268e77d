"""``Chat``, the original demo's inference loop (upload an image, ask, answer), usable from Python,
plus :meth:`Chat.stream` for answers that arrive token by token and can be cancelled.

The conversation template lives in :mod:`minigpt4.conversation.template`, the pieces shared with
batched captioning in :mod:`minigpt4.conversation.decoding`; both are re-exported here.
"""

from __future__ import annotations

import threading
import time
from typing import Iterator

import torch
from transformers import StoppingCriteriaList

from minigpt4.conversation.decoding import (
    CancelCriteria,
    StoppingCriteriaSub,
    TokenQueue,
    clean_answer,
    context_embeds,
    generation_kwargs,
    prompt_embeds,
    stop_words_ids_for,
    strip_leading_special,
)
from minigpt4.conversation.template import (
    CONV_VISION,
    Conversation,
    SeparatorStyle,
    add_image,
    add_question,
    undo_question,
)
from minigpt4.inference.inputs import image_tensor
from minigpt4.models.compiled import cache_length, static_cache_kwargs

__all__ = ["CONV_VISION", "Chat", "Conversation", "SeparatorStyle", "StoppingCriteriaSub", "clean_answer",
           "stop_words_ids_for", "strip_leading_special"]

# Seconds the streaming reader waits for a token before it looks whether the request was cancelled.
POLL_SECONDS = 0.25


class Chat:
    """Upload an image, ask, answer: the original demo's logic.

    ``device`` is where images go; by default the model's device (the original hard-coded ``cuda:0``)."""

    def __init__(self, model, vis_processor, device=None, stop_words_ids=None):
        self.device = torch.device(device) if device is not None else model.device
        self.model = model
        self.vis_processor = vis_processor
        if stop_words_ids is None:
            stop_words_ids = stop_words_ids_for(model.llama_tokenizer)
        self.stop_words_ids = [list(s) for s in stop_words_ids]
        self.stopping_criteria = StoppingCriteriaList([StoppingCriteriaSub(stops=self.stop_words_ids)])

    def ask(self, text: str, conv: Conversation) -> None:
        """Add the question (an image placeholder in ``text`` is made plain text)."""
        add_question(conv, text)

    def prepare_image(self, image) -> torch.Tensor:
        """A path, PIL image or tensor -> a (1, 3, H, W) tensor on the chat device. Tensors are taken
        as already processed, as the original."""
        return image_tensor(image, self.vis_processor).to(self.device)

    def upload_img(self, image, conv: Conversation, img_list: list) -> str:
        image = self.prepare_image(image)
        with torch.no_grad():
            image_emb, _ = self.model.encode_img(image)
        img_list.append(image_emb)
        add_image(conv)
        return "Received."

    def get_context_emb(self, conv: Conversation, img_list: list) -> torch.Tensor:
        """(1, L, D) for the conversation's prompt as it stands."""
        return prompt_embeds(self.model, conv, img_list)

    def context_for_generation(self, conv, img_list, max_new_tokens, max_length) -> torch.Tensor:
        return context_embeds(self.model, conv, img_list, max_new_tokens, max_length)

    def decode(self, output_ids: torch.Tensor) -> str:
        return clean_answer(self.model.decode_ids(output_ids))

    def _generate(self, embs, kwargs: dict, streamer=None, cancel: threading.Event | None = None,
                  cache_tokens: int | None = None):
        criteria = StoppingCriteriaList(list(self.stopping_criteria))
        if cancel is not None:
            criteria.append(CancelCriteria(cancel))
        # model.compile: static KV cache + compiled decode step (models/compiled.py); nothing otherwise
        kwargs = {**kwargs, **static_cache_kwargs(self.model, embs.shape[1], kwargs["max_new_tokens"], cache_tokens)}
        with torch.no_grad(), self.model.maybe_autocast():
            outputs = self.model.llama_model.generate(
                inputs_embeds=embs,
                attention_mask=torch.ones(embs.shape[:2], dtype=torch.long, device=embs.device),
                stopping_criteria=criteria,
                pad_token_id=self.model.llama_tokenizer.pad_token_id,
                streamer=streamer,
                **kwargs,
            )
        return strip_leading_special(outputs[0])

    def warm_up(self, max_new_tokens=300, max_length=2000, num_beams=1) -> float:
        """With ``model.compile``: compile the decode step now, on a blank image and a short question
        (a few tokens, the cache sized for ``max_new_tokens``); returns the seconds it took (0 without)."""
        if not getattr(self.model, "compile_decoding", False):
            return 0.0
        start = time.perf_counter()
        size = self.model.config.image_size
        conv, img_list = CONV_VISION.copy(), []
        self.upload_img(torch.zeros(1, 3, size, size, device=self.device), conv, img_list)
        add_question(conv, "Hello")
        embs = self.context_for_generation(conv, img_list, max_new_tokens, max_length)
        tokens = min(3, max_new_tokens)
        kwargs = generation_kwargs(tokens, num_beams, tokens + 1, 0.9, 1.0, 1.0, 1.0, False)
        self._generate(embs, kwargs, cache_tokens=cache_length(embs.shape[1], max_new_tokens))
        return time.perf_counter() - start

    def answer(self, conv, img_list, max_new_tokens=300, num_beams=1, min_length=1, top_p=0.9,
               repetition_penalty=1.0, length_penalty=1, temperature=1.0, max_length=2000, do_sample=True,
               streamer=None):
        """Generate the assistant's reply; returns ``(text, token_ids as a numpy array)``.
        ``do_sample=True`` as the original; ``False`` is greedy (or beam search). If generation
        fails, the question is taken back (the next one starts a clean turn)."""
        kwargs = generation_kwargs(max_new_tokens, num_beams, min_length, top_p, repetition_penalty,
                                   length_penalty, temperature, do_sample)
        try:
            embs = self.context_for_generation(conv, img_list, max_new_tokens, max_length)
            output_token = self._generate(embs, kwargs, streamer)
        except BaseException:
            undo_question(conv)
            raise
        output_text = self.decode(output_token)
        conv.messages[-1][1] = output_text
        return output_text, output_token.cpu().numpy()

    def stream(self, conv, img_list, cancel: threading.Event | None = None, max_new_tokens=300, num_beams=1,
               min_length=1, top_p=0.9, repetition_penalty=1.0, length_penalty=1, temperature=1.0,
               max_length=2000, do_sample=True) -> Iterator[str]:
        """``answer``, yielding the cleaned text so far as tokens arrive; the last value is ``answer``'s
        text, stored in ``conv`` before it is yielded. Beam search cannot stream: the text so far
        stays empty until the end.

        Closing the iterator early (a cancelled request, a client that left), setting ``cancel`` or a
        failure stops the generation through a stopping criterion, waits for the worker thread and
        takes the question back, so nothing is written into ``conv`` afterwards."""
        kwargs = generation_kwargs(max_new_tokens, num_beams, min_length, top_p, repetition_penalty,
                                   length_penalty, temperature, do_sample)
        cancel = cancel or threading.Event()
        tokens = TokenQueue(poll=POLL_SECONDS)
        result: dict = {}

        def work():
            try:
                result["ids"] = self._generate(embs, kwargs, tokens if num_beams == 1 else None, cancel)
            except BaseException as err:  # noqa: BLE001  (re-raised in the reading thread)
                result["error"] = err
            finally:
                tokens.end()

        thread = threading.Thread(target=work, name="minigpt4-answer", daemon=True)
        finished = False
        try:
            embs = self.context_for_generation(conv, img_list, max_new_tokens, max_length)
            thread.start()
            ids: list[int] = []
            text = ""
            for token in tokens:
                if cancel.is_set():
                    break
                if token is not None:
                    ids.append(token)
                    text = self.decode(strip_leading_special(torch.tensor(ids, dtype=torch.long)))
                yield text
            thread.join()
            if cancel.is_set():
                return
            if "error" in result:
                raise result["error"]
            text = self.decode(result["ids"])
            conv.messages[-1][1] = text
            finished = True
            yield text
        finally:
            if not finished:
                cancel.set()
                if thread.is_alive():
                    thread.join()
                undo_question(conv)
