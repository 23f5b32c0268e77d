"""The precision policy (models/precision.py) and the attention choice: auto is the original, bf16 stores
the frozen parts in bfloat16 with no per-step casting and stays within 2e-2 of fp32, SDPA matches the
eager math, and the bad-input rules (fp16 on CPU, bf16 without hardware support) of caption.py."""

from __future__ import annotations

import logging

import pytest
import torch

from conftest import TINY_RANDOM_EVAL, make_config
from minigpt4.cli import caption
from minigpt4.common.errors import ConfigError, MiniGPT4Error
from minigpt4.common.registry import registry
from minigpt4.models import precision
from minigpt4.models.precision import resolve_attention, resolve_precision


def build(*options):
    cfg = make_config(TINY_RANDOM_EVAL, list(options))
    return registry.get_model_class("mini_gpt4").from_config(cfg.model_cfg, device="cpu").eval()


@pytest.fixture(scope="module")
def bf16_model(tiny_dir):
    return build("model.precision=bf16")


def images(n=2):
    return torch.randn(n, 3, 224, 224, generator=torch.Generator().manual_seed(0))


SAMPLES = {"image": images(2), "text_input": ["a cat on a mat", "a dog in the rain"]}


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


# -- the policy ------------------------------------------------------------------------------------
def test_auto_is_the_original_on_each_device():
    cpu = resolve_precision("auto", "cpu", "fp16", "fp16")
    assert (cpu.mode, cpu.vit, cpu.llm, cpu.autocast, cpu.stored) == ("fp32", torch.float32, torch.float32, None, None)
    # the original on a GPU: ViT Linear/Conv fp16, LLM fp16, fp16 autocast (no device needed to plan it)
    gpu = resolve_precision("auto", "cuda:0", "fp16", "fp16")
    assert (gpu.mode, gpu.vit, gpu.llm, gpu.autocast, gpu.stored) == ("auto", torch.float16, torch.float16,
                                                                       torch.float16, None)
    assert resolve_precision("auto", "cuda:0", "fp32", "bf16").autocast == torch.bfloat16
    assert resolve_attention("auto", cpu) == precision.AttentionPlan("sdpa", "eager", None)  # golden's kernels
    bf16 = precision.PrecisionPlan("bf16", "bf16", torch.float32, torch.bfloat16, None)
    assert resolve_attention("auto", bf16) == precision.AttentionPlan("sdpa", "sdpa", "sdpa")


def test_fp16_on_cpu_is_an_error_that_suggests_bf16():
    with pytest.raises(ConfigError, match=r"--precision fp16.*CPU.*--precision bf16"):
        resolve_precision("fp16", "cpu")


def test_bf16_without_hardware_support_warns_once_and_runs_fp32(monkeypatch, caplog):
    monkeypatch.setattr(precision, "cpu_supports_bf16", lambda: False)
    monkeypatch.setattr(precision, "_said", set())
    with caplog.at_level(logging.WARNING, logger="minigpt4.models.precision"):
        plans = [resolve_precision("bf16", "cpu") for _ in range(3)]
    assert {(p.mode, p.requested, p.stored) for p in plans} == {("fp32", "bf16", None)}
    warnings = [r for r in caplog.records if "bfloat16" in r.getMessage()]
    assert len(warnings) == 1 and "float32" in warnings[0].getMessage()


def test_cpu_bf16_support_is_read_from_the_cpu_flags(monkeypatch, tmp_path):
    fake = tmp_path / "cpuinfo"
    real_path = precision.Path

    def with_flags(flags):
        fake.write_text(f"processor\t: 0\nflags\t\t: fpu sse2 {flags}\n\n")
        monkeypatch.setattr(precision, "Path", lambda p: fake if p == "/proc/cpuinfo" else real_path(p))
        return precision.cpu_supports_bf16()

    assert with_flags("avx512f avx512_bf16") and with_flags("amx_bf16 amx_tile")
    assert not with_flags("avx2 avx512f avx512bw")


def test_quantised_llm_and_an_explicit_precision_are_refused():
    with pytest.raises(ConfigError, match="low_resource"):
        resolve_precision("bf16", "cpu", quantized=True)


