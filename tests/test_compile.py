"""Compiled decoding (``model.compile`` / ``--compile``, models/compiled.py) on the tiny model on CPU:
greedy ids of the compiled step identical to the same static-cache step run eagerly (torch.compile's force_eager stance) in every
precision (fp32, bf16, int8), and in fp32 identical to the default eager path (dynamic cache), for
``Chat`` and for a left-padded batch; prompts of other lengths reuse the compiled step; ``--compile``
without a compiler is one error line naming it. (In bf16/int8 the static cache's padded length changes
the order of the attention kernel's fp32 sums, which can flip a near-tied greedy pick of the random tiny
weights against the dynamic cache: benchmarks/results/bench_model.md reports that share.)"""

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

SETTINGS = GenerationSettings(max_new_tokens=30)  # the first bf16/int8 near tie a rounding slip flips comes after 10+
NEVER = [[-1]]  # no stop sequence: every answer is max_new_tokens long, so every step is compared
PROMPTS = ("Describe it.", "Could you write a funny caption of this image for me, please?", "Why is it funny?")
OTHER_PROMPTS = ("Is it funny?", "What is in the picture?", "Write a joke about this image for a birthday card.")


PRECISIONS = ("fp32", "bf16", "int8")


def build(precision: str, compile: bool):
    cfg = make_config(TINY_RANDOM_EVAL, [f"model.precision={precision}", f"model.compile={str(compile).lower()}"])
    return registry.get_model_class("mini_gpt4").from_config(cfg.model_cfg, device="cpu").eval()


@pytest.fixture(scope="module", params=PRECISIONS)
def pair(request, tiny_dir):
    """(eager, compiled) tiny models in one precision; bf16 and int8 greedy picks of the random tiny
    model are near ties, so a compiled step that rounds differently from eager shows within 30 tokens."""
    yield build(request.param, False), build(request.param, True)
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


def test_cuda_compile_config_is_reduce_overhead_with_exact_casts():
    """On CUDA the options are what inductor's own "reduce-overhead" mode sets, plus eager rounding."""
    import torch._inductor

    options = compiled.compile_config("cuda").to_dict()["options"]
    assert torch._inductor.list_mode_options("reduce-overhead").items() <= options.items()
    assert options["emulate_precision_casts"] is True


def test_eager_default_passes_no_cache_arguments(tiny_model):
    assert compiled.static_cache_kwargs(tiny_model, 100, 60) == {}


def uncompiled(fn):
    """``fn()`` with torch.compile's stance "force_eager" (compiled functions run their Python code): the
    same static-cache decoding, eager."""
    with torch.compiler.set_stance("force_eager"):
        return fn()


def test_batched_greedy_ids_identical_and_other_prompt_lengths_reuse_the_step(pair):
    eager = BatchCaptioner(pair[0], None, stop_words_ids=NEVER)
    fast = BatchCaptioner(pair[1], None, stop_words_ids=NEVER)
    assert fast.warm_up(PROMPTS[0], SETTINGS, batch_size=3) > 0
    images = pictures(3)
    for prompts in (PROMPTS, OTHER_PROMPTS):  # rows of different lengths: left padding on every call
        before = graphs()
        got = [c[0].token_ids for c in fast.generate(images, list(prompts), SETTINGS)]
        assert graphs() == before  # compiled once, in the warm-up
        same_step = [c[0].token_ids for c in uncompiled(lambda: fast.generate(images, list(prompts), SETTINGS))]
        assert got == same_step and all(len(ids) == SETTINGS.max_new_tokens for ids in got)
        if pair[0].precision.llm == torch.float32:  # the default eager path (dynamic cache) too
            assert got == [c[0].token_ids for c in eager.generate(images, list(prompts), SETTINGS)]


def chat_answer(model, compiled: bool = True) -> list[int]:
    chat = Chat(model, None, device="cpu", stop_words_ids=NEVER)
    chat.warm_up(max_new_tokens=30)
    conv, img_list = CONV_VISION.copy(), []
    chat.upload_img(pictures(1)[0][None], conv, img_list)
    chat.ask("What would a cat say about this?", conv)
    answer = lambda: chat.answer(conv, img_list, max_new_tokens=30, do_sample=False)[1].tolist()  # noqa: E731
    return answer() if compiled else uncompiled(answer)


def test_chat_greedy_answer_identical(pair):
    got = chat_answer(pair[1])
    assert len(got) == 30 and got == chat_answer(pair[1], compiled=False)
    if pair[0].precision.llm == torch.float32:
        assert got == chat_answer(pair[0])


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
