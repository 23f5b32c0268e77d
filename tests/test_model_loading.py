"""Loading the original checkpoint formats: converters are strict, expected extras are dropped on
purpose, bad input gets an error that names the key or file; the released architecture's sizes."""

from __future__ import annotations

import shutil

import pytest
import torch

from conftest import ROOT, TINY_RANDOM_EVAL, make_config

TINY_EVAL = TINY_RANDOM_EVAL


class Evil:
    """An arbitrary object: unpickling it would import and run code of the file's choosing."""


def build(options, device="cpu"):
    from minigpt4.common.registry import registry

    cfg = make_config(TINY_EVAL, options)
    return registry.get_model_class("mini_gpt4").from_config(cfg.model_cfg, device=device)


def rewrite(src, dst, edit, wrapped=False):
    state = torch.load(src, weights_only=True)
    edit(state["model"] if wrapped else state)
    torch.save(state, dst)
    return dst


# -- vision encoder (eva_vit_g.pth layout) ------------------------------------------------------
def test_vit_checkpoint_extra_block_is_dropped_silently(tiny_dir):
    state = torch.load(tiny_dir / "eva_vit_g.pth", weights_only=True)
    assert any(k.startswith("blocks.2.") for k in state)  # the checkpoint has one block more
    model = build([])
    assert len(model.visual_encoder.blocks) == 2
    torch.testing.assert_close(model.visual_encoder.blocks[1].attn.q_bias, state["blocks.1.attn.q_bias"])
    torch.testing.assert_close(model.visual_encoder.pos_embed, state["pos_embed"])


@pytest.mark.parametrize(
    "edit, needle",
    [
        (lambda s: s.__setitem__("blocks.0.attn.k_bias_extra", torch.zeros(64)), "blocks.0.attn.k_bias_extra"),
        (lambda s: s.pop("blocks.1.mlp.fc1.weight"), "blocks.1.mlp.fc1.weight"),
        (lambda s: s.__setitem__("blocks.0.norm1.weight", torch.ones(65)), "blocks.0.norm1.weight"),
    ],
    ids=["unexpected", "missing", "wrong-shape"],
)
def test_vit_checkpoint_errors_name_the_key(tiny_dir, tmp_path, edit, needle):
    from minigpt4.common.errors import CheckpointError

    bad = rewrite(tiny_dir / "eva_vit_g.pth", tmp_path / "vit.pth", edit)
    with pytest.raises(CheckpointError, match=needle.replace(".", r"\.")):
        build([f"model.vit_ckpt={bad}"])


def test_vit_position_embedding_is_interpolated(tiny_dir):
    # 224 px checkpoint (16x16 patches) into a 112 px model (8x8): bicubic resize, as the original.
    model = build(["model.image_size=112"])
    assert model.visual_encoder.pos_embed.shape == (1, 1 + 64, 64)
    state = torch.load(tiny_dir / "eva_vit_g.pth", weights_only=True)
    torch.testing.assert_close(model.visual_encoder.pos_embed[:, :1], state["pos_embed"][:, :1])
    embeds, _ = model.encode_img(torch.randn(1, 3, 112, 112))
    assert embeds.shape == (1, 8, 64)


# -- BLIP-2 checkpoint ----------------------------------------------------------------------------
def test_blip2_checkpoint_loads_and_drops_unused_parts(tiny_dir):
    raw = torch.load(tiny_dir / "blip2_pretrained.pth", weights_only=True)["model"]
    assert "t5_proj.weight" in raw and "Qformer.bert.encoder.layer.0.intermediate.dense.weight" in raw
    model = build([])
    torch.testing.assert_close(model.query_tokens, raw["query_tokens"])
    torch.testing.assert_close(model.ln_vision.weight, raw["ln_vision.weight"])
    torch.testing.assert_close(
        model.Qformer.encoder.layer[0].crossattention.attention.key.weight,
        raw["Qformer.bert.encoder.layer.0.crossattention.self.key.weight"],
    )
    torch.testing.assert_close(model.Qformer.layernorm.bias, raw["Qformer.bert.embeddings.LayerNorm.bias"])


@pytest.mark.parametrize(
    "edit, needle",
    [
        (lambda s: s.__setitem__("Qformer.bert.encoder.layer.0.attention.self.gate.weight", torch.zeros(2)),
         "Qformer.encoder.layer.0.attention.attention.gate.weight"),
        (lambda s: s.__setitem__("mystery_head.weight", torch.zeros(2)), "mystery_head.weight"),
        (lambda s: s.pop("query_tokens"), "query_tokens"),
        (lambda s: s.pop("Qformer.bert.encoder.layer.1.output_query.dense.bias"), "layer.1.output_query.dense.bias"),
        (lambda s: s.__setitem__("ln_vision.weight", torch.ones(10)), "ln_vision.weight"),
    ],
    ids=["unexpected-qformer", "unexpected-head", "missing-query-tokens", "missing-layer", "wrong-shape"],
)
def test_blip2_checkpoint_errors_name_the_key(tiny_dir, tmp_path, edit, needle):
    from minigpt4.common.errors import CheckpointError

    bad = rewrite(tiny_dir / "blip2_pretrained.pth", tmp_path / "blip2.pth", edit, wrapped=True)
    with pytest.raises(CheckpointError, match=needle.replace(".", r"\.")):
        build([f"model.q_former_model={bad}"])


