"""The measurements bench_model.py (CPU presets) and bench_gpu.py (real size on a GPU) share: one timed
round of the inference path, the compile warm-up, the accuracy of a mode against fp32, and a stage-2
training step."""

from __future__ import annotations

import statistics
import time

import torch

from minigpt4.common.optims import build_optimizer
from minigpt4.constants import DEFAULT_PROMPT, IMAGE_MESSAGE
from minigpt4.conversation.conversation import CONV_VISION, Chat
from minigpt4.inference.batch import BatchCaptioner, GenerationSettings

PROMPT = DEFAULT_PROMPT
TRAIN_PROMPT = f"###Human: {IMAGE_MESSAGE} Describe this image in a funny way. ###Assistant: "
CAPTION = "When your office has a great view but the commute is literally out of this world."
NEVER = [[-1]]  # a stop sequence no generated id matches: every answer is exactly as long as asked
SKIMAGE = ("astronaut", "coffee", "chelsea", "rocket", "camera", "coins", "moon", "page", "horse", "clock")


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def clock(fn, device) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def pixels(model, batch: int, seed: int = 0) -> torch.Tensor:
    size = model.config.image_size
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, size, size, generator=generator).to(model.device)


def exact(tokens: int) -> GenerationSettings:
    """Greedy, exactly ``tokens`` new tokens (with :data:`NEVER` as the stop sequence)."""
    return GenerationSettings(max_new_tokens=tokens, min_length=tokens + 1)


def chat_answer(chat: Chat, image: torch.Tensor, tokens: int) -> None:
    conv, img_list = CONV_VISION.copy(), []
    chat.upload_img(image[None], conv, img_list)
    chat.ask(PROMPT, conv)
    chat.answer(conv, img_list, max_new_tokens=tokens, min_length=tokens + 1, do_sample=False)


def warm_up(model, args, batch: int = 8) -> float:
    """Compiled modes: compile the decode step for batch 1 (``Chat``) and ``batch`` (``BatchCaptioner``);
    returns the seconds it took (0 for an eager mode)."""
    if not getattr(model, "compile_decoding", False):
        return 0.0
    chat = Chat(model, None, device=model.device, stop_words_ids=NEVER)
    captioner = BatchCaptioner(model, None, stop_words_ids=NEVER)
    return chat.warm_up(max_new_tokens=args.new_tokens) + captioner.warm_up(PROMPT, exact(args.caption_tokens), batch)


@torch.no_grad()
def measure_round(model, args, batch: int = 8, encode_batches=(1, 4)) -> dict:
    """One timed round: encode at ``encode_batches``, time to first token and batch-1 decode tokens/s
    (``Chat``), captioning images/s at ``batch`` (``BatchCaptioner``, ``args.caption_tokens`` each)."""
    device = model.device
    row = {}
    for b in encode_batches:
        x = pixels(model, b)
        row[f"encode_b{b}_ms"] = 1000 * clock(lambda: model.encode_img(x), device)
    chat = Chat(model, None, device=device, stop_words_ids=NEVER)
    image = pixels(model, 1)[0]
    first = clock(lambda: chat_answer(chat, image, 1), device)
    full = clock(lambda: chat_answer(chat, image, args.new_tokens), device)
    row["ttft_ms"] = 1000 * first
    row["decode_tok_s"] = (args.new_tokens - 1) / (full - first) if full > first else float("nan")  # noise won
    captioner = BatchCaptioner(model, None, device=device, stop_words_ids=NEVER)
    images = list(pixels(model, batch, seed=1))
    row[f"caption_b{batch}_img_s"] = batch / clock(
        lambda: captioner.generate(images, PROMPT, exact(args.caption_tokens)), device)
    return row


def natural_images(n: int):
    """``n`` PIL images: scikit-image's samples (a dev dependency), else seeded noise."""
    from PIL import Image

    try:
        import skimage.data

        found = [Image.fromarray(getattr(skimage.data, name)()).convert("RGB") for name in SKIMAGE[:n]]
    except (ImportError, AttributeError, OSError):
        found = []
    generator = torch.Generator().manual_seed(5)
    while len(found) < n:
        noise = (torch.rand(224, 224, 3, generator=generator) * 255).to(torch.uint8).numpy()
        found.append(Image.fromarray(noise))
    return found


_reference: dict = {}


