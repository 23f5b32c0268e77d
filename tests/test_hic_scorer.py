"""The humour scorer's model: parity of the BLIP-2 first stage with transformers'
Blip2ForImageTextRetrieval, the strict BLIP-2 converter (MiniGPT-4 still drops the text parts), the
tokenizer, freezing, the embedding cache, the caption-only mode; the pairs of the prepared HIC
folder; and the errors for bad input."""

from __future__ import annotations

import math
import re
from collections import Counter
from pathlib import Path

import pytest
import torch
from transformers import BertTokenizer, Blip2Config, Blip2ForImageTextRetrieval

from conftest import ROOT, make_config

import minigpt4  # noqa: F401  (registration)
from minigpt4.common.errors import CheckpointError, ConfigError, DatasetError
from minigpt4.common.registry import registry
from minigpt4.datasets.hic_format import read_selected
from minigpt4.datasets.hic_pairs import MISMATCH, PairOptions, make_pairs
from minigpt4.humour.scenario import FUNNY, PLAIN, write_scenario
from minigpt4.models.blip2_text import DEC_TOKEN, load_bert_tokenizer
from minigpt4.models.qformer import convert_blip2_state_dict

TINY_EVAL = ROOT / "eval_configs" / "hic_scorer_tiny_eval.yaml"
CAPTIONS = ["a cat", "when your cat thinks the laptop is a heated bed", "me pretending to understand the joke again"]


def build(*options, device="cpu"):
    cfg = make_config(TINY_EVAL, list(options))
    return registry.get_model_class("hic_scorer").from_config(cfg.model_cfg, device=device)


def randomize(module, seed: int = 0) -> None:
    gen = torch.Generator().manual_seed(seed)
    for p in module.parameters():
        p.copy_(torch.randn(p.shape, generator=gen) * 0.3)


def images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, 224, 224, generator=torch.Generator().manual_seed(seed))


# -- parity with transformers.Blip2ForImageTextRetrieval ----------------------------------------------
def retrieval_reference(model) -> Blip2ForImageTextRetrieval:
    """transformers' BLIP-2 retrieval model with the scorer's sizes and the scorer's backbone weights,
    mapped here by hand from the timm/EVA + LAVIS names into the transformers layout."""
    cfg, backbone = model.config, model.backbone
    v, q = cfg.vit_config, cfg.qformer_config
    hf = Blip2Config(
        vision_config=dict(hidden_size=v.embed_dim, intermediate_size=int(v.embed_dim * v.mlp_ratio),
                           num_hidden_layers=v.depth, num_attention_heads=v.num_heads, image_size=cfg.image_size,
                           patch_size=v.patch_size, layer_norm_eps=1e-6, qkv_bias=True, hidden_act="gelu"),
        qformer_config=dict(hidden_size=q.hidden_size, num_hidden_layers=q.num_hidden_layers,
                            num_attention_heads=q.num_attention_heads, intermediate_size=q.intermediate_size,
                            cross_attention_frequency=q.cross_attention_freq, encoder_hidden_size=v.embed_dim,
                            vocab_size=len(model.tokenizer), max_position_embeddings=512, layer_norm_eps=1e-12,
                            use_qformer_text_input=True, hidden_act="gelu"),
        num_query_tokens=cfg.num_query_token, image_text_hidden_size=256, image_token_index=None)
    hf._attn_implementation = "eager"
    ref = Blip2ForImageTextRetrieval(hf).eval()
    vit_names = {"cls_token": "embeddings.class_embedding", "pos_embed": "embeddings.position_embedding",
                 "patch_embed.proj.weight": "embeddings.patch_embedding.weight",
                 "patch_embed.proj.bias": "embeddings.patch_embedding.bias"}
    block_names = {"norm1": "layer_norm1", "norm2": "layer_norm2", "attn.qkv": "self_attn.qkv",
                   "attn.proj": "self_attn.projection", "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2"}
    heads = {"vision_proj": "vision_projection", "text_proj": "text_projection", "itm_head": "itm_head"}
    mapped = {}
    for key, tensor in backbone.state_dict().items():
        top, _, rest = key.partition(".")
        if top == "visual_encoder":
            block = re.match(r"blocks\.(\d+)\.(.+)\.(weight|bias)$", rest)
            if block:
                i, name, kind = block.groups()
                if name in block_names:
                    mapped[f"vision_model.encoder.layers.{i}.{block_names[name]}.{kind}"] = tensor
            elif rest in vit_names:
                mapped["vision_model." + vit_names[rest]] = tensor
        elif top == "ln_vision":  # BLIP-2's ln_vision is the transformers vision model's post_layernorm
            mapped["vision_model.post_layernorm." + rest] = tensor
        elif top == "Qformer":
            mapped["qformer." + rest] = tensor
        elif top == "text_embeddings":
            mapped["embeddings." + rest] = tensor
        elif top in heads:
            mapped[f"{heads[top]}.{rest}"] = tensor
        elif top == "query_tokens":
            mapped[key] = tensor
    for i, block in enumerate(backbone.visual_encoder.blocks):  # EVA: q and v biases, none for k
        q, v = block.attn.q_bias, block.attn.v_bias
        mapped[f"vision_model.encoder.layers.{i}.self_attn.qkv.bias"] = torch.cat([q, torch.zeros_like(q), v])
    missing, unexpected = ref.load_state_dict(mapped, strict=False)
    assert not unexpected and not missing, (missing, unexpected)
    ref.vision_model.post_layernorm.eps = 1e-5  # ln_vision is torch's LayerNorm (eps 1e-5), unlike the ViT's 1e-6
    return ref


