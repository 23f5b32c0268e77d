"""Loading the original checkpoint formats: converters are strict, expected extras are dropped on
purpose, bad input gets an error that names the key or file; the released architecture's sizes."""

from __future__ import annotations

import shutil

import pytest
import torch

from conftest import ROOT, make_config

TINY_EVAL = ROOT / "eval_configs" / "minigpt4_tiny_eval.yaml"


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
    with pytest.raises(CheckpointError, match="weights-only"):
        load_weights_file(tmp_path / "evil.pth")


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
    with pytest.raises(ConfigError, match=r"vit_config key 'width'"):
        build(["model.vit_config.width=3"])


def test_low_resource_without_gpu_is_a_clear_error(tiny_dir, monkeypatch):
    from minigpt4.common.errors import ConfigError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="low_resource.*CUDA GPU"):
        build(["model.low_resource=True"])


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


def test_released_architecture_parameter_counts():
    from torch import nn

    from minigpt4.models.eva_vit import build_eva_vit
    from minigpt4.models.qformer import build_qformer

    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    vit = build_eva_vit(224, device="meta")
    assert len(vit.blocks) == 39 and isinstance(vit.norm, nn.Identity)
    assert count(vit) == 985_894_528
    qformer, query_tokens = build_qformer(32, 1408, device="meta")
    assert count(qformer) == 105_137_664
    assert query_tokens.numel() == 24_576
    assert count(nn.LayerNorm(1408, device="meta")) == 2_816
    assert count(nn.Linear(768, 4096, device="meta")) == 3_149_824
