"""Conversation template, stopping, clean-up and Chat behaviour (REFERENCE section 7)."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import FIXTURES


def test_conv_vision_prompt_over_two_turns():
    from minigpt4.conversation.conversation import CONV_VISION

    conv = CONV_VISION.copy()
    conv.append_message("Human", "<Img><ImageHere></Img> Q")
    conv.append_message("Assistant", "A")
    conv.append_message("Human", "Q2")
    conv.append_message("Assistant", None)
    assert conv.get_prompt() == (
        "Give the following image: <Img>ImageContent</Img>. You will be able to see the image once I provide it "
        "to you. Please answer my questions.###Human: <Img><ImageHere></Img> Q###Assistant: A###Human: Q2###Assistant:"
    )
    assert CONV_VISION.messages == []  # copy() does not share message lists


def test_stopping_criteria_row_zero_and_per_row():
    from minigpt4.conversation.conversation import StoppingCriteriaSub

    ids = torch.tensor([[5, 7, 8], [5, 9, 9]])
    stops = [torch.tensor([7, 8])]
    assert StoppingCriteriaSub(stops).__call__(ids, None).tolist() == [True, True]  # row 0 decides, as the original
    assert StoppingCriteriaSub(stops, per_row=True)(ids, None).tolist() == [True, False]
    assert StoppingCriteriaSub(stops)(ids.flip(0), None).tolist() == [False, False]


def test_clean_answer_and_leading_special_ids():
    from minigpt4.conversation.conversation import clean_answer, strip_leading_special

    assert clean_answer(" Assistant: a cat in a hat ###Human: more") == "a cat in a hat"
    assert clean_answer("x Assistant: y Assistant: z") == "z"
    assert strip_leading_special(torch.tensor([0, 1, 5])).tolist() == [5]
    assert strip_leading_special(torch.tensor([1, 0, 5])).tolist() == [0, 5]


def test_default_stop_words_are_the_hash_variants():
    from transformers import AutoTokenizer

    from minigpt4.conversation.conversation import stop_words_ids_for

    tok = AutoTokenizer.from_pretrained(str(FIXTURES / "golden" / "llama"), legacy=True)
    stops = stop_words_ids_for(tok)
    assert stops[0] == tok("###", add_special_tokens=False).input_ids == [270]  # "▁###"
    for variant in stops:
        assert tok.decode(variant).strip() == "###"


def test_chat_flow_on_tiny_model(tiny_model, caplog):
    from minigpt4.conversation.conversation import CONV_VISION, Chat
    from minigpt4.processors.blip_processors import Blip2ImageEvalProcessor

    chat = Chat(tiny_model, Blip2ImageEvalProcessor(image_size=224), device="cpu")
    conv, img_list = CONV_VISION.copy(), []
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (60, 80, 3), dtype=np.uint8))
    assert chat.upload_img(image, conv, img_list) == "Received."
    assert img_list[0].shape == (1, 8, 64)
    with pytest.raises(ValueError, match="empty"):
        chat.ask("   ", conv)
    chat.ask("Describe this image in a funny way.", conv)
    assert conv.messages == [["Human", "<Img><ImageHere></Img> Describe this image in a funny way."]]
    text, ids = chat.answer(conv, img_list, max_new_tokens=5, do_sample=False)
    assert conv.messages[-1] == ["Assistant", text] and 1 <= len(ids) <= 5
    # a second question is a new Human turn; the context is truncated from the left past max_length
    chat.ask("And another one?", conv)
    caplog.set_level(logging.WARNING)
    full = chat.get_context_emb(conv, img_list).shape[1]
    conv_copy = conv.copy()
    embs = chat.context_for_generation(conv_copy, img_list, max_new_tokens=4, max_length=full)
    assert "exceeds the max length" in caplog.text
    assert embs.shape[1] == full - 4  # room is left for the 4 new tokens
    torch.manual_seed(0)
    sampled, _ = chat.answer(conv, img_list, max_new_tokens=4, do_sample=True, temperature=0.7)
    assert isinstance(sampled, str)


def test_chat_rejects_unreadable_images(tiny_model, tmp_path):
    from minigpt4.conversation.conversation import CONV_VISION, Chat
    from minigpt4.processors.blip_processors import Blip2ImageEvalProcessor

    chat = Chat(tiny_model, Blip2ImageEvalProcessor(image_size=224), device="cpu")
    bad = tmp_path / "not_an_image.jpg"
    bad.write_text("hello")
    with pytest.raises(ValueError, match="not_an_image.jpg"):
        chat.upload_img(str(bad), CONV_VISION.copy(), [])


def _counting_forward(monkeypatch, model) -> list:
    """Count the LLM's forward passes (one per generated token after the prefill)."""
    calls, forward = [], model.llama_model.forward

    def counted(*args, **kwargs):
        calls.append(1)
        return forward(*args, **kwargs)

    monkeypatch.setattr(model.llama_model, "forward", counted)
    return calls


