"""The typed ``run:`` section of a training config (REFERENCE 2.7): the one place its defaults live.

:func:`build_run_config` checks the merged section once, before anything is built: unknown keys
(with a suggestion), missing required keys, wrong types (``init_lr: "fast"``), counts out of range
(``iters_per_epoch: 0``) and unknown task / runner / scheduler names are :class:`ConfigError`\\ s that
name the key and the file (or ``--options``) that set it. Keys of the original that nothing here
reads are accepted with one warning naming them; the shipped configs do not set them.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import math
from dataclasses import dataclass, field
from typing import Literal, Optional

from minigpt4.common.errors import ConfigError
from minigpt4.common.registry import registry
from minigpt4.common.schema import build_section

logger = logging.getLogger(__name__)

# Keys of the original that nothing here reads: accepted (original configs load) with one warning.
# A key that becomes read (``valid_splits`` for validation each epoch) moves from here to a field.
IGNORED_RUN_KEYS = (
    "test_splits", "use_dist_eval_sampler", "train_dataset_ratios",
    "max_iters", "iters_per_inner_epoch", "max_len", "min_len", "num_beams", "num_ans_candidates",
    "inference_method", "k_test",
)
# Outputs of the launcher (torchrun / SLURM variables, read by ``init_distributed_mode``), not inputs:
# a value in a config file is accepted with the same warning and not read.
LAUNCHER_RUN_KEYS = ("distributed", "world_size", "rank", "gpu", "dist_backend")
# Run keys that do not change what is trained: a resumed run may change them without a warning.
BOOKKEEPING_KEYS = ("resume_ckpt_path", "output_dir", "log_freq", "num_workers", "save_every_iters", "evaluate",
                    "dist_url", "valid_splits", "batch_size_eval", "sample_captions", "keep_checkpoints",
                    "tensorboard", "llm_grad_checkpoint")
DEFAULT_ITERS_PER_EPOCH = 10000  # the original's fallback: its loader has no len()


def _range(default=dataclasses.MISSING, low=None, above=None, below=None):
    """A field with bounds: ``low`` <= value (inclusive), ``above`` < value, value < ``below``."""
    bounds = {"low": low, "above": above, "below": below}
    if default is dataclasses.MISSING:
        return field(metadata=bounds)
    return field(default=default, metadata=bounds)


@dataclass(kw_only=True)
class RunConfig:
    """Fields without a default are required in a training config."""

    task: str
    runner: str = "runner_base"
    # AdamW and the LR schedule (REFERENCE 6.3, 6.4)
    lr_sched: str
    init_lr: float = _range(above=0)
    min_lr: float = _range(low=0)
    warmup_lr: float = -1.0  # negative: the warmup starts at init_lr
    warmup_steps: int = _range(0, low=0)
    lr_decay_rate: Optional[float] = _range(None, above=0)  # linear_warmup_step_lr only
    weight_decay: float = _range(low=0)
    beta2: float = _range(0.999, above=0, below=1)
    # the loop
    max_epoch: int = _range(low=1)
    iters_per_epoch: int = _range(DEFAULT_ITERS_PER_EPOCH, low=1)
    batch_size_train: int = _range(low=1)  # per process
    num_workers: int = _range(low=0)
    accum_grad_iters: int = _range(1, low=1)
    log_freq: int = _range(50, low=1)
    seed: int = _range(low=0)  # + rank
    output_dir: str  # job folders go under it, relative to the working directory
    amp: bool = False
    amp_dtype: Literal["float16", "fp16", "bfloat16", "bf16"] = "float16"  # new: bf16 autocast, no scaler
    resume_ckpt_path: Optional[str] = None
    evaluate: bool = False  # the original's evaluation-only mode: nothing is trained
    train_splits: list[str] = field(default_factory=lambda: ["train"])
    valid_splits: list[str] = field(default_factory=list)  # validated after each epoch by the task (none: [])
    batch_size_eval: Optional[int] = _range(None, low=1)  # per process, for validation (default: batch_size_train)
    device: str = "cuda"
    dist_url: str = "env://"
    save_every_iters: int = _range(0, low=0)  # new: mid-epoch checkpoints (0: none)
    # new, all off by default (docs/TRAINING.md): what each epoch shows, and a faster or smaller step
    sample_captions: int = _range(0, low=0)  # greedy captions of K fixed validation images after each epoch
    keep_checkpoints: Optional[int] = _range(None, low=1)  # keep the last N checkpoint_<epoch>.pth (None: all)
    tensorboard: bool = False  # <job>/tb/ event files (rank 0)
    fused_adamw: bool = False  # torch's fused AdamW kernel where the device has one
    llm_grad_checkpoint: bool = False  # activation checkpointing of the LLM: less memory, a slower step

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def _required() -> list[str]:
    return [f.name for f in dataclasses.fields(RunConfig)
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]


def _check_bounds(run: RunConfig, origin) -> None:
    for f in dataclasses.fields(RunConfig):
        value, bounds = getattr(run, f.name), f.metadata
        if value is None or not bounds:
            continue
        where = f"run.{f.name} (set in {origin('run.' + f.name)})"
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{where} must be a finite number; got {value!r}.")
        if bounds["low"] is not None and value < bounds["low"]:
            raise ConfigError(f"{where} must be at least {bounds['low']}; got {value!r}.")
        if bounds["above"] is not None and value <= bounds["above"]:
            raise ConfigError(f"{where} must be greater than {bounds['above']}; got {value!r}.")
        if bounds["below"] is not None and value >= bounds["below"]:
            raise ConfigError(f"{where} must be less than {bounds['below']}; got {value!r}.")


def _check_names(run: RunConfig, origin) -> None:
    for key, lookup in (("task", registry.get_task_class), ("runner", registry.get_runner_class),
                        ("lr_sched", registry.get_lr_scheduler_class)):
        try:
            lookup(getattr(run, key))
        except KeyError as err:
            raise ConfigError(f"run.{key} (set in {origin('run.' + key)}): {err}") from None
    if "train" not in run.train_splits:
        raise ConfigError(f"run.train_splits (set in {origin('run.train_splits')}) must contain 'train' to train; "
                          f"got {run.train_splits}.")
    if run.sample_captions and not run.valid_splits:
        raise ConfigError(f"run.sample_captions (set in {origin('run.sample_captions')}) captions validation images: "
                          "set run.valid_splits too (e.g. [val], with the oxford_hic dataset).")
    if run.tensorboard and importlib.util.find_spec("tensorboard") is None:
        raise ConfigError(f"run.tensorboard (set in {origin('run.tensorboard')}) needs the tensorboard package: "
                          "pip install -e '.[tensorboard]' (or pip install tensorboard), or set run.tensorboard=False.")
    if run.lr_sched == "linear_warmup_step_lr" and run.lr_decay_rate is None:
        raise ConfigError(f"run.lr_sched linear_warmup_step_lr needs run.lr_decay_rate (e.g. 0.9); it is not set "
                          f"in {origin('run.lr_sched')}.")


def build_run_config(cfg) -> RunConfig:
    """The checked ``run:`` section of ``cfg`` (a :class:`~minigpt4.common.config.Config`)."""
    node = cfg.require_run()
    hints = {f.name: f for f in dataclasses.fields(RunConfig)}
    # ``key: null`` means "the default" for a key that cannot be None (as the original's ``run.get(key) or ...``)
    values = {k: v for k, v in node.items() if not (v is None and k in hints and hints[k].default is not None)}
    ignored = IGNORED_RUN_KEYS + LAUNCHER_RUN_KEYS
    unknown = {k: v for k, v in values.items() if k not in hints and k not in ignored}
    if unknown:  # a misspelled key first: it may be the "missing" one
        build_section(RunConfig, unknown, "run", cfg.origin)
    missing = [key for key in _required() if key not in values]
    if missing:
        keys = ", ".join(f"run.{k}" for k in missing)
        raise ConfigError(f"{keys} {'is' if len(missing) == 1 else 'are'} required for training; add "
                          f"{'it' if len(missing) == 1 else 'them'} to the 'run:' section of {cfg.args.cfg_path} "
                          "(see train_configs/).")
    run = build_section(RunConfig, values, "run", cfg.origin, ignored=ignored)
    if not run.output_dir:
        raise ConfigError(f"run.output_dir (set in {cfg.origin('run.output_dir')}) must name a folder.")
    _check_bounds(run, cfg.origin)
    _check_names(run, cfg.origin)
    if "iters_per_epoch" not in values:
        logger.warning("run.iters_per_epoch is not set; using %d, as the original.", run.iters_per_epoch)
    if run.iters_per_epoch % run.accum_grad_iters:
        logger.warning("run.iters_per_epoch %d is not a multiple of run.accum_grad_iters %d: gradients accumulated "
                       "at the end of an epoch carry over (as the original) and are not in its checkpoint.",
                       run.iters_per_epoch, run.accum_grad_iters)
    return run


def check_valid_splits(run: RunConfig, datasets: dict, origin) -> None:
    """Every split of ``run.valid_splits`` must be one that a dataset (``{name: {split: dataset}}``) has."""
    for split in run.valid_splits:
        if not any(split in parts for parts in datasets.values()):
            have = "; ".join(f"{name} has {', '.join(sorted(parts))}" for name, parts in datasets.items())
            raise ConfigError(
                f"run.valid_splits (set in {origin('run.valid_splits')}) names {split!r}, which no dataset has: {have}. "
                "The HIC val split comes with the oxford_hic dataset over a prepared folder that holds val.json "
                "(see docs/TRAINING.md); or set run.valid_splits=[] to skip validation.")


def _same(old, new) -> bool:
    if isinstance(new, (int, float)) and not isinstance(new, bool) and isinstance(old, (int, float, str)):
        try:
            return float(old) == float(new)
        except ValueError:
            return False
    return old == new


def changed_run_keys(saved_run: dict, run: RunConfig) -> list[str]:
    """``run.key saved -> now`` for each key (other than bookkeeping) that differs from the run
    section saved in a checkpoint; a key the checkpoint's config lacks counts as its default."""
    defaults = {f.name: (f.default if f.default_factory is dataclasses.MISSING else f.default_factory())
                for f in dataclasses.fields(RunConfig)}
    changes = []
    for name, value in run.as_dict().items():
        if name in BOOKKEEPING_KEYS:
            continue
        saved = saved_run.get(name, defaults[name])
        if saved is None and defaults[name] is not None:
            saved = defaults[name]
        if saved is dataclasses.MISSING or not _same(saved, value):
            changes.append(f"run.{name} {'(not set)' if saved is dataclasses.MISSING else repr(saved)} -> {value!r}")
    return changes
