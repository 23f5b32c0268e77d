"""The epoch-based runner (``runner_base``, REFERENCE 6): ``iters_per_epoch`` batches per epoch from
an infinite loader, the LR set every iteration before the forward, AdamW, gradient accumulation
without loss scaling, optional AMP, DDP, a checkpoint per epoch.

Additions over the original, each optional or invisible to its checkpoints: exact resume (data
order and RNG states are saved under extra checkpoint keys), mid-epoch checkpoints
(``run.save_every_iters``), ``metrics.jsonl`` and a loss/LR plot, atomic checkpoint writes, output
under the working directory with unique job folders.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import random
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, IterableDataset

from minigpt4.common import dist_utils
from minigpt4.common.errors import ConfigError
from minigpt4.common.logger import MetricLogger, SmoothedValue
from minigpt4.common.optims import build_optimizer
from minigpt4.common.registry import registry
from minigpt4.datasets.datasets.dataloader_utils import (
    InfiniteLoader,
    MultiIterLoader,
    ResumableDistributedSampler,
    StreamLoader,
    seed_worker,
)

logger = logging.getLogger(__name__)

# run keys of the original (REFERENCE 2.7 and its unused validator), plus this package's additions
RUN_KEYS = {
    "task", "runner", "lr_sched", "init_lr", "min_lr", "warmup_lr", "warmup_steps", "lr_decay_rate",
    "weight_decay", "beta2", "max_epoch", "iters_per_epoch", "batch_size_train", "batch_size_eval",
    "num_workers", "accum_grad_iters", "log_freq", "seed", "output_dir", "amp", "resume_ckpt_path",
    "evaluate", "train_splits", "valid_splits", "test_splits", "use_dist_eval_sampler", "device",
    "world_size", "dist_url", "distributed", "gpu", "rank", "dist_backend",
    "train_dataset_ratios", "max_iters", "iters_per_inner_epoch", "max_len", "min_len", "num_beams",
    "num_ans_candidates", "inference_method", "k_test",
    "save_every_iters", "amp_dtype",  # new
}
REQUIRED_TRAIN_KEYS = ("lr_sched", "init_lr", "min_lr", "weight_decay", "max_epoch", "batch_size_train",
                       "num_workers", "seed", "output_dir")
DEFAULT_ITERS_PER_EPOCH = 10000  # the original's fallback (its loader has no len())


def check_run_config(cfg, training: bool = True) -> None:
    """Unknown ``run`` keys and (when training) missing required ones raise, naming key and file."""
    run = cfg.run_cfg
    for key in run.keys():
        if key not in RUN_KEYS:
            import difflib

            close = difflib.get_close_matches(key, RUN_KEYS, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"Unknown run key 'run.{key}' (set in {cfg.origin('run.' + key)}).{hint}")
    if training:
        for key in REQUIRED_TRAIN_KEYS:
            if run.get(key) is None:
                raise ConfigError(f"run.{key} is required for training; add it to the 'run:' section of {cfg.args.cfg_path}.")


def resolve_device(run_cfg) -> torch.device:
    """``run.device`` ("cuda" or "cpu"); under DDP on CUDA, this process's GPU."""
    name = str(run_cfg.get("device", "cuda"))
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"run.device is {name!r} but CUDA is not available; pass --options run.device=cpu.")
        if run_cfg.get("distributed", False):
            return torch.device("cuda", int(run_cfg.get("gpu", 0)))
    return torch.device(name)


def setup_seeds(run_cfg) -> None:
    """``run.seed + rank`` for Python, NumPy and torch; deterministic cuDNN (as the original)."""
    seed = int(run_cfg.seed) + dist_utils.get_rank()
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True