@pytest.mark.parametrize("perturb", [False, True], ids=["tiny-weights", "wide-weights"])
def test_itm_and_itc_match_blip2_for_image_text_retrieval(tiny_dir, perturb):
    model = build().eval()
    if perturb:  # wider random weights (the same in both models) make every output depend on every part
        gen = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for p in model.backbone.parameters():
                p.add_(torch.randn(p.shape, generator=gen) * 0.3)
    ref = retrieval_reference(model)
    pixels = images(3)
    ids, mask = model.tokenize(CAPTIONS)
    assert mask.sum(1).tolist() != [mask.shape[1]] * 3  # captions of different lengths: padding is exercised
    with torch.no_grad():
        ref_itm = ref(pixel_values=pixels, input_ids=ids, attention_mask=mask, use_image_text_matching_head=True)
        ref_itc = ref(pixel_values=pixels, input_ids=ids, attention_mask=mask, use_image_text_matching_head=False)
        embeds = model.encode_image(pixels)
        itm = model.backbone.itm_logits(embeds, ids, mask)
        feats, text = model.backbone.image_feats(embeds), model.backbone.text_feat(ids, mask)
        itc = torch.einsum("iqe,te->itq", feats, text).max(dim=-1).values  # every image with every caption
        rowwise = model.similarity(pixels, CAPTIONS)
    probs, ref_probs = itm.softmax(-1)[:, 1], ref_itm.logits_per_image.softmax(-1)[:, 1]
    assert probs.max() - probs.min() > 1e-4 and itc.max() - itc.min() > 1e-4  # outputs that differ per input
    torch.testing.assert_close(probs, ref_probs, rtol=0, atol=1e-5)
    torch.testing.assert_close(itm, ref_itm.logits_per_image, rtol=0, atol=1e-5)
    torch.testing.assert_close(itc, ref_itc.logits_per_image, rtol=0, atol=1e-5)
    torch.testing.assert_close(rowwise, ref_itc.logits_per_image.diagonal(), rtol=0, atol=1e-5)


# -- the BLIP-2 checkpoint --------------------------------------------------------------------------
def test_scorer_loads_the_text_branch_and_minigpt4_still_drops_it(tiny_dir):
    state = torch.load(tiny_dir / "blip2_pretrained.pth", weights_only=True)["model"]
    text_keys = [k for k in state if k.startswith(("Qformer.bert.embeddings.word_", "Qformer.bert.embeddings.position_e",
                                                 "vision_proj.", "text_proj.", "itm_head."))
                 or re.match(r"Qformer\.bert\.encoder\.layer\.\d+\.(intermediate|output)\.", k)]
    assert len(text_keys) > 10
    _, dropped = convert_blip2_state_dict(state)  # the MiniGPT-4 loader
    assert set(text_keys) <= set(dropped)
    model = build()
    b = model.backbone
    torch.testing.assert_close(b.text_embeddings.word_embeddings.weight, state["Qformer.bert.embeddings.word_embeddings.weight"])
    torch.testing.assert_close(b.Qformer.encoder.layer[1].output.dense.weight,
                               state["Qformer.bert.encoder.layer.1.output.dense.weight"])
    torch.testing.assert_close(b.Qformer.encoder.layer[0].attention.attention.query.weight,
                               state["Qformer.bert.encoder.layer.0.attention.self.query.weight"])
    for name in ("vision_proj", "text_proj", "itm_head"):
        torch.testing.assert_close(getattr(b, name).weight, state[f"{name}.weight"])
    torch.testing.assert_close(b.query_tokens, state["query_tokens"])


