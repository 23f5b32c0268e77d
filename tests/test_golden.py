"""Parity with the original MiniGPT-4: every quantity in tests/fixtures/golden/outputs.pth
(computed by the original code on a tiny random model) is reproduced from the weight files in
their original formats, loaded through Config + the registry."""

from __future__ import annotations


import pytest
import torch
from PIL import Image

from conftest import FIXTURES, make_config

GOLDEN = FIXTURES / "golden"
ATOL = 1e-5


@pytest.fixture(scope="module")
def golden():
    inputs = torch.load(GOLDEN / "inputs.pth", weights_only=True)
    outputs = torch.load(GOLDEN / "outputs.pth", weights_only=True)
    return inputs, outputs


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    from minigpt4.common.registry import registry

    prompt_file = tmp_path_factory.mktemp("prompts") / "one_prompt.txt"
    inputs = torch.load(GOLDEN / "inputs.pth", weights_only=True)
    prompt_file.write_text(inputs["prompt_line"])
    cfg = make_config(
        FIXTURES / "golden_model.yaml",
        [
            f"model.vit_ckpt={GOLDEN / 'vit.pth'}",
            f"model.q_former_model={GOLDEN / 'qformer.pth'}",
            f"model.llama_model={GOLDEN / 'llama'}",
            f"model.ckpt={GOLDEN / 'minigpt4_ckpt.pth'}",
            f"model.prompt_path={prompt_file}",
        ],
    )
    torch.manual_seed(0)
    m = registry.get_model_class("mini_gpt4").from_config(cfg.model_cfg, device="cpu")
    return m.eval()


def test_prompt_list_is_the_single_templated_prompt(model, golden):
    inputs, _ = golden
    assert model.prompt_list == [inputs["prompt"]]


def test_vision_features(model, golden):
    inputs, outputs = golden
    with torch.no_grad():
        vit_raw = model.visual_encoder.forward_features(inputs["images"])
        image_embeds = model.ln_vision(vit_raw)
    torch.testing.assert_close(vit_raw, outputs["vit_raw"], atol=ATOL, rtol=0)
    torch.testing.assert_close(image_embeds, outputs["image_embeds"], atol=ATOL, rtol=0)


def test_query_output_and_projection(model, golden):
    inputs, outputs = golden
    with torch.no_grad():
        image_embeds = model.ln_vision(model.visual_encoder.forward_features(inputs["images"]))
        atts = torch.ones(image_embeds.shape[:-1], dtype=torch.long)
        query = model.Qformer(
            query_embeds=model.query_tokens.expand(2, -1, -1), encoder_hidden_states=image_embeds,
            encoder_attention_mask=atts,
        ).last_hidden_state
        inputs_llama, atts_llama = model.encode_img(inputs["images"])
    torch.testing.assert_close(query, outputs["query_output"], atol=ATOL, rtol=0)
    torch.testing.assert_close(inputs_llama, outputs["inputs_llama"], atol=ATOL, rtol=0)
    assert torch.equal(atts_llama.long(), outputs["atts_llama"].long())


def test_training_inputs_targets_and_loss(model, golden):
    inputs, outputs = golden
    train = outputs["train"]
    samples = {"image": inputs["images"], "text_input": list(inputs["texts"])}
    with torch.no_grad():
        built = model.build_training_inputs(samples)
        loss = model(samples)["loss"]
        logits = model.llama_model(inputs_embeds=built["inputs_embeds"], attention_mask=built["attention_mask"]).logits
    torch.testing.assert_close(built["inputs_embeds"], train["inputs_embeds"], atol=ATOL, rtol=0)
    assert torch.equal(built["attention_mask"].long(), train["attention_mask"].long())
    assert torch.equal(built["labels"], train["targets"])
    torch.testing.assert_close(logits, train["logits"], atol=ATOL, rtol=0)
    torch.testing.assert_close(loss, train["loss"], atol=1e-6, rtol=0)
    tok = model.llama_tokenizer
    before, after = train["prompt"].split("<ImageHere>")
    assert tok(before, add_special_tokens=False).input_ids == train["p_before_ids"][0].tolist()
    assert tok(after, add_special_tokens=False).input_ids == train["p_after_ids"][0].tolist()


@pytest.mark.parametrize("variant", ["chat", "chat_stop_variant"])
def test_chat_greedy_generation(model, golden, variant):
    from minigpt4.conversation.conversation import CONV_VISION, Chat
    from minigpt4.processors.blip_processors import Blip2ImageEvalProcessor

    inputs, outputs = golden
    expected = outputs[variant]
    chat = Chat(model, Blip2ImageEvalProcessor(image_size=56), device="cpu", stop_words_ids=expected["stop_words_ids"])
    conv, img_list = CONV_VISION.copy(), []
    chat.upload_img(inputs["png_processed"], conv, img_list)
    chat.ask(inputs["chat_question"], conv)
    pending = conv.copy()
    mixed = chat.context_for_generation(pending, img_list, inputs["max_new_tokens"], 2000)
    assert pending.get_prompt() == expected["prompt"]
    torch.testing.assert_close(mixed, expected["mixed_embs"], atol=ATOL, rtol=0)

    # per-step logits of the greedy search (4.28 applied no processor that changes them here)
    with torch.no_grad():
        gen = model.llama_model.generate(
            inputs_embeds=mixed, attention_mask=torch.ones(mixed.shape[:2], dtype=torch.long),
            max_new_tokens=inputs["max_new_tokens"], do_sample=False, num_beams=1,
            stopping_criteria=chat.stopping_criteria, output_scores=True, return_dict_in_generate=True,
        )
    torch.testing.assert_close(torch.cat(gen.scores), expected["scores"], atol=ATOL, rtol=0)

    text, ids = chat.answer(conv, img_list, max_new_tokens=inputs["max_new_tokens"], num_beams=1, do_sample=False)
    assert conv.get_prompt().startswith(expected["prompt"])
    assert ids.tolist() == expected["output_token"].tolist()
    assert conv.messages == [list(m) for m in expected["conv_messages"]]


def test_png_processed_by_eval_processor(golden):
    from minigpt4.processors.blip_processors import Blip2ImageEvalProcessor

    inputs, _ = golden
    image = Image.open(GOLDEN / "image.png").convert("RGB")
    torch.testing.assert_close(Blip2ImageEvalProcessor(image_size=56)(image), inputs["png_processed"], atol=ATOL, rtol=0)