# -- bf16 on the tiny model --------------------------------------------------------------------------
def test_bf16_stores_the_frozen_parts_and_keeps_fp32_where_the_libraries_compute_it(bf16_model):
    m = bf16_model
    assert {p.dtype for p in m.visual_encoder.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in m.Qformer.parameters()} == {torch.bfloat16} and m.query_tokens.dtype == torch.bfloat16
    assert {p.dtype for p in m.llama_model.parameters()} == {torch.bfloat16}
    assert m.llama_proj.weight.dtype == torch.float32 and m.llama_proj.weight.requires_grad  # master weights
    assert m.ln_vision.weight.dtype == torch.float32  # timm's LayerNormFp32
    assert m.llama_model.model.rotary_emb.inv_freq.dtype == torch.float32
    assert m.autocast_dtype is None


def test_the_log_says_which_dtype_each_part_runs_in(caplog):
    with caplog.at_level(logging.INFO, logger="minigpt4.models.mini_gpt4"):
        build("model.precision=bf16")
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Precision ")]
    assert lines == ["Precision bf16 on cpu: weights ViT bfloat16, Q-Former bfloat16, llama_proj float32, LLM "
                     "bfloat16; no autocast; attention ViT sdpa, Q-Former sdpa, LLM sdpa."]


def test_bf16_image_embeddings_within_2e2_of_fp32(tiny_model, bf16_model):
    with torch.no_grad():
        ref, _ = tiny_model.encode_img(images())
        got, _ = bf16_model.encode_img(images())
    assert got.dtype == torch.bfloat16
    assert rel_l2(got, ref) < 2e-2


def test_bf16_runs_every_llm_matmul_in_bf16_without_autocast(bf16_model):
    """No per-step casting: each Linear of the LLM sees inputs already in its weights' dtype, autocast off."""
    seen = []

    def check(module, args):
        seen.append((args[0].dtype, module.weight.dtype, torch.is_autocast_enabled("cpu")))

    hooks = [mod.register_forward_pre_hook(check) for mod in bf16_model.llama_model.modules()
             if isinstance(mod, torch.nn.Linear)]
    try:
        inputs = bf16_model.build_training_inputs(SAMPLES, bf16_model.prompt_list[0])
        loss = bf16_model.llama_model(**inputs).loss
    finally:
        for hook in hooks:
            hook.remove()
    assert seen and set(seen) == {(torch.bfloat16, torch.bfloat16, False)}
    assert loss.dtype == torch.float32 and torch.isfinite(loss)  # transformers upcasts the logits for the loss


def test_bf16_training_step_reaches_the_fp32_projection(tiny_model, bf16_model):
    """The loss of a bf16 step is close to fp32's and its gradient lands on the fp32 projection."""
    prompt = tiny_model.prompt_list[0]  # same config, same checkpoint: same prompts and llama_proj
    torch.testing.assert_close(bf16_model.llama_proj.weight, tiny_model.llama_proj.weight, atol=0, rtol=0)
    bf16_model.llama_proj.zero_grad()
    loss = bf16_model.llama_model(**bf16_model.build_training_inputs(SAMPLES, prompt)).loss
    loss.backward()
    grad = bf16_model.llama_proj.weight.grad
    bf16_model.llama_proj.zero_grad()
    assert grad is not None and grad.dtype == torch.float32 and grad.abs().sum() > 0
    with torch.no_grad():
        ref = tiny_model.llama_model(**tiny_model.build_training_inputs(SAMPLES, prompt)).loss
    assert abs(float(loss.detach()) - float(ref)) / float(ref) < 2e-2