@torch.no_grad()
def accuracy(model, base, eager, processor, args, tokens: int = 30) -> dict:
    """``inputs_llama`` relative L2 to ``base`` (fp32), the share of greedy captions identical to base's
    and, for a compiled mode, the shares of greedy ids identical to ``eager`` (same precision, the
    default dynamic cache) and to the same static-cache decoding run uncompiled (torch.compile's
    "force_eager" stance): the second is what compiling changes, the first adds the static cache's
    padded attention length."""
    images = natural_images(args.accuracy_images)
    settings = GenerationSettings(max_new_tokens=tokens)

    def run(m):
        pix = torch.cat([processor(img)[None] for img in images]).to(m.device)
        captions = BatchCaptioner(m, processor).generate(images, PROMPT, settings)
        return m.encode_img(pix)[0].float(), [c[0] for c in captions]

    if id(base) not in _reference:
        _reference[id(base)] = run(base)
    ref_embeds, ref_caps = _reference[id(base)]
    row = {"rel_l2_vs_fp32": 0.0, "same_caption_vs_fp32": 1.0, "same_ids_vs_eager": "", "same_ids_vs_uncompiled": ""}
    if model is base:
        return row
    embeds, caps = run(model)
    row.update(rel_l2_vs_fp32=float((embeds - ref_embeds).norm() / ref_embeds.norm()),
               same_caption_vs_fp32=statistics.mean(a.text == b.text for a, b in zip(caps, ref_caps)))
    if eager is not None and eager is not model:
        _, eager_caps = run(eager)
        with torch.compiler.set_stance("force_eager"):
            _, static_caps = run(model)
        row["same_ids_vs_eager"] = statistics.mean(a.token_ids == b.token_ids for a, b in zip(caps, eager_caps))
        row["same_ids_vs_uncompiled"] = statistics.mean(a.token_ids == b.token_ids for a, b in zip(caps, static_caps))
    return row


def training_step(model, batch: int, autocast: torch.dtype | None = None, scaler=None):
    """One stage-2 step (forward, backward, AdamW over the trainable set) as a closure."""
    model.train()
    model.prompt_list = [TRAIN_PROMPT]
    optimizer = build_optimizer(model, 3e-5, 0.05, 0.999)
    samples = {"image": pixels(model, batch, seed=2), "text_input": [CAPTION] * batch}
    device_type = model.device.type

    def step():
        with torch.autocast(device_type=device_type, dtype=autocast or torch.float32, enabled=autocast is not None):
            loss = model(samples)["loss"]
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def interleaved(steps: dict, device, repeats: int) -> dict[str, float]:
    """Median seconds of each closure, run in turn (A B C A B C ...) after one untimed call each."""
    for fn in steps.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, fn in steps.items():
            times[name].append(clock(fn, device))
    return {name: statistics.median(t) for name, t in times.items()}


def kernel_profile(rows_list=(1, 8, 80), shape=(2752, 1024), repeats: int = 15, calls: int = 30) -> list[dict]:
    """What limits decoding on a CPU: one LLM-sized Linear (mid preset's MLP, ``shape`` = out x in) in
    fp32, bf16 (oneDNN) and int8 weight-only (models/int8.py), microseconds per call and the weight
    bytes streamed per second, at 1 row (batch-1 decode), 8 (batch-8 decode) and 80 (a prefill);
    interleaved, medians."""
    from minigpt4.models.int8 import Int8Linear

    torch.manual_seed(0)
    linear = torch.nn.Linear(shape[1], shape[0], bias=False).requires_grad_(False)
    layers = {"fp32": (linear, torch.float32, 4),
              "bf16": (torch.nn.Linear(shape[1], shape[0], bias=False).requires_grad_(False).bfloat16(),
                       torch.bfloat16, 2),
              "int8": (Int8Linear(linear), torch.bfloat16, 1)}
    out = []
    with torch.no_grad():
        for rows in rows_list:
            inputs = {name: torch.randn(rows, shape[1]).to(dtype) for name, (_, dtype, _) in layers.items()}
            times: dict[str, list[float]] = {name: [] for name in layers}
            for _ in range(repeats):
                for name, (layer, _, _) in layers.items():
                    x = inputs[name]
                    start = time.perf_counter()
                    for _ in range(calls):
                        layer(x)
                    times[name].append((time.perf_counter() - start) / calls)
            for name, (_, _, width) in layers.items():
                sec = statistics.median(times[name])
                out.append({"rows": rows, "weights": name, "us_per_call": 1e6 * sec,
                            "weight_GB_per_s": shape[0] * shape[1] * width / sec / 1e9})
    fp32 = {r["rows"]: r["us_per_call"] for r in out if r["weights"] == "fp32"}
    for row in out:
        row["speed_x_vs_fp32"] = fp32[row["rows"]] / row["us_per_call"]
    return out
