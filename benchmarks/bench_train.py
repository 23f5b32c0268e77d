"""Training-step throughput and peak memory of the stage-2 step (forward, backward, AdamW step over the
trainable set) in each training mode, against the default (``plain``) in the same run:

* ``plain``: the original recipe, ``llama_proj`` only, cross-entropy, float32 on CPU;
* ``lora``: + LoRA adapters (r 16, alpha 32) on the LLM's q_proj / v_proj (``model.lora``);
* ``pc``: the HIC paper's position-conditioned loss (``model.loss: pc``);
* ``bf16``: bf16 autocast without a GradScaler (``run.amp: True``, ``run.amp_dtype: bfloat16``);
* ``grad_ckpt``: activation checkpointing of the LLM (``run.llm_grad_checkpoint``);

for the tiny and mid-size presets on CPU and, with CUDA, the released architecture (EVA ViT-g,
Q-Former, Vicuna-7B shape) with random weights at batch 12 under the stage-2 policy (``plain``:
fp16 autocast + GradScaler), plus ``qlora`` (NF4 4-bit LLM + LoRA) when ``--qlora-llama`` names a
local LLaMA/Vicuna folder (4-bit weights come from a real checkpoint) and bitsandbytes is installed.

    python benchmarks/bench_train.py [--presets tiny mid] [--batch 4] [--steps 5] [--out DIR]

Steps are interleaved (one step of each mode per round, the median per mode), so the ratios
``vs_plain`` compare modes under the same machine load. CPU peak memory is the peak resident set size
of a fresh process that runs only that mode (``--probe``; from the first step on); CUDA peak memory is
``torch.cuda.max_memory_allocated`` per mode. Writes ``bench_train.json`` and ``.md`` to ``--out``
(default benchmarks/results/).
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import platform
import random
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_model  # noqa: E402
from bench_model import build_real_size_random  # noqa: E402
from bench_modes import CAPTION  # noqa: E402

import minigpt4.runners  # noqa: E402,F401  (registers the runner and the LR schedulers)
from minigpt4.common.config import Config  # noqa: E402
from minigpt4.common.optims import build_optimizer  # noqa: E402
from minigpt4.models.config import LoRAConfig, MiniGPT4Config  # noqa: E402
from minigpt4.models.llm import load_llm  # noqa: E402
from minigpt4.models.lora import apply_lora  # noqa: E402
from minigpt4.models.mini_gpt4 import MiniGPT4  # noqa: E402
from minigpt4.runners.run_config import build_run_config  # noqa: E402

STAGE2 = ROOT / "train_configs" / "minigpt4_stage2_finetune.yaml"
TINY_EVAL = ROOT / "eval_configs" / "minigpt4_tiny_eval.yaml"
CPU_MODES = ("plain", "lora", "pc", "bf16", "grad_ckpt")
LORA = LoRAConfig(r=16, alpha=32, dropout=0.05, target_modules=["q_proj", "v_proj"])


def stage2_run():
    """The run section of the stage-2 HIC config (its optimizer values)."""
    return build_run_config(Config(SimpleNamespace(cfg_path=str(STAGE2), options=None), check_paths=False))


def build_cpu(preset: str, lora: bool):
    options = [f"model.model_type={preset}", f"model.ckpt=${{minigpt4_tiny:{preset},minigpt4.pth}}"]
    if lora:
        options.append("model.lora={r: 16, alpha: 32, dropout: 0.05, target_modules: [q_proj, v_proj]}")
    cfg = Config(SimpleNamespace(cfg_path=str(TINY_EVAL), options=options))
    return MiniGPT4.from_config(cfg.model_cfg, device="cpu", fresh_adapters=True)


class Mode:
    """One training mode: a model, its optimizer and how a step runs."""

    def __init__(self, name: str, model, device: torch.device, batch: int, amp: torch.dtype | None, scaler: bool):
        self.name, self.model, self.device = name, model, device
        run = stage2_run()
        self.optimizer = build_optimizer(model, run.init_lr, run.weight_decay, run.beta2)
        self.amp = amp
        self.scaler = torch.amp.GradScaler("cuda") if scaler else None
        self.samples = {"image": torch.randn(batch, 3, 224, 224, device=device), "text_input": [CAPTION] * batch}
        self.loss = "pc" if name == "pc" else "ce"
        self.checkpoint = name == "grad_ckpt"
        self.times: list[float] = []

    def _toggle(self, on: bool) -> None:
        """Models are shared between modes: set this mode's loss and checkpointing for one step."""
        self.model.config.loss = self.loss if on else "ce"
        llm = self.model.llama_model
        if self.checkpoint:
            if on:
                llm.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                llm.activation_checkpointing_disable()

    def step(self) -> float:
        self._toggle(True)
        self.model.train()
        start = time.perf_counter()
        with torch.autocast(device_type=self.device.type, dtype=self.amp or torch.float32, enabled=self.amp is not None):
            loss = self.model(self.samples)["loss"]
        if self.scaler:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            self.optimizer.step()
        self.optimizer.zero_grad()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        elapsed = time.perf_counter() - start
        self._toggle(False)
        return elapsed

    def row(self, batch: int) -> dict:
        step_s = statistics.median(self.times)
        return {"mode": self.name, "batch": batch, "step_s": step_s, "samples_per_s": batch / step_s,
                "trainable_params": sum(p.numel() for p in self.model.parameters() if p.requires_grad)}