def test_qformer_key_map_round_trips():
    from minigpt4.models.qformer import qformer_key_to_original, qformer_key_to_ours

    for original in [
        "Qformer.bert.embeddings.LayerNorm.weight",
        "Qformer.bert.encoder.layer.3.attention.self.query.bias",
        "Qformer.bert.encoder.layer.4.crossattention.self.value.weight",
        "Qformer.bert.encoder.layer.4.crossattention.output.LayerNorm.bias",
        "Qformer.bert.encoder.layer.11.output_query.dense.weight",
        "llama_proj.weight",
    ]:
        assert qformer_key_to_original(qformer_key_to_ours(original)) == original


# -- MiniGPT-4 checkpoint (model.ckpt) ------------------------------------------------------------
def test_minigpt4_checkpoint_ignores_original_buffers_and_loads_safetensors(tiny_dir, tmp_path):
    from safetensors.torch import save_file

    state = torch.load(tiny_dir / "minigpt4.pth", weights_only=True)["model"]
    noisy = dict(state)
    noisy["Qformer.bert.embeddings.position_ids"] = torch.arange(512)[None]
    noisy["llama_model.model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.ones(8)
    torch.save({"model": noisy, "epoch": 3}, tmp_path / "with_buffers.pth")
    model = build([f"model.ckpt={tmp_path / 'with_buffers.pth'}"])
    torch.testing.assert_close(model.llama_proj.weight, state["llama_proj.weight"])

    shifted = {k: v + 1 for k, v in state.items()}
    save_file(shifted, str(tmp_path / "proj.safetensors"))
    model = build([f"model.ckpt={tmp_path / 'proj.safetensors'}"])
    torch.testing.assert_close(model.llama_proj.bias, state["llama_proj.bias"] + 1)


def test_checkpoint_of_another_architecture_is_rejected(tiny_dir, tmp_path):
    from minigpt4.common.errors import CheckpointError

    torch.save({"model": {"llama_proj.weight": torch.zeros(4096, 768), "llama_proj.bias": torch.zeros(4096)}},
               tmp_path / "vicuna7b_proj.pth")
    with pytest.raises(CheckpointError, match=r"llama_proj\.weight.*\(4096, 768\)"):
        build([f"model.ckpt={tmp_path / 'vicuna7b_proj.pth'}"])


def test_checkpoint_with_unknown_key_is_rejected(tiny_dir, tmp_path):
    from minigpt4.common.errors import CheckpointError

    torch.save({"model": {"llama_projection.weight": torch.zeros(2)}}, tmp_path / "typo.pth")
    with pytest.raises(CheckpointError, match="llama_projection.weight"):
        build([f"model.ckpt={tmp_path / 'typo.pth'}"])


def test_pickled_code_is_refused(tmp_path):
    from minigpt4.common.errors import CheckpointError
    from minigpt4.models.checkpoint import load_weights_file

    torch.save({"model": {"w": torch.zeros(1)}, "hook": Evil()}, tmp_path / "evil.pth")
    with pytest.raises(CheckpointError, match="weights-only") as info:
        load_weights_file(tmp_path / "evil.pth")
    # PyTorch's advice to retry with weights_only=False is the wrong advice for a hostile file
    assert "weights_only=False" not in str(info.value) and "evil.pth" in str(info.value)


# -- bad input ----------------------------------------------------------------------------------------
def test_missing_weight_path_is_a_config_error(tmp_path):
    from minigpt4.common.errors import ConfigError

    with pytest.raises(ConfigError, match=r"model\.vit_ckpt.*does not exist.*--options"):
        make_config(TINY_EVAL, [f"model.vit_ckpt={tmp_path / 'nope.pth'}"])


def test_placeholder_path_is_reported_with_the_file(tmp_path):
    from minigpt4.common.errors import ConfigError

    with pytest.raises(ConfigError, match=r"model\.ckpt is still the placeholder.*minigpt4_eval\.yaml"):
        make_config(ROOT / "eval_configs" / "minigpt4_eval.yaml", ["model.llama_model=" + str(tmp_path)])


def test_llm_directory_without_tokenizer(tiny_dir, tmp_path):
    from minigpt4.common.errors import ConfigError

    llm = tmp_path / "llama"
    shutil.copytree(tiny_dir / "llama", llm)
    (llm / "tokenizer.model").unlink()
    with pytest.raises(ConfigError, match="has no tokenizer.model"):
        build([f"model.llama_model={llm}"])


def test_unknown_arch_model_type_and_key(tmp_path):
    from minigpt4.common.errors import ConfigError

    with pytest.raises(ConfigError, match=r"Unknown model name 'mini_gpt5'.*mini_gpt4"):
        make_config(TINY_EVAL, ["model.arch=mini_gpt5"])
    with pytest.raises(ConfigError, match=r"Unknown model_type 'pretrain_vicuna2'.*pretrain_vicuna0"):
        make_config(TINY_EVAL, ["model.model_type=pretrain_vicuna2"])
    with pytest.raises(ConfigError, match=r"model\.max_text_len.*--options.*Did you mean 'max_txt_len'"):
        make_config(TINY_EVAL, ["model.max_text_len=10"])
    with pytest.raises(ConfigError, match=r"Unknown key 'model\.vit_config\.width'.*--options"):
        build(["model.vit_config.width=3"])


def test_low_resource_without_gpu_is_a_clear_error(tiny_dir, monkeypatch):
    from minigpt4.common.errors import ConfigError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="low_resource.*CUDA GPU"):
        build(["model.low_resource=True"])



