"""The quickstart model: the tiny MiniGPT-4 briefly trained to memorise the bundled examples.

The tiny random model proves that every stage of the pipeline runs, but it answers with random
bytes. For the README's first command and the demo, this module trains the tiny architecture (the
language model, the projection and the Q-Former; the ViT stays as generated) on the twelve photos in
``examples/`` and their captions, asked with each question of ``prompts/alignment.txt`` in the exact
conversation template the demo and ``caption.py`` use. Asked about one of those photos it then
answers with that photo's caption: memorised, not understood. It runs once, deterministically (a
fixed seed, one thread, full batches), in well under a minute on 2 CPU cores, and is cached beside
the tiny weights as ``minigpt4_memorised.pth`` (a MiniGPT-4 checkpoint in the original key layout),
made on first use through ``${minigpt4_tiny:tiny,minigpt4_memorised.pth}`` in a config, or by
``python -m minigpt4.tools.make_tiny --out DIR --memorise``.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path

import torch

from minigpt4.common.atomic import atomic_path
from minigpt4.common.paths import PROJECT_ROOT
from minigpt4.conversation.template import CONV_VISION, add_image, add_question
from minigpt4.datasets.hic_format import image_path, read_split
from minigpt4.inference.inputs import open_image, read_prompt_file
from minigpt4.models.config import MiniGPT4Config, QFormerConfig, VisionConfig
from minigpt4.models.mini_gpt4 import MiniGPT4
from minigpt4.processors.blip_processors import Blip2ImageEvalProcessor

logger = logging.getLogger(__name__)

EXAMPLES = PROJECT_ROOT / "examples"
QUESTIONS = PROJECT_ROOT / "prompts" / "alignment.txt"
STEPS, PEAK_LR, SEED = 300, 1e-2, 20230617


def chat_prompts(questions: list[str]) -> list[str]:
    """The prompt the conversation template builds for an image and each question (the training
    layout splices the image at the placeholder and appends the caption)."""
    prompts = []
    for question in questions:
        conv = CONV_VISION.copy()
        add_image(conv)
        add_question(conv, question)
        conv.append_message(conv.roles[1], None)
        prompts.append(conv.get_prompt())
    return prompts


def memorise(tiny_dir: Path, spec: dict, out: Path, examples: Path = EXAMPLES, steps: int = STEPS) -> Path:
    """Train the tiny model of ``tiny_dir`` (sizes ``spec``, see ``make_tiny.preset_spec``) on
    ``examples`` and write the trained weights to ``out`` (atomically)."""
    config = MiniGPT4Config(
        model_type="tiny", num_query_token=spec["num_query_token"], image_size=spec["image_size"],
        vit_config=VisionConfig(**spec["vit"]), qformer_config=QFormerConfig(**spec["qformer"]),
        vit_ckpt=str(tiny_dir / "eva_vit_g.pth"), q_former_model=str(tiny_dir / "blip2_pretrained.pth"),
        llama_model=str(tiny_dir / "llama"), ckpt=str(tiny_dir / "minigpt4.pth"), max_txt_len=160, end_sym="###",
    )
    images = read_split(examples, "train")
    processor = Blip2ImageEvalProcessor(image_size=spec["image_size"])
    pixels = torch.stack([processor(open_image(image_path(examples, item.image_id))) for item in images])
    captions = [item.captions[0].caption for item in images]

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread: the same sums in the same order on every machine
    try:
        torch.manual_seed(SEED)
        random.seed(SEED)  # the model draws one training prompt per batch
        model = MiniGPT4.from_config(config)
        model.prompt_list = chat_prompts(read_prompt_file(QUESTIONS))
        for part in (model.llama_model, model.Qformer, model.llama_proj):
            part.requires_grad_(True)
        model.query_tokens.requires_grad_(True)
        model._frozen = [model.visual_encoder, model.ln_vision]
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=PEAK_LR, weight_decay=0.0)
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=PEAK_LR, total_steps=steps, pct_start=0.1)
        model.train()
        for step in range(steps):
            loss = model({"image": pixels, "text_input": captions})["loss"]
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            if step % 50 == 0 or step == steps - 1:
                logger.info("memorising the examples: step %d/%d, loss %.4f", step + 1, steps, loss.item())
    finally:
        torch.set_num_threads(threads)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        torch.save({"model": {k: v.contiguous() for k, v in model.trainable_state_dict().items()}}, tmp)
    return out
