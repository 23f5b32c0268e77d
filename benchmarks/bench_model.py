"""Inference speed of the chat path: image-encode time per image, time to first token and decode
tokens/s, for the tiny and mid-size presets on CPU (float32), and, when CUDA is present, for the
released architecture (EVA ViT-g, Q-Former, Vicuna-7B shape) with random weights in fp16.

    python benchmarks/bench_model.py [--presets tiny mid] [--new-tokens 32] [--repeats 3]

Writes benchmarks/results/bench_model.json and .md. Numbers are machine-dependent; compare them
within one run.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from minigpt4.conversation.conversation import CONV_VISION, Chat
from minigpt4.inference.loading import load_for_inference
from minigpt4.models.config import MiniGPT4Config
from minigpt4.models.mini_gpt4 import MiniGPT4
from minigpt4.tools.make_tiny import ensure_tiny

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"

VICUNA_7B = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096,
             "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32,
             "max_position_embeddings": 2048, "rms_norm_eps": 1e-6, "vocab_size": 32000,
             "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0, "tie_word_embeddings": False}


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device, repeats):
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def build_preset(preset: str, device: str):
    """The tiny eval config with another size preset (its generated weights), through the inference loader."""
    options = [f"model.model_type={preset}", f"model.ckpt=${{minigpt4_tiny:{preset},minigpt4.pth}}"]
    return load_for_inference(ROOT / "eval_configs" / "minigpt4_tiny_eval.yaml", options, device=device).model


def build_real_size_random(device: str):
    """EVA ViT-g + Q-Former + a Vicuna-7B-shaped LLaMA, random weights, fp16 on the GPU."""
    llm_dir = Path(tempfile.mkdtemp(prefix="vicuna7b-shape-"))
    (llm_dir / "config.json").write_text(json.dumps(VICUNA_7B))
    for name in ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(ensure_tiny("tiny") / "llama" / name, llm_dir / name)
    with torch.device(device):
        model = MiniGPT4(MiniGPT4Config(llama_model=str(llm_dir)), device=device, load_weights=False)
    return model.eval()


def measure(model, device: str, new_tokens: int, repeats: int) -> dict:
    device = torch.device(device)
    size = model.visual_encoder.patch_embed.img_size[0]
    images = torch.randn(8, 3, size, size, device=device)
    with torch.no_grad():
        encode = timed(lambda: model.encode_img(images), device, repeats) / len(images)
    chat = Chat(model, vis_processor=None, device=device, stop_words_ids=[[-1]])  # never stops early

    def run(n):
        conv, img_list = CONV_VISION.copy(), []
        chat.upload_img(images[:1], conv, img_list)
        chat.ask("Could you write a funny caption of this image for me?", conv)
        chat.answer(conv, img_list, max_new_tokens=n, min_length=n + 1, do_sample=False)

    first = timed(lambda: run(1), device, repeats)
    full = timed(lambda: run(new_tokens), device, repeats)
    return {
        "encode_ms_per_image": 1000 * encode,
        "time_to_first_token_ms": 1000 * first,
        "decode_tokens_per_s": (new_tokens - 1) / max(full - first, 1e-9),
        "new_tokens": new_tokens,
        "llm_params_M": sum(p.numel() for p in model.llama_model.parameters()) / 1e6,
        "vit_params_M": sum(p.numel() for p in model.visual_encoder.parameters()) / 1e6,
    }


def write_results(name: str, rows: list[dict], meta: dict, title: str | None = None, notes: str = "") -> None:
    """``benchmarks/results/<name>.json`` and a Markdown table ``<name>.md`` (``notes`` below it)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps({"meta": meta, "results": rows}, indent=2) + "\n")
    keys = list(rows[0])
    lines = [f"# {title or name}", "", ", ".join(f"{k}: {v}" for k, v in meta.items()), "",
             "| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for row in rows:
        lines.append("| " + " | ".join(f"{v:.2f}" if isinstance(v, float) else str(v) for v in row.values()) + " |")
    if notes:
        lines += ["", notes]
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["tiny", "mid"])
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rows = []
    for preset in args.presets:
        model = build_preset(preset, "cpu").eval()
        rows.append({"preset": preset, "device": "cpu", "dtype": "fp32", **measure(model, "cpu", args.new_tokens, args.repeats)})
        print(rows[-1], flush=True)
        del model
    if torch.cuda.is_available():
        model = build_real_size_random("cuda:0")
        rows.append({"preset": "real-size (random)", "device": torch.cuda.get_device_name(0), "dtype": "fp16",
                     **measure(model, "cuda:0", args.new_tokens, args.repeats)})
        print(rows[-1], flush=True)
    meta = {"torch": torch.__version__, "threads": args.threads, "cpu": platform.processor() or platform.machine(),
            "cuda": torch.cuda.is_available()}
    write_results("bench_model", rows, meta)


if __name__ == "__main__":
    main()