@pytest.mark.parametrize("edit, error", [
    (lambda s: s.__setitem__("Qformer.bert.encoder.layer.0.extra.weight", torch.zeros(2)), r"unexpected keys.*layer\.0\.extra"),
    (lambda s: s.pop("Qformer.bert.encoder.layer.1.output.dense.weight"), r"missing keys.*layer\.1\.output\.dense\.weight"),
    (lambda s: s.pop("Qformer.bert.embeddings.word_embeddings.weight"), r"no Q-Former text branch"),
    (lambda s: s.__setitem__("Qformer.bert.embeddings.word_embeddings.weight", torch.zeros(100, 32)),
     r"100 word embeddings but the tokenizer.*has \d+ tokens"),
], ids=["unexpected", "missing-text-ffn", "text-parts-stripped", "other-vocabulary"])
def test_blip2_checkpoint_errors_name_the_problem(tiny_dir, tmp_path, edit, error):
    ckpt = torch.load(tiny_dir / "blip2_pretrained.pth", weights_only=True)
    edit(ckpt["model"])
    torch.save(ckpt, tmp_path / "blip2.pth")
    with pytest.raises(CheckpointError, match=error):
        build(f"model.q_former_model={tmp_path / 'blip2.pth'}")


def test_tokenizer_is_bert_wordpiece_with_dec_added(tiny_dir, tmp_path):
    model = build()
    tok = model.tokenizer
    assert len(tok) == model.backbone.text_embeddings.word_embeddings.num_embeddings
    assert tok.bos_token == DEC_TOKEN and tok.convert_tokens_to_ids(DEC_TOKEN) == len(tok) - 1
    # a plain downloaded vocabulary (vocab.txt only) gets [DEC] added, as LAVIS adds it
    (tmp_path / "vocab.txt").write_text((tiny_dir / "bert_tokenizer" / "vocab.txt").read_text())
    plain = BertTokenizer.from_pretrained(str(tmp_path))
    loaded = load_bert_tokenizer(str(tmp_path))
    assert len(loaded) == len(plain) + 1 == len(tok) and loaded.bos_token == DEC_TOKEN
    assert loaded("When your cat thinks")["input_ids"] == plain("When your cat thinks")["input_ids"]


def test_missing_tokenizer_folder_names_the_key_and_the_fix(tiny_dir, tmp_path):
    with pytest.raises(ConfigError, match=r"model\.bert_tokenizer.*does not exist.*bert-base-uncased.*docs/HUMOUR\.md"):
        make_config(TINY_EVAL, [f"model.bert_tokenizer={tmp_path / 'nope'}"])
    cfg = make_config(TINY_EVAL, [f"model.bert_tokenizer={tmp_path / 'nope'}"], check_paths=False)
    with pytest.raises(ConfigError, match=r"model\.bert_tokenizer.*bert-base-uncased.*set model\.bert_tokenizer"):
        registry.get_model_class("hic_scorer").from_config(cfg.model_cfg)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=r"neither vocab\.txt nor tokenizer\.json"):
        build(f"model.bert_tokenizer={tmp_path / 'empty'}")


# -- the model --------------------------------------------------------------------------------------
def test_freezing_and_one_step_trains_exactly_the_trainable_set(tiny_dir):
    model = build("model.train_qformer_layers=1", "model.head_dropout=0")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in model.named_parameters() if n.startswith(("head.", "backbone.Qformer.encoder.layer.1."))}
    assert not model.caches_embeddings  # a trainable layer: nothing can be cached
    assert not model.backbone.Qformer.encoder.layer[0].training  # frozen parts are in eval mode from the start
    model.train()
    assert model.head.training and model.backbone.Qformer.encoder.layer[1].training
    assert not model.backbone.visual_encoder.training and not model.backbone.Qformer.encoder.layer[0].training
    with torch.no_grad():  # a trained head (an untrained one is zero at the output: no gradient reaches the layer)
        randomize(model.head)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    out = model({"image": images(2), "image_id": ["a", "b"], "text_win": CAPTIONS[:2], "text_lose": CAPTIONS[1:]})
    (out["score_lose"] - out["score_win"]).sum().backward()
    for name, p in model.named_parameters():
        assert (p.grad is not None) == (name in trainable), name
    torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1).step()
    for name, p in model.named_parameters():
        assert torch.equal(p, before[name]) != (name in trainable), name
    assert set(model.trainable_state_dict()) == trainable