def test_sdpa_everywhere_matches_the_eager_math(tiny_model):
    sdpa = build("model.attn_implementation=sdpa")
    eager = build("model.attn_implementation=eager")
    assert sdpa.Qformer.config._attn_implementation == "sdpa" and eager.Qformer.config._attn_implementation == "eager"
    assert sdpa.llama_model.config._attn_implementation == "sdpa"
    assert eager.llama_model.config._attn_implementation == "eager"
    assert all(b.attn.fused_attn for b in sdpa.visual_encoder.blocks)
    assert not any(b.attn.fused_attn for b in eager.visual_encoder.blocks)
    x = images()
    with torch.no_grad():
        ref = eager.encode_img(x)[0]
        torch.testing.assert_close(sdpa.encode_img(x)[0], ref, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(tiny_model.encode_img(x)[0], ref, atol=1e-5, rtol=1e-5)
        emb = torch.randn(1, 12, sdpa.llama_model.config.hidden_size, generator=torch.Generator().manual_seed(1))
        torch.testing.assert_close(sdpa.llama_model(inputs_embeds=emb).logits,
                                   eager.llama_model(inputs_embeds=emb).logits, atol=1e-5, rtol=1e-5)


# -- caption.py --------------------------------------------------------------------------------------
def test_caption_precision_fp16_on_cpu_is_one_error_line(tmp_path, capsys):
    image = tmp_path / "cat.png"
    image.write_bytes(b"")
    with pytest.raises(SystemExit) as stop:
        caption.cli(["--cfg-path", str(TINY_RANDOM_EVAL), "--images", str(image), "--out", str(tmp_path / "o.jsonl"),
                     "--device", "cpu", "--precision", "fp16", "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and err[-1].startswith("error: ") and "--precision bf16" in err[-1]
    assert not any("Traceback" in line for line in err) and not (tmp_path / "o.jsonl").exists()


def test_caption_bf16_records_the_precision_and_refuses_mixing_with_fp32(tmp_path, capsys, tiny_dir):
    from PIL import Image

    Image.new("RGB", (64, 48), (200, 30, 30)).save(tmp_path / "red.png")
    out = tmp_path / "captions.jsonl"
    common = ["--cfg-path", str(TINY_RANDOM_EVAL), "--images", str(tmp_path / "red.png"), "--out", str(out),
              "--device", "cpu", "--max-new-tokens", "4", "--quiet"]
    assert caption.main(common + ["--precision", "bf16"]) == 0
    import json

    record = json.loads(out.read_text().splitlines()[0])
    assert record["settings"]["precision"] == "bf16" and record["model"]["precision"] == "bf16"
    (tmp_path / "red.png").rename(tmp_path / "red2.png")  # a new image, so the rerun has work to do
    Image.new("RGB", (64, 48), (200, 30, 30)).save(tmp_path / "red.png")
    common[3] = str(tmp_path / "*.png")
    with pytest.raises(MiniGPT4Error, match=r"other settings: precision \('bf16' there, 'fp32' now\)"):
        caption.main(common)  # fp32 into a bf16 file


# -- int8 (weight-only, CPU decoding) ------------------------------------------------------------------
def test_int8_linear_matches_the_dequantised_product_on_both_paths():
    from minigpt4.models.int8 import DEQUANT_ROWS, Int8Linear

    torch.manual_seed(0)
    linear = torch.nn.Linear(96, 40).requires_grad_(False)
    q = Int8Linear(linear)
    w = linear.weight.float()
    scale = w.abs().amax(dim=1) / 127  # the test's own quantisation: symmetric, per output row
    dequant = torch.round(w / scale[:, None]).clamp(-127, 127) * scale[:, None]
    for rows in (1, DEQUANT_ROWS + 3):  # the int8 kernel (decode) and the dequantised bf16 matmul (prefill)
        x = torch.randn(2, rows, 96).bfloat16()
        want = x.float() @ dequant.T + linear.bias.float()
        got = q(x)
        assert got.shape == (2, rows, 40) and got.dtype == torch.bfloat16
        assert rel_l2(got, want) < 1e-2
        assert rel_l2(got, x.float() @ w.T + linear.bias) < 2e-2


def test_int8_model_quantises_the_llm_and_stays_within_2e2(tiny_model):
    from minigpt4.models.int8 import Int8Linear

    m = build("model.precision=int8")
    llm_linears = [mod for mod in m.llama_model.modules() if isinstance(mod, (torch.nn.Linear, Int8Linear))]
    assert llm_linears and all(isinstance(mod, Int8Linear) for mod in llm_linears)
    assert {p.dtype for p in m.visual_encoder.parameters()} == {torch.bfloat16}
    with torch.no_grad():
        ref, _ = tiny_model.encode_img(images())
        got, _ = m.encode_img(images())
        assert rel_l2(got, ref) < 2e-2
        emb = torch.randn(1, 9, m.llama_model.config.hidden_size, generator=torch.Generator().manual_seed(2))
        logits = m.llama_model(inputs_embeds=emb.bfloat16()).logits
        assert rel_l2(logits, tiny_model.llama_model(inputs_embeds=emb).logits) < 5e-2
    with pytest.raises(ConfigError, match="int8 is for inference"):
        m.llama_model(**m.build_training_inputs(SAMPLES, m.prompt_list[0]))


def test_int8_is_a_cpu_mode():
    with pytest.raises(ConfigError, match="int8.*CPU"):
        resolve_precision("int8", "cuda:0")