def create_job_dir(output_dir: str) -> tuple[str, Path]:
    """A fresh ``<output_dir>/<job_id>`` (relative to the working directory), made by rank 0 and
    shared with the other ranks. Job ids are timestamps to the second, with a suffix when taken."""
    job_id = None
    if dist_utils.is_main_process():
        stamp = datetime.datetime.now().strftime("%Y%m%d%H%M%S")
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        for n in range(10_000):
            candidate = stamp if n == 0 else f"{stamp}_{n}"
            try:
                (Path(output_dir) / candidate).mkdir()  # atomic: fails if another run took it
                job_id = candidate
                break
            except FileExistsError:
                continue
    job_id = dist_utils.broadcast_object(job_id)
    return job_id, Path(output_dir) / job_id


def get_rng_state() -> dict:
    """Python, NumPy, torch (and CUDA) RNG states as plain Python lists (picklable across ranks and
    loadable with ``weights_only=True``)."""
    np_state = np.random.get_state()
    state = {
        "python": [list(x) if isinstance(x, tuple) else x for x in random.getstate()],
        "numpy": [np_state[0], np_state[1].tolist(), *(x.item() if hasattr(x, "item") else x for x in np_state[2:])],
        "torch": torch.get_rng_state().tolist(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state().tolist()
    return state


def set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), *rest))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(torch.tensor(state["cuda"], dtype=torch.uint8))


def prepare_sample(samples, device: torch.device):
    """Move every tensor (in nested dicts/lists) to ``device``."""
    if isinstance(samples, torch.Tensor):
        return samples.to(device, non_blocking=True)
    if isinstance(samples, dict):
        return {k: prepare_sample(v, device) for k, v in samples.items()}
    if isinstance(samples, list):
        return [prepare_sample(v, device) for v in samples]
    return samples