def test_cached_embeddings_give_the_uncached_scores(tiny_dir):
    model = build("model.head_hidden=16", "model.train_qformer_layers=0", "model.head_dropout=0")
    with torch.no_grad():
        randomize(model.head)
    assert model.caches_embeddings
    pixels, ids = images(3), ["x", "y", "z"]
    torch.manual_seed(123)  # the cache is filled in training mode: no dropout may reach it
    model.train()
    with torch.no_grad():
        first = model.score(pixels, CAPTIONS, image_ids=ids)  # computes and caches
        model.eval()
        assert set(model.cache.images) == set(ids) and set(model.cache.texts) == set(CAPTIONS)
        cached = model.score(None, CAPTIONS, image_ids=ids)  # no image needed any more
        model.caches_embeddings = False
        uncached = model.score(pixels, CAPTIONS)
    assert first.std() > 0
    torch.testing.assert_close(cached, uncached, rtol=0, atol=1e-6)
    torch.testing.assert_close(first, uncached, rtol=0, atol=1e-6)


def test_caption_only_scorer_builds_no_vit_and_needs_no_image(tiny_dir):
    model = build("model.use_image=False", "model.train_qformer_layers=1").eval()
    assert not hasattr(model.backbone, "visual_encoder")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad and n.startswith("backbone.")}
    assert trainable and not any(".crossattention." in n or "_query." in n for n in trainable)  # unused parts stay frozen
    with torch.no_grad():
        scores = model.score(None, CAPTIONS)
    assert scores.shape == (3,)
    with pytest.raises(ConfigError, match="needs an image"):
        model.similarity(None, CAPTIONS)
    with pytest.raises(ConfigError, match=r"model\.head=itm.*use_image is False"):
        build("model.use_image=False", "model.head=itm")


def test_itm_head_scores_and_bad_layer_count(tiny_dir):
    model = build("model.head=itm").eval()
    with torch.no_grad():
        out = model({"image": images(2), "image_id": ["a", "b"], "text_win": CAPTIONS[:2], "text_lose": CAPTIONS[1:]})
    assert out["score_win"].shape == out["score_lose"].shape == (2,)
    with pytest.raises(ConfigError, match=r"train_qformer_layers.*between 0 and the 2"):
        build("model.train_qformer_layers=3")


def test_head_checkpoints_of_another_kind_are_named_errors(tiny_dir, tmp_path):
    with pytest.raises(CheckpointError, match=r"holds no humour-scorer head.*llama_proj"):
        build(f"model.ckpt={tiny_dir / 'minigpt4.pth'}")
    head = build().trainable_state_dict()
    wider = build("model.head_hidden=8").trainable_state_dict()
    torch.save({"model": wider}, tmp_path / "wider.pth")
    with pytest.raises(CheckpointError, match=r"head\.mlp\.1\.weight.*shape.*another architecture or size"):
        build(f"model.ckpt={tmp_path / 'wider.pth'}")
    torch.save({"model": head, "config": {"model": {"head": "itm", "use_image": True}}}, tmp_path / "itm.pth")
    with pytest.raises(CheckpointError, match=r"trained with model\.head='itm'.*model\.head='itc'"):
        build(f"model.ckpt={tmp_path / 'itm.pth'}")
    torch.save({"model": {k: v for k, v in head.items() if k != "head.mlp.1.bias"}}, tmp_path / "part.pth")
    with pytest.raises(CheckpointError, match=r"missing keys head\.mlp\.1\.bias"):
        build(f"model.ckpt={tmp_path / 'part.pth'}")
    # a head trained on a frozen backbone (no layer tensors) serves a config that names a trainable layer:
    # the layer keeps the BLIP-2 weights
    frozen = build("model.train_qformer_layers=0", "model.head_hidden=16")
    with torch.no_grad():
        randomize(frozen.head)
    torch.save({"model": frozen.trainable_state_dict()}, tmp_path / "ok.pth")
    layered = build(f"model.ckpt={tmp_path / 'ok.pth'}", "model.head_hidden=16").eval()
    with torch.no_grad():
        torch.testing.assert_close(layered.score(images(2), CAPTIONS[:2]), frozen.eval().score(images(2), CAPTIONS[:2]))


# -- pairs ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def scenario(tmp_path_factory) -> Path:
    return write_scenario(tmp_path_factory.mktemp("hic") / "planted")


def test_planted_scenario_signal_is_in_the_words_not_the_length(scenario):
    agree = longer = total = 0
    for image in read_selected(scenario):
        for a in image.captions:
            for b in image.captions:
                fa, fb = (sum(w in FUNNY for w in c.caption.split()) for c in (a, b))
                assert all(w in FUNNY + PLAIN for w in a.caption.split())
                if fa > fb:
                    total += 1
                    agree += a.funny_score > b.funny_score
                    longer += len(a.caption.split()) > len(b.caption.split())
    assert agree == total > 500
    assert 0.3 < longer / total < 0.6