def test_low_resource_for_a_cpu_run_is_switched_off_in_both_views(tiny_dir, caplog):
    """caption.py/demo.py on the CPU: the 8-bit LLM is dropped with a notice, and the typed section the
    model is built from says so as well as the raw node."""
    from minigpt4.inference.loading import load_config

    with caplog.at_level("WARNING"):
        cfg = load_config(TINY_RANDOM_EVAL, ["model.low_resource=True"], torch.device("cpu"))
    assert cfg.model.low_resource is False and cfg.model_cfg.low_resource is False
    assert any("low_resource" in r.getMessage() and "unquantised" in r.getMessage() for r in caplog.records)

# -- freezing and the released architecture ------------------------------------------------------------
def test_freezing_survives_train_mode(tiny_model):
    model = tiny_model
    model.train()
    try:
        trainable = [n for n, p in model.named_parameters() if p.requires_grad]
        assert trainable == ["llama_proj.weight", "llama_proj.bias"]
        assert not model.visual_encoder.training and not model.ln_vision.training and not model.Qformer.training
        assert model.llama_proj.training
        assert sorted(model.trainable_state_dict()) == ["llama_proj.bias", "llama_proj.weight"]
    finally:
        model.eval()


def test_unfrozen_qformer_is_saved_in_the_original_layout(tiny_dir):
    model = build(["model.freeze_qformer=False"])
    keys = model.trainable_state_dict()
    assert "query_tokens" in keys
    assert "Qformer.bert.encoder.layer.0.crossattention.self.query.weight" in keys
    model.train()
    assert model.Qformer.training  # not frozen: dropout active, as the original


