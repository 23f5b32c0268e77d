"""The HIC paper's position-conditioned (PC) loss: every position weight and both parts against a
direct computation written out here, ``pc`` = ``ce`` at threshold 0 on the tiny model, gradients only
on the trainable set, and the config checks."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import TINY_RANDOM_EVAL, make_config

from minigpt4.common.errors import ConfigError
from minigpt4.models.losses import pc_loss, pc_loss_parts, position_weights, token_nll

IGNORE = -100


def test_position_weights_are_4i_over_the_caption_length():
    targets = torch.tensor([
        [IGNORE, 5, 3, 2, 6, 1],  # 5 caption tokens
        [IGNORE, IGNORE, IGNORE, 4, 2, IGNORE],  # 2 caption tokens, then padding
    ])
    w, supervised = position_weights(targets)
    assert supervised.tolist() == [[False, True, True, True, True, True], [False, False, False, True, True, False]]
    expected = [[0, 0, 4 * 1 / 5, 4 * 2 / 5, 4 * 3 / 5, 4 * 4 / 5], [0, 0, 0, 0, 4 * 1 / 2, 0]]
    torch.testing.assert_close(w, torch.tensor(expected), rtol=0, atol=1e-7)


def direct_parts(logits, labels, threshold, scale):
    """The definition, one position and one vocabulary entry at a time, in float64."""
    logits = logits.double()
    bce_terms, bce_count, ce_terms = [], 0, []
    vocab = logits.shape[-1]
    for b in range(logits.shape[0]):
        positions = [t for t in range(logits.shape[1] - 1) if labels[b, t + 1] != IGNORE]  # logit t -> label t+1
        length = len(positions)
        for i, t in enumerate(positions):
            z, target, w = logits[b, t], int(labels[b, t + 1]), 4 * i / length
            if w < threshold:
                for v in range(vocab):
                    p = 1 / (1 + math.exp(-float(z[v])))
                    bce_terms.append(math.log(p) if v == target else w * math.log(1 - p))
                bce_count += vocab
            else:
                log_norm = math.log(sum(math.exp(float(x)) for x in z))
                ce_terms.append(log_norm - float(z[target]))
    bce = -sum(bce_terms) / bce_count * scale if bce_count else 0.0
    ce = sum(ce_terms) / len(ce_terms) if ce_terms else 0.0
    return bce, ce


@pytest.mark.parametrize("threshold", [0.9, 0.0, 2.5, 4.0])
def test_both_parts_match_the_direct_computation(threshold):
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 12, 11, generator=gen) * 3
    labels = torch.full((3, 12), IGNORE)
    labels[0, 2:12] = torch.randint(0, 11, (10,), generator=gen)  # 10 caption tokens
    labels[1, 4:9] = torch.randint(0, 11, (5,), generator=gen)  # 5, then padding
    labels[2, 5:12] = torch.randint(0, 11, (7,), generator=gen)
    labels[2, 8] = IGNORE  # a masked token (pad = EOS) inside a caption
    bce, ce = pc_loss_parts(logits, labels, threshold, scale=100.0)
    want_bce, want_ce = direct_parts(logits, labels, threshold, 100.0)
    assert want_bce != 0.0 or threshold == 0.0
    assert want_ce != 0.0 or threshold == 4.0
    assert bce.item() == pytest.approx(want_bce, rel=1e-5, abs=1e-6)
    assert ce.item() == pytest.approx(want_ce, rel=1e-5, abs=1e-6)
    assert pc_loss(logits, labels, threshold, 100.0).item() == pytest.approx(want_bce + want_ce, rel=1e-5)
    # pc_scale multiplies the BCE part only
    bce_half, ce_same = pc_loss_parts(logits, labels, threshold, scale=50.0)
    assert bce_half.item() == pytest.approx(want_bce / 2, rel=1e-5, abs=1e-6) and ce_same.item() == pytest.approx(want_ce, rel=1e-5)


@pytest.fixture(scope="module")
def pc_model(tiny_dir):
    from minigpt4.models import MiniGPT4

    cfg = make_config(TINY_RANDOM_EVAL, ["model.loss=pc", "model.pc_threshold=0"])
    model = MiniGPT4.from_config(cfg.model_cfg)
    model.prompt_list = model.prompt_list[:1]  # no random prompt draw
    return model


def batch(n=2):
    torch.manual_seed(0)
    return {"image": torch.randn(n, 3, 224, 224), "text_input": ["a penguin reads the news", "why is the llama late?"][:n]}


def test_pc_equals_ce_at_threshold_zero(pc_model):
    samples = batch()
    with torch.no_grad():
        pc = pc_model(samples)["loss"]
        inputs = pc_model.build_training_inputs(samples, prompt=pc_model.prompt_list[0])
        ce = pc_model.llama_model(**inputs).loss  # transformers' own causal-LM cross-entropy
        logits = pc_model.llama_model(inputs_embeds=inputs["inputs_embeds"], attention_mask=inputs["attention_mask"]).logits
    torch.testing.assert_close(pc, ce, rtol=1e-6, atol=1e-6)
    total, count = token_nll(logits, inputs["labels"])
    torch.testing.assert_close(total / count, ce, rtol=1e-6, atol=1e-6)
    # at the default threshold the model's loss is the PC loss of its logits, not the cross-entropy
    pc_model.config.pc_threshold = 0.9
    try:
        with torch.no_grad():
            pc_default = pc_model(samples)["loss"]
    finally:
        pc_model.config.pc_threshold = 0.0
    want_bce, want_ce = direct_parts(logits, inputs["labels"], 0.9, 100.0)
    assert pc_default.item() == pytest.approx(want_bce + want_ce, rel=1e-4)
    assert abs(pc_default.item() - ce.item()) > 1e-3


def test_pc_gradients_reach_only_the_trainable_set(pc_model):
    pc_model.config.pc_threshold = 0.9
    pc_model.train()
    try:
        pc_model.zero_grad(set_to_none=True)
        pc_model(batch())["loss"].backward()
        for name, p in pc_model.named_parameters():
            if p.requires_grad:
                assert p.grad is not None and p.grad.abs().sum() > 0, name
            else:
                assert p.grad is None, name
        assert {n for n, p in pc_model.named_parameters() if p.requires_grad} == {"llama_proj.weight", "llama_proj.bias"}
    finally:
        pc_model.zero_grad(set_to_none=True)
        pc_model.eval()
        pc_model.config.pc_threshold = 0.0


@pytest.mark.parametrize("option,match", [
    ("model.pc_threshold=4.5", r"model\.pc_threshold \(set in --options\) must be in \[0, 4\].*4\.5"),
    ("model.pc_threshold=-0.1", r"model\.pc_threshold .* must be in \[0, 4\]"),
    ("model.pc_scale=0", r"model\.pc_scale .* positive"),
    ("model.loss=focal", r"model\.loss .* 'ce', 'pc'"),
])
def test_pc_config_errors_name_the_key(option, match):
    options = [option] if option.startswith("model.loss") else ["model.loss=pc", option]
    with pytest.raises(ConfigError, match=match):
        make_config(TINY_RANDOM_EVAL, options, check_paths=False)


def test_the_default_loss_is_ce_and_a_threshold_alone_is_not_checked():
    cfg = make_config(TINY_RANDOM_EVAL, ["model.pc_threshold=7"], check_paths=False)
    assert cfg.model.loss == "ce"  # the threshold only matters with model.loss=pc