def atomic_save(obj, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


@registry.register_runner("runner_base")
class RunnerBase:
    def __init__(self, cfg, task, model, datasets, job_id: str, output_dir: Path | None = None):
        check_run_config(cfg)
        self.config, self.task, self.job_id = cfg, task, job_id
        run = self.run_cfg = cfg.run_cfg
        self.rank, self.world_size = dist_utils.get_rank(), dist_utils.get_world_size()
        self.output_dir = Path(output_dir) if output_dir else Path(run.output_dir) / job_id
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.max_epoch = int(run.max_epoch)
        self.batch_size = int(run.batch_size_train)
        self.accum_grad_iters = int(run.get("accum_grad_iters", 1))
        self.log_freq = int(run.get("log_freq", 50))
        self.save_every_iters = int(run.get("save_every_iters") or 0)

        # placement and DDP wrapping happen once, here
        self.device = resolve_device(run)
        self.unwrapped_model = model.place(self.device) if hasattr(model, "place") else model.to(self.device)
        self.model = self.unwrapped_model
        if self.world_size > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = DistributedDataParallel(self.unwrapped_model, device_ids=ids)

        self.optimizer = build_optimizer(self.model, run)
        self.amp_dtype, self.scaler = self.precision_policy()
        self.train_loader = self.build_train_loader(datasets)
        self.iters_per_epoch = self.resolve_iters_per_epoch()
        self.lr_scheduler = registry.get_lr_scheduler_class(run.lr_sched)(
            optimizer=self.optimizer,
            max_epoch=self.max_epoch,
            iters_per_epoch=self.iters_per_epoch,
            min_lr=float(run.min_lr),
            init_lr=float(run.init_lr),
            decay_rate=run.get("lr_decay_rate", None),
            warmup_start_lr=run.get("warmup_lr", -1),
            warmup_steps=run.get("warmup_steps", 0),
        )
        self.start_epoch, self.start_iter = 0, 0
        self._last_record = None  # (time, global step) of the last metrics.jsonl row

    # -- setup ------------------------------------------------------------------------------------
    def precision_policy(self):
        """fp16 autocast + GradScaler on CUDA when ``run.amp``; bf16 autocast (no scaler) with
        ``run.amp_dtype: bfloat16``; float32 otherwise (and on CPU unless bf16 is asked for)."""
        run = self.run_cfg
        if not run.get("amp", False):
            return None, None
        dtype = str(run.get("amp_dtype", "float16"))
        if dtype in ("bfloat16", "bf16"):
            return torch.bfloat16, None
        if dtype not in ("float16", "fp16"):
            raise ConfigError(f"run.amp_dtype must be float16 or bfloat16, got {dtype!r}.")
        if self.device.type != "cuda":
            logger.info("run.amp with float16 needs CUDA; training in float32 on %s.", self.device)
            return None, None
        return torch.float16, torch.amp.GradScaler("cuda")

    def autocast(self):
        enabled = self.amp_dtype is not None
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype, enabled=enabled)

    def make_loader(self, dataset):
        run = self.run_cfg
        seed = int(run.seed)
        common = dict(
            batch_size=self.batch_size,
            num_workers=int(run.num_workers),
            pin_memory=self.device.type == "cuda",
            generator=torch.Generator().manual_seed(seed + self.rank),  # worker seeds, off the global RNG
            worker_init_fn=seed_worker,
        )
        if isinstance(dataset, IterableDataset):
            return StreamLoader(DataLoader(dataset, **common))
        if len(dataset) // self.world_size < self.batch_size:
            raise ValueError(
                f"Dataset {getattr(dataset, 'name', '')!r} has {len(dataset)} samples, fewer than "
                f"{self.world_size} process(es) x batch_size_train {self.batch_size}: no full batch can be drawn."
            )
        sampler = ResumableDistributedSampler(dataset, self.world_size, self.rank, shuffle=True, seed=seed)
        loader = DataLoader(dataset, sampler=sampler, collate_fn=getattr(dataset, "collater", None), drop_last=True, **common)
        return InfiniteLoader(loader, sampler)

    def build_train_loader(self, datasets: dict) -> MultiIterLoader:
        train_splits = list(self.run_cfg.get("train_splits", ["train"]))
        if "train" not in train_splits:
            raise ConfigError(f"run.train_splits must contain 'train' to train; got {train_splits}.")
        members = [splits["train"] for splits in datasets.values() if "train" in splits]
        records = sum(len(d) for d in members if not isinstance(d, IterableDataset))
        logger.info("Loaded %d records for train split from the dataset.", records)
        ratios = [d.sample_ratio for d in members] if hasattr(members[0], "sample_ratio") else None
        return MultiIterLoader([self.make_loader(d) for d in members], ratios)

    def resolve_iters_per_epoch(self) -> int:
        value = self.run_cfg.get("iters_per_epoch")
        if value is None:
            logger.warning("run.iters_per_epoch is not set; using %d, as the original.", DEFAULT_ITERS_PER_EPOCH)
            return DEFAULT_ITERS_PER_EPOCH
        if int(value) % self.accum_grad_iters:
            logger.warning("iters_per_epoch %d is not a multiple of accum_grad_iters %d: gradients accumulated at "
                           "the end of an epoch carry over (as the original) and are not in its checkpoint.",
                           value, self.accum_grad_iters)
        return int(value)

    # -- training ----------------------------------------------------------------------------------
    def train(self) -> None:
        start = time.time()
        self.log_config()
        if self.run_cfg.get("evaluate", False):
            logger.info("run.evaluate is set: nothing to train (the task's evaluation is a no-op).")
            return
        if self.run_cfg.get("resume_ckpt_path"):
            self.resume(self.run_cfg.resume_ckpt_path)
        for epoch in range(self.start_epoch, self.max_epoch):
            logger.info("Start training")
            first_iter = self.start_iter if epoch == self.start_epoch else 0
            stats = self.train_epoch(epoch, first_iter)
            self.log_stats(epoch, stats)
            self.save_checkpoint(epoch, iters_done=self.iters_per_epoch)
            if dist_utils.is_main_process():
                self.plot_metrics()
            dist_utils.barrier()
        logger.info("Training time %s", datetime.timedelta(seconds=int(time.time() - start)))

    def train_epoch(self, epoch: int, first_iter: int = 0) -> dict:
        """One epoch = ``iters_per_epoch`` batches (REFERENCE 6.2); returns global-average lr and loss."""
        n = self.iters_per_epoch
        self.model.train()  # frozen parts stay in eval mode (the model's train() override)
        metric_logger = MetricLogger(delimiter="  ")
        metric_logger.add_meter("lr", SmoothedValue(window_size=1, fmt="{value:.6f}"))
        metric_logger.add_meter("loss", SmoothedValue(window_size=1, fmt="{value:.4f}"))
        logger.info("Start training epoch %d, %d iters per inner epoch.", epoch, n)
        for i in metric_logger.log_every(range(first_iter, n), self.log_freq, f"Train: data epoch: [{epoch}]"):
            samples = prepare_sample(next(self.train_loader), self.device)
            samples.update(epoch=epoch, num_iters_per_epoch=n, iters=i)
            self.lr_scheduler.step(cur_epoch=epoch, cur_step=i)
            with self.autocast():
                loss = self.task.train_step(self.model, samples)
            # as the original, the loss is not divided by accum_grad_iters
            (self.scaler.scale(loss) if self.scaler else loss).backward()
            if (i + 1) % self.accum_grad_iters == 0:
                if self.scaler:
                    self.scaler.step(self.optimizer)
                    self.scaler.update()
                else:
                    self.optimizer.step()
                self.optimizer.zero_grad()
            lr, loss_value = self.optimizer.param_groups[0]["lr"], loss.item()  # one device sync
            metric_logger.update(loss=loss_value, lr=lr)
            if i % self.log_freq == 0 or i == n - 1:
                self.record_metrics(epoch, i, loss_value, lr)
            if self.is_mid_epoch_save_point(i):
                self.save_checkpoint(epoch, iters_done=i + 1)
        metric_logger.synchronize_between_processes()
        logger.info("Averaged stats: %s", metric_logger.global_avg())
        return {name: meter.global_avg for name, meter in metric_logger.meters.items()}

    def is_mid_epoch_save_point(self, i: int) -> bool:
        done = i + 1
        return (
            self.save_every_iters > 0
            and done % self.save_every_iters == 0
            and done < self.iters_per_epoch  # the end of the epoch has its own checkpoint
            and done % self.accum_grad_iters == 0  # no half-accumulated gradients in flight
        )

    # -- logging -----------------------------------------------------------------------------------
    def log_config(self) -> None:
        if dist_utils.is_main_process():
            with open(self.output_dir / "log.txt", "a") as f:
                f.write(json.dumps(self.config.to_dict(), indent=4) + "\n")

    def log_stats(self, epoch: int, stats: dict) -> None:
        if dist_utils.is_main_process():
            record = {"epoch": epoch, **{f"train_{k}": v for k, v in stats.items()}}
            with open(self.output_dir / "log.txt", "a") as f:
                f.write(json.dumps(record) + "\n")

    def record_metrics(self, epoch: int, i: int, loss: float, lr: float) -> None:
        """One ``metrics.jsonl`` row (rank 0's loss); samples/s counts all processes."""
        if not dist_utils.is_main_process():
            return
        now, step = time.time(), epoch * self.iters_per_epoch + i
        rate = None
        if self._last_record is not None and step > self._last_record[1]:
            steps = step - self._last_record[1]
            rate = steps * self.batch_size * self.world_size / max(now - self._last_record[0], 1e-9)
        self._last_record = (now, step)
        row = {"epoch": epoch, "iter": i, "step": step, "loss": loss, "lr": lr, "samples_per_s": rate}
        with open(self.output_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")

    def plot_metrics(self) -> None:
        """``loss_lr.png`` from ``metrics.jsonl`` (loss and LR against the global step)."""
        path = self.output_dir / "metrics.jsonl"
        if not path.exists():
            return
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        steps = [r["step"] for r in rows]
        fig, (ax_loss, ax_lr) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
        ax_loss.plot(steps, [r["loss"] for r in rows])
        ax_loss.set_ylabel("loss")
        ax_lr.plot(steps, [r["lr"] for r in rows], color="tab:orange")
        ax_lr.set_ylabel("learning rate")
        ax_lr.set_xlabel("step")
        ax_loss.set_title(f"{self.job_id}: training loss and learning rate")
        fig.tight_layout()
        fig.savefig(self.output_dir / "loss_lr.png.tmp.png")
        plt.close(fig)
        os.replace(self.output_dir / "loss_lr.png.tmp.png", self.output_dir / "loss_lr.png")

    # -- checkpoints -------------------------------------------------------------------------------
    def checkpoint_path(self, epoch: int, iters_done: int) -> Path:
        if iters_done >= self.iters_per_epoch:
            return self.output_dir / f"checkpoint_{epoch}.pth"
        return self.output_dir / f"checkpoint_{epoch}_iter{iters_done}.pth"

    def save_checkpoint(self, epoch: int, iters_done: int) -> None:
        """The original's five keys (``model`` = trainable tensors only) plus what exact resume needs:
        ``iters_done`` in ``epoch``, the data-loader position and every rank's RNG states."""
        rng_states = dist_utils.all_gather_object(get_rng_state())  # every rank takes part
        if not dist_utils.is_main_process():
            return
        state = {
            "model": self.unwrapped_model.trainable_state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "config": self.config.to_dict(),
            "scaler": self.scaler.state_dict() if self.scaler else None,
            "epoch": epoch,
            "iters_done": iters_done,
            "iters_per_epoch": self.iters_per_epoch,
            "world_size": self.world_size,
            "data_state": self.train_loader.state_dict(),
            "rng_states": rng_states,
        }
        path = self.checkpoint_path(epoch, iters_done)
        logger.info("Saving checkpoint at epoch %d to %s.", epoch, path)
        atomic_save(state, path)

    def resume(self, path: str) -> None:
        """Restore model, optimizer, scaler and -- when the checkpoint has them (ours) -- the position
        in the epoch, the data order and the RNG states. An original checkpoint resumes at the next
        epoch with a fresh data order, as the original does."""
        if str(path).startswith(("http://", "https://")):
            cache = Path(registry.get_path("cache_root") or ".") / "resume" / Path(str(path)).name
            path = dist_utils.download_once(str(path), cache)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"run.resume_ckpt_path {str(path)!r} does not exist.")
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        loaded = set(self.unwrapped_model.load_checkpoint(str(path)))
        missing = set(self.unwrapped_model.trainable_state_dict()) - loaded
        if missing:
            raise KeyError(f"Resume checkpoint {path} lacks trainable tensors: {sorted(missing)}.")
        self.optimizer.load_state_dict(ckpt["optimizer"])
        if self.scaler is not None and ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        iters_done = int(ckpt.get("iters_done", self.iters_per_epoch))
        if ckpt.get("iters_per_epoch", self.iters_per_epoch) != self.iters_per_epoch:
            logger.warning("Checkpoint iters_per_epoch %s differs from run.iters_per_epoch %d.",
                           ckpt.get("iters_per_epoch"), self.iters_per_epoch)
        if iters_done >= self.iters_per_epoch:
            self.start_epoch, self.start_iter = int(ckpt["epoch"]) + 1, 0
        else:
            self.start_epoch, self.start_iter = int(ckpt["epoch"]), iters_done
        same_world = ckpt.get("world_size") == self.world_size
        if "data_state" in ckpt and same_world:
            self.train_loader.load_state_dict(ckpt["data_state"])
        if "rng_states" in ckpt and same_world:
            set_rng_state(ckpt["rng_states"][self.rank])
        elif "rng_states" in ckpt:
            logger.warning("Checkpoint written by %s process(es), now %d: data order and RNG states start afresh.",
                           ckpt.get("world_size"), self.world_size)
        logger.info("Resume checkpoint from %s (epoch %d, iteration %d).", path, self.start_epoch, self.start_iter)