def _vit_params(width, depth, patch=14, image=224, mlp_ratio=4.3637, channels=3):
    """EVA ViT-g as the original builds it, counted by hand: patch embedding, CLS, position embedding,
    and per block two LayerNorms, a fused qkv without bias plus q/v biases, the output projection and
    the MLP with int(width * mlp_ratio) hidden units; no final norm, no head."""
    hidden = int(width * mlp_ratio)
    tokens = 1 + (image // patch) ** 2
    block = 2 * 2 * width + 3 * width * width + 2 * width + width * width + width \
        + width * hidden + hidden + hidden * width + width
    return channels * patch * patch * width + width + width + tokens * width + depth * block


def _qformer_params(hidden, layers, inter, vision, cross_every=2):
    """The Q-Former query path by hand: the embeddings' LayerNorm; per layer self-attention (q, k, v,
    output dense, LayerNorm), cross-attention every 2nd layer (k/v from the vision width) and the
    query feed-forward (intermediate_query, output_query with its LayerNorm)."""
    linear = lambda i, o: i * o + o  # noqa: E731
    self_attn = 3 * linear(hidden, hidden) + linear(hidden, hidden) + 2 * hidden
    cross = linear(hidden, hidden) + 2 * linear(vision, hidden) + linear(hidden, hidden) + 2 * hidden
    ffn = linear(hidden, inter) + linear(inter, hidden) + 2 * hidden
    crossed = sum(1 for i in range(layers) if i % cross_every == 0)
    return 2 * hidden + layers * (self_attn + ffn) + crossed * cross


def test_released_architecture_parameter_counts(tiny_dir, tmp_path):
    """The model's own parts at the released sizes, built on the meta device (no memory, no weights),
    against hand counts and the published totals (ViT-g 985,894,528; Q-Former 105,137,664)."""
    import json

    from torch import nn

    from minigpt4.models.config import MiniGPT4Config
    from minigpt4.models.mini_gpt4 import MiniGPT4

    llama = tmp_path / "vicuna-7b-architecture"
    shutil.copytree(tiny_dir / "llama", llama)
    config = json.loads((llama / "config.json").read_text())
    config.update(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                  num_key_value_heads=32)
    (llama / "config.json").write_text(json.dumps(config))
    with torch.device("meta"):
        model = MiniGPT4(MiniGPT4Config(llama_model=str(llama)), device="meta", load_weights=False)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert len(model.visual_encoder.blocks) == 39 and isinstance(model.visual_encoder.norm, nn.Identity)
    assert count(model.visual_encoder) == _vit_params(1408, 39) == 985_894_528
    assert count(model.Qformer) == _qformer_params(768, 12, 3072, 1408) == 105_137_664
    assert model.query_tokens.numel() == 32 * 768
    assert count(model.ln_vision) == 2 * 1408
    assert count(model.llama_proj) == 768 * 4096 + 4096 == 3_149_824
    assert model.llama_model.config.hidden_size == 4096


def test_checkpoint_without_llama_proj_is_an_error_naming_the_file(tiny_dir, tmp_path):
    """A MiniGPT-4 checkpoint exists to carry llama_proj: one without it must not load as '0 tensors'
    and leave the projection random."""
    from minigpt4.common.errors import CheckpointError

    cases = {
        "empty.pth": {},
        "empty_model.pth": {"model": {}},
        "only_buffers.pth": {"model": {"Qformer.bert.embeddings.position_ids": torch.arange(8)[None]}},
        "only_query_tokens.pth": {"model": {"query_tokens": torch.zeros(1, 8, 32)}},
    }
    for name, content in cases.items():
        torch.save(content, tmp_path / name)
        with pytest.raises(CheckpointError, match=rf"{name}.*missing keys llama_proj\.bias, llama_proj\.weight"):
            build([f"model.ckpt={tmp_path / name}"])


def test_non_tensor_values_and_broken_safetensors_are_named(tiny_dir, tmp_path):
    from minigpt4.common.errors import CheckpointError

    torch.save({"model": {"llama_proj.weight": [1.0, 2.0], "llama_proj.bias": torch.zeros(64)}}, tmp_path / "list.pth")
    with pytest.raises(CheckpointError, match=r"list\.pth.*'llama_proj\.weight' holds a list, not a tensor"):
        build([f"model.ckpt={tmp_path / 'list.pth'}"])
    from safetensors.torch import save_file

    save_file({"llama_proj.weight": torch.zeros(64, 32), "llama_proj.bias": torch.zeros(64)}, str(tmp_path / "ok.safetensors"))
    data = (tmp_path / "ok.safetensors").read_bytes()
    (tmp_path / "truncated.safetensors").write_bytes(data[: len(data) // 2])
    (tmp_path / "disguised.safetensors").write_bytes((tiny_dir / "minigpt4.pth").read_bytes())
    for name in ("truncated.safetensors", "disguised.safetensors"):
        with pytest.raises(CheckpointError, match=rf"{name}.*as safetensors.*download it again"):
            build([f"model.ckpt={tmp_path / name}"])


def test_wrong_types_name_the_key_and_ignored_keys_warn(tmp_path, caplog):
    from minigpt4.common.errors import ConfigError

    for option, needle in [("model.max_txt_len=long", r"model\.max_txt_len.*--options.*must be an integer.*'long'"),
                           ("model.freeze_vit=maybe", r"model\.freeze_vit.*must be True or False"),
                           ("model.vit_precision=fp8", r"model\.vit_precision.*one of 'fp16', 'bf16', 'fp32'"),
                           ("model.vit_config.depth=2.5", r"model\.vit_config\.depth.*must be an integer")]:
        with pytest.raises(ConfigError, match=needle):
            make_config(TINY_EVAL, [option])
    with caplog.at_level("WARNING"):
        make_config(TINY_EVAL, ["model.prompt=hello"])
    assert [r.getMessage() for r in caplog.records if "model.prompt" in r.getMessage()], caplog.text


def test_training_inputs_leave_the_tokenizer_alone(tiny_model):
    tok = tiny_model.llama_tokenizer
    before = tok.padding_side
    tok.padding_side = "left"  # what batched generation uses
    try:
        inputs = tiny_model.build_training_inputs({"image": torch.zeros(2, 3, 224, 224), "text_input": ["a", "a b c d"]})
        assert tok.padding_side == "left"
        # right padding all the same: the short caption's pad (= EOS) positions come last and are masked
        labels = inputs["labels"][0]
        assert (labels[-3:] == -100).all() and inputs["attention_mask"][0, -1] == 0
    finally:
        tok.padding_side = before
