"""Compiled decoding (``model.compile`` / ``--compile``, models/compiled.py) on the tiny model on CPU:
greedy ids identical to the eager path for ``Chat`` and for a left-padded batch, prompts of other
lengths reuse the compiled step, and ``--compile`` without a compiler is one error line naming it."""

from __future__ import annotations

import pytest
import torch
import torch._dynamo.utils

from conftest import TINY_RANDOM_EVAL, make_config
from minigpt4.cli import caption
from minigpt4.common.errors import ConfigError
from minigpt4.common.registry import registry
from minigpt4.conversation.conversation import CONV_VISION, Chat
from minigpt4.inference.batch import BatchCaptioner, GenerationSettings
from minigpt4.models import compiled

SETTINGS = GenerationSettings(max_new_tokens=10)
NEVER = [[-1]]  # no stop sequence: every answer is max_new_tokens long, so every step is compared
PROMPTS = ("Describe it.", "Could you write a funny caption of this image for me, please?", "Why is it funny?")
OTHER_PROMPTS = ("Is it funny?", "What is in the picture?", "Write a joke about this image for a birthday card.")


@pytest.fixture(scope="module")
def compiled_model(tiny_dir):
    cfg = make_config(TINY_RANDOM_EVAL, ["model.compile=true"])
    model = registry.get_model_class("mini_gpt4").from_config(cfg.model_cfg, device="cpu").eval()
    yield model
    torch._dynamo.reset()


def pictures(n):
    generator = torch.Generator().manual_seed(3)
    return [torch.randn(3, 224, 224, generator=generator) for _ in range(n)]


def graphs() -> int:
    return torch._dynamo.utils.counters["stats"]["unique_graphs"]


def test_cache_length_is_bucketed():
    bucket = compiled.CACHE_BUCKET
    assert compiled.cache_length(10, 20) == bucket
    assert compiled.cache_length(bucket - 20, 20) == bucket
    assert compiled.cache_length(bucket - 19, 20) == 2 * bucket


def test_eager_default_passes_no_cache_arguments(tiny_model):
    assert compiled.static_cache_kwargs(tiny_model, 100, 60) == {}


def test_batched_greedy_ids_identical_and_other_prompt_lengths_reuse_the_step(tiny_model, compiled_model):
    eager = BatchCaptioner(tiny_model, None, stop_words_ids=NEVER)
    fast = BatchCaptioner(compiled_model, None, stop_words_ids=NEVER)
    assert fast.warm_up(PROMPTS[0], SETTINGS, batch_size=3) > 0
    images = pictures(3)
    for prompts in (PROMPTS, OTHER_PROMPTS):  # rows of different lengths: left padding on every call
        before = graphs()
        want = [c[0].token_ids for c in eager.generate(images, list(prompts), SETTINGS)]
        got = [c[0].token_ids for c in fast.generate(images, list(prompts), SETTINGS)]
        assert got == want and all(len(ids) == SETTINGS.max_new_tokens for ids in want)
        assert graphs() == before  # compiled once, in the warm-up


def test_chat_greedy_answer_identical(tiny_model, compiled_model):
    answers = []
    for model in (tiny_model, compiled_model):
        chat = Chat(model, None, device="cpu", stop_words_ids=NEVER)
        chat.warm_up(max_new_tokens=12)
        conv, img_list = CONV_VISION.copy(), []
        chat.upload_img(pictures(1)[0][None], conv, img_list)
        chat.ask("What would a cat say about this?", conv)
        answers.append(chat.answer(conv, img_list, max_new_tokens=12, do_sample=False)[1].tolist())
    assert answers[0] == answers[1] and len(answers[0]) == 12


def test_compile_without_a_compiler_is_an_error_naming_the_flag(monkeypatch):
    monkeypatch.setattr(compiled, "cpp_compiler", lambda: None)
    with pytest.raises(ConfigError, match=r"--compile \(model\.compile\).*no C\+\+ compiler"):
        compiled.check_compile(True, "cpu")
    compiled.check_compile(False, "cpu")  # not asked for: nothing to check


def test_caption_compile_without_a_compiler_is_one_error_line(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(compiled, "cpp_compiler", lambda: None)
    image = tmp_path / "a.png"
    from PIL import Image

    Image.new("RGB", (32, 32)).save(image)
    with pytest.raises(SystemExit) as stop:
        caption.cli(["--cfg-path", str(TINY_RANDOM_EVAL), "--images", str(image), "--out", str(tmp_path / "o.jsonl"),
                     "--device", "cpu", "--compile", "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and err[-1].startswith("error: --compile") and "compiler" in err[-1]
    assert not any("Traceback" in line for line in err) and not (tmp_path / "o.jsonl").exists()