def test_pairs_follow_the_margin_rule_within_one_image(scenario):
    images = list(read_selected(scenario))
    options = PairOptions(max_pairs_per_image=0, mismatch_fraction=0.0)
    pairs = make_pairs(images, options).pairs
    by_id = {img.image_id: {c.caption: c.funny_score for c in img.captions} for img in images}
    expected = sum(1 for img in images for a in img.captions for b in img.captions
                   if a.funny_score >= 1 and math.log1p(a.funny_score) - math.log1p(b.funny_score) >= math.log(2))
    assert len(pairs) == expected and all(p.weight == 1.0 for p in pairs)
    for p in pairs:
        scores = by_id[p.image_id]
        assert p.win in scores and p.lose in scores  # both captions of the same image
        assert math.isclose(p.margin, math.log1p(scores[p.win]) - math.log1p(scores[p.lose]))
    weighted = make_pairs(images, PairOptions(max_pairs_per_image=0, mismatch_fraction=0.0, pair_weight="margin")).pairs
    assert [p.weight for p in weighted] == [p.margin for p in pairs]


def test_pair_caps_are_seeded_per_image_and_hard_negatives_cross_images(scenario):
    images = list(read_selected(scenario))
    options = PairOptions(max_pairs_per_image=3, mismatch_fraction=0.5, seed=7)
    one, two = make_pairs(images, options), make_pairs(images, options)
    assert one.pairs == two.pairs  # deterministic
    within = [p for p in one.pairs if p.kind != MISMATCH]
    assert max(Counter(p.image_id for p in within).values()) == 3
    # an image's pairs do not depend on the other images
    alone = make_pairs(images[:1], PairOptions(max_pairs_per_image=3, mismatch_fraction=0.0, seed=7)).pairs
    assert alone == [p for p in within if p.image_id == images[0].image_id]
    assert make_pairs(images, PairOptions(max_pairs_per_image=3, seed=8)).pairs != one.pairs
    hard = [p for p in one.pairs if p.kind == MISMATCH]
    best = {img.image_id: img.captions[0].caption for img in images}
    assert len(hard) == pytest.approx(0.5 * len(within), abs=2)
    assert all(p.win == best[p.image_id] and p.lose == best[p.lose_image_id] and p.lose_image_id != p.image_id
               for p in hard)


def test_builder_takes_train_pairs_from_train_images_and_val_from_val(scenario):
    import json

    cfg = make_config(ROOT / "train_configs" / "hic_scorer_tiny.yaml",
                      [f"datasets.oxford_hic_pairs.build_info.storage={scenario}"])
    builder = registry.get_builder_class("oxford_hic_pairs")(cfg.datasets_cfg.oxford_hic_pairs, origin=cfg.origin)
    datasets = builder.build_datasets()
    held_out = {split: {i["image_id"] for i in json.loads((scenario / f"{split}.json").read_text())["images"]}
                for split in ("val", "test")}
    train_ids = {p.image_id for p in datasets["train"].pairs} | {p.lose_image_id for p in datasets["train"].pairs}
    assert train_ids - {""} and not (train_ids & (held_out["val"] | held_out["test"]))
    assert {p.image_id for p in datasets["val"].pairs} <= held_out["val"]
    assert all(p.kind != MISMATCH for p in datasets["val"].pairs)
    sample = datasets["train"][(0, 123)]
    assert sample["image"].shape == (3, 224, 224) and sample["text_win"] == datasets["train"].pairs[0].win


def test_no_pair_passing_the_margin_says_what_was_seen_and_what_to_relax(scenario):
    images = [img for img in read_selected(scenario)]
    with pytest.raises(DatasetError, match=rf"saw {sum(len(i.captions) for i in images)} captions of "
                                           rf"{len(images)} images.*relax min_log_margin or min_winner_score"):
        make_pairs(images, PairOptions(min_log_margin=50.0))


def test_folder_without_selected_jsonl_is_a_named_error(scenario, tmp_path):
    cfg = make_config(ROOT / "train_configs" / "hic_scorer_tiny.yaml",
                      [f"datasets.oxford_hic_pairs.build_info.storage={tmp_path}"])
    builder = registry.get_builder_class("oxford_hic_pairs")(cfg.datasets_cfg.oxford_hic_pairs, origin=cfg.origin)
    with pytest.raises(DatasetError, match=r"selected\.jsonl not found.*prepare_hic\.py"):
        builder.build_datasets()