def _started_chat(tiny_model, question="Describe this image in a funny way.", stop_words_ids=None):
    from minigpt4.conversation.conversation import CONV_VISION, Chat
    from minigpt4.processors.blip_processors import Blip2ImageEvalProcessor

    chat = Chat(tiny_model, Blip2ImageEvalProcessor(image_size=224), device="cpu", stop_words_ids=stop_words_ids)
    conv, img_list = CONV_VISION.copy(), []
    chat.upload_img(Image.new("RGB", (32, 32), "orange"), conv, img_list)
    before = [list(m) for m in conv.messages]
    chat.ask(question, conv)
    return chat, conv, img_list, before


def test_stream_ends_with_the_answer(tiny_model):
    chat, conv, img_list, _ = _started_chat(tiny_model)
    expected, _ = chat.answer(conv.copy(), img_list, max_new_tokens=12, do_sample=False)
    texts = list(chat.stream(conv, img_list, max_new_tokens=12, do_sample=False))
    assert texts[-1] == expected and conv.messages[-1] == ["Assistant", expected]
    assert len(texts) > 2 and all(expected.startswith(t.strip()) or not t for t in texts[:-1])


def test_closing_a_stream_stops_generation_and_takes_the_question_back(tiny_model, monkeypatch):
    import threading
    import time

    chat, conv, img_list, before = _started_chat(tiny_model, stop_words_ids=[[-1]])  # no stop sequence
    calls = _counting_forward(monkeypatch, tiny_model)
    long = dict(max_new_tokens=300, min_length=301, do_sample=False)  # 300 tokens unless stopped
    stream = chat.stream(conv, img_list, **long)
    next(stream)
    stream.close()
    stopped_at = len(calls)
    assert not [t for t in threading.enumerate() if t.name == "minigpt4-answer"]  # the worker was joined
    time.sleep(0.5)
    assert len(calls) == stopped_at < 100  # stopped early, and nothing ran after the close
    assert conv.messages == before  # the question was taken back; nothing written afterwards

    # A cancel event stops it the same way.
    chat.ask("Another one?", conv)
    cancel = threading.Event()
    stream = chat.stream(conv, img_list, cancel=cancel, **long)
    next(stream)
    cancel.set()
    assert list(stream) == []  # nothing more is yielded: no answer
    assert conv.messages == before


def test_placeholder_in_a_question_and_failed_answers(tiny_model, monkeypatch):
    chat, conv, img_list, before = _started_chat(tiny_model, "What is <ImageHere> doing here?")
    assert conv.messages[-1][1].endswith("What is ImageHere doing here?")
    text, _ = chat.answer(conv, img_list, max_new_tokens=3, do_sample=False)  # no "Unmatched numbers" error
    assert conv.messages[-1] == ["Assistant", text]
    answered = [list(m) for m in conv.messages]

    def broken(*args, **kwargs):
        raise RuntimeError("out of memory (simulated)")

    monkeypatch.setattr(tiny_model.llama_model, "generate", broken)
    for attempt in ("answer", "stream"):
        chat.ask("A second question?", conv)
        with pytest.raises(RuntimeError, match="simulated"):
            if attempt == "answer":
                chat.answer(conv, img_list, max_new_tokens=3)
            else:
                list(chat.stream(conv, img_list, max_new_tokens=3))
        assert conv.messages == answered  # rolled back: the next question is one Human turn