def cpu_modes(preset: str, batch: int, only: str | None = None) -> list[Mode]:
    cpu = torch.device("cpu")
    names = [only] if only else list(CPU_MODES)
    plain = build_cpu(preset, lora=False) if any(n != "lora" for n in names) else None
    lora = build_cpu(preset, lora=True) if "lora" in names else None
    amp = {"bf16": torch.bfloat16}
    return [Mode(n, lora if n == "lora" else plain, cpu, batch, amp.get(n), scaler=False) for n in names]


def interleave(modes: list[Mode], steps: int) -> None:
    for mode in modes:
        mode.step()  # warm-up
    for _ in range(steps):
        for mode in modes:
            mode.times.append(mode.step())


def _rss_mb(field: str) -> float | None:
    """``VmRSS`` (now) or ``VmHWM`` (peak since the last reset) of this process, from /proc (Linux)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def probe(preset: str, mode: str, batch: int, steps: int) -> None:
    """In a fresh process: run one mode only and print its memory (MB): the peak resident set size while
    it trains, and that peak above the resident size before the first step (the step's own memory:
    activations, gradients, optimizer state). Loading's own peak is left out (Linux: VmHWM reset)."""
    (only,) = cpu_modes(preset, batch, mode)
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand freed loading buffers back, so RSS starts honest
        Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS counter
    except OSError:
        pass
    before = _rss_mb("VmRSS")
    for _ in range(steps + 1):
        only.step()
    peak = _rss_mb("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"peak_rss_MB": peak, "step_MB": peak - before if before is not None else None}))


def probe_memory(preset: str, mode: str, batch: int, steps: int, threads: int) -> dict:
    cmd = [sys.executable, __file__, "--probe", preset, mode, "--batch", str(batch), "--steps", str(min(steps, 2)),
           "--threads", str(threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    found = json.loads(lines[-1]) if proc.returncode == 0 and lines else {}
    return {"peak_mem_MB": found.get("peak_rss_MB"), "step_mem_MB": found.get("step_MB")}


def cuda_modes(batch: int, qlora_llama: str | None) -> tuple[list[Mode], list[str]]:
    """Stage-2 policy on the real-size random architecture; QLoRA from a real LLM folder when given."""
    device, notes = torch.device("cuda:0"), []
    plain = build_real_size_random("cuda:0")
    lora = build_real_size_random("cuda:0")
    lora.llama_model = apply_lora(lora.llama_model, LORA)
    modes = [Mode("plain", plain, device, batch, torch.float16, scaler=True),
             Mode("lora", lora, device, batch, torch.float16, scaler=True),
             Mode("pc", plain, device, batch, torch.float16, scaler=True),
             Mode("bf16", plain, device, batch, torch.bfloat16, scaler=False),
             Mode("grad_ckpt", plain, device, batch, torch.float16, scaler=True)]
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        notes.append("qlora: skipped (bitsandbytes is not installed)")
        return modes, notes
    if not qlora_llama:
        notes.append("qlora: skipped (pass --qlora-llama DIR: 4-bit weights are quantised from a real checkpoint)")
        return modes, notes
    with torch.device("cuda:0"):  # random ViT and Q-Former; the LLM from the folder, in NF4
        qlora = MiniGPT4(MiniGPT4Config(llama_model=qlora_llama), device="cuda:0", load_weights=False)
    qlora.llama_model = None
    torch.cuda.empty_cache()
    llm = load_llm(qlora_llama, torch.bfloat16, device="cuda:0", quantization="4bit")
    qlora.llama_model = apply_lora(llm, LORA, quantized=True)
    qlora.config.quantization, qlora.config.lora = "4bit", LORA
    modes.append(Mode("qlora", qlora, device, batch, torch.bfloat16, scaler=False))
    return modes, notes


def model_mb(model) -> float:
    """Bytes of a model's parameters and buffers (4-bit weights count their packed bytes)."""
    tensors = list(model.parameters()) + list(model.buffers())
    return sum(t.numel() * t.element_size() for t in {id(t): t for t in tensors}.values()) / 2**20


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["tiny", "mid"])
    parser.add_argument("--batch", type=int, default=4, help="CPU batch size")
    parser.add_argument("--cuda-batch", type=int, default=12, help="batch for the real-size run (the HIC value)")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--qlora-llama", help="a local LLaMA/Vicuna HF folder for the CUDA QLoRA row")
    parser.add_argument("--out", default=str(bench_model.RESULTS), help="folder for bench_train.json/.md")
    parser.add_argument("--probe", nargs=2, metavar=("PRESET", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    random.seed(0)
    if args.probe:
        return probe(*args.probe, args.batch, args.steps)
    rows, notes = [], []
    for preset in args.presets:
        modes = cpu_modes(preset, args.batch)
        interleave(modes, args.steps)
        base = modes[0].row(args.batch)["step_s"]
        for mode in modes:
            row = {"preset": preset, "device": "cpu", **mode.row(args.batch)}
            row["vs_plain"] = base / row["step_s"]
            row.update(probe_memory(preset, mode.name, args.batch, args.steps, args.threads))
            rows.append(row)
            print(rows[-1], flush=True)
        del modes
    if torch.cuda.is_available():
        modes, notes = cuda_modes(args.cuda_batch, args.qlora_llama)
        for mode in modes:  # memory per mode first (one mode at a time), then interleaved timing
            mode.step()  # the optimizer state exists from here on
            before = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            mode.step()
            # alone, this mode would hold its weights + optimizer state + the step's peak on top
            optimizer_mb = sum(t.numel() * t.element_size() for st in mode.optimizer.state.values()
                               for t in st.values() if torch.is_tensor(t)) / 2**20
            mode.step_mb = (torch.cuda.max_memory_allocated() - before) / 2**20
            mode.peak = model_mb(mode.model) + optimizer_mb + mode.step_mb
        interleave(modes, args.steps)
        base = modes[0].row(args.cuda_batch)["step_s"]
        for mode in modes:
            row = {"preset": "real-size (random)", "device": torch.cuda.get_device_name(0), **mode.row(args.cuda_batch)}
            rows.append({**row, "vs_plain": base / row["step_s"], "peak_mem_MB": mode.peak, "step_mem_MB": mode.step_mb})
            print(rows[-1], flush=True)
    meta = {"torch": torch.__version__, "threads": args.threads, "cpu": platform.processor() or platform.machine(),
            "cuda": torch.cuda.is_available(), "steps": args.steps,
            "load_avg_1min": round(os.getloadavg()[0], 2)}  # the machine is shared: ratios, not absolutes
    bench_model.RESULTS = Path(args.out)
    text = ("vs_plain: step time of plain / step time of the mode, same run (above 1: faster). CPU peak memory: "
            "peak RSS while a process runs only that mode (loading's own peak left out); step_mem_MB: that peak "
            "above the RSS before the first step (activations, gradients, optimizer state). CUDA peak memory: the mode's weights + optimizer state "
            "+ the peak of one step above them. " + " ".join(notes))
    bench_model.write_results("bench_train", rows, meta, notes=text)


if __name__ == "__main__":
    main()
