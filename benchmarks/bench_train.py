"""Training-step throughput: samples/s and peak memory of one stage-2 step (forward, backward,
AdamW step over the trainable projection) for the tiny and mid-size presets on CPU (float32), and,
when CUDA is present, for the released architecture (EVA ViT-g, Q-Former, Vicuna-7B shape) with
random weights under the stage-2 precision policy (fp16 autocast + GradScaler).

    python benchmarks/bench_train.py [--presets tiny mid] [--batch 4] [--steps 5]

Writes benchmarks/results/bench_train.json and .md. CPU peak memory is the process's peak resident
set size (it only grows, so presets are run smallest first); CUDA peak memory is
``torch.cuda.max_memory_allocated``. Numbers are machine-dependent; compare them within one run.
"""

from __future__ import annotations

import argparse
import platform
import random
import resource
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_model import build_preset, build_real_size_random, write_results  # noqa: E402

import minigpt4.runners  # noqa: E402,F401  (registers the runner and the LR schedulers)
from minigpt4.common.config import Config  # noqa: E402
from minigpt4.common.optims import build_optimizer  # noqa: E402
from minigpt4.runners.run_config import build_run_config  # noqa: E402

STAGE2 = ROOT / "train_configs" / "minigpt4_stage2_finetune.yaml"


def stage2_run():
    """The run section of the stage-2 HIC config (its optimizer values)."""
    return build_run_config(Config(SimpleNamespace(cfg_path=str(STAGE2), options=None), check_paths=False))

CAPTION = "When your office has a great view but the commute is literally out of this world."
PROMPT = "###Human: <Img><ImageHere></Img> Describe this image in a funny way. ###Assistant: "


def measure(model, device: torch.device, batch: int, steps: int) -> dict:
    model.train()
    model.prompt_list = [PROMPT]
    run = stage2_run()
    optimizer = build_optimizer(model, run.init_lr, run.weight_decay, run.beta2)
    on_cuda = device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda") if on_cuda else None
    samples = {"image": torch.randn(batch, 3, 224, 224, device=device), "text_input": [CAPTION] * batch}

    def step():
        with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=on_cuda):
            loss = model(samples)["loss"]
        if scaler:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        optimizer.zero_grad()
        if on_cuda:
            torch.cuda.synchronize(device)

    step()  # warm-up
    if on_cuda:
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    step_s = statistics.median(times)
    peak_mb = (torch.cuda.max_memory_allocated(device) if on_cuda
               else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) / 2**20
    return {"batch": batch, "step_s": step_s, "samples_per_s": batch / step_s, "peak_mem_MB": peak_mb,
            "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "total_params_M": sum(p.numel() for p in model.parameters()) / 1e6}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["tiny", "mid"])
    parser.add_argument("--batch", type=int, default=4, help="CPU batch size")
    parser.add_argument("--cuda-batch", type=int, default=12, help="batch for the real-size run (the HIC value)")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    random.seed(0)
    rows = []
    for preset in args.presets:
        model = build_preset(preset, "cpu")
        rows.append({"preset": preset, "device": "cpu", "dtype": "fp32",
                     **measure(model, torch.device("cpu"), args.batch, args.steps)})
        print(rows[-1], flush=True)
        del model
    if torch.cuda.is_available():
        device = torch.device("cuda:0")
        model = build_real_size_random("cuda:0")
        rows.append({"preset": "real-size (random)", "device": torch.cuda.get_device_name(0), "dtype": "fp16 amp",
                     **measure(model, device, args.cuda_batch, args.steps)})
        print(rows[-1], flush=True)
    meta = {"torch": torch.__version__, "threads": args.threads, "cpu": platform.processor() or platform.machine(),
            "cuda": torch.cuda.is_available(), "steps": args.steps}
    write_results("bench_train", rows, meta)


if __name__ == "__main__":
    main()
