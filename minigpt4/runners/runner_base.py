"""The epoch-based runner (``runner_base``, REFERENCE 6): ``iters_per_epoch`` batches per epoch from
an infinite loader, the LR set every iteration before the forward, AdamW, gradient accumulation
without loss scaling, optional AMP, DDP, a checkpoint per epoch.

Additions over the original, each optional or invisible to its checkpoints: exact resume (data
order and RNG states are saved under extra checkpoint keys), mid-epoch checkpoints
(``run.save_every_iters``), ``metrics.jsonl`` and a loss/LR plot, atomic checkpoint writes, output
under the working directory with unique job folders, made only once the run has started; and, off
by default: validation and sample captions after each epoch (``samples``), TensorBoard, fewer kept
checkpoints, fused AdamW, activation checkpointing of the LLM (docs/TRAINING.md, "Research options").

The concerns live beside it: the typed run section (``run_config``), the job folder, seeds and
checkpoint files (``job``), what rank 0 records (``metrics``), the loaders (``dataloader_utils``).
"""

from __future__ import annotations

import datetime
import logging
import time
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel

from minigpt4.common import dist_utils
from minigpt4.common.devices import resolve_device
from minigpt4.common.errors import CheckpointError, ConfigError
from minigpt4.common.logger import MetricLogger, SmoothedValue, setup_logger
from minigpt4.common.optims import build_optimizer
from minigpt4.common.registry import registry
from minigpt4.datasets.datasets.dataloader_utils import build_train_loader
from minigpt4.inference.loading import model_info
from minigpt4.runners import job, samples
from minigpt4.runners.metrics import RunLog
from minigpt4.runners.run_config import RunConfig, build_run_config, changed_run_keys, check_valid_splits
from minigpt4.tasks import setup_task

logger = logging.getLogger(__name__)


def prepare_sample(samples, device: torch.device):
    """Move every tensor (in nested dicts/lists) to ``device``."""
    if isinstance(samples, torch.Tensor):
        return samples.to(device, non_blocking=True)
    if isinstance(samples, dict):
        return {k: prepare_sample(v, device) for k, v in samples.items()}
    if isinstance(samples, list):
        return [prepare_sample(v, device) for v in samples]
    return samples


@registry.register_runner("runner_base")
class RunnerBase:
    @classmethod
    def from_config(cls, cfg) -> "RunnerBase":
        """Everything a training job needs, from a :class:`~minigpt4.common.config.Config`: the run
        section checked (once), processes joined, seeds set, then the task, datasets and model."""
        run = build_run_config(cfg)
        dist_utils.init_distributed_mode(run.device, run.dist_url)
        job.setup_seeds(run.seed)
        setup_logger()
        cfg.pretty_print()
        task = setup_task(cfg, run.task)
        datasets = task.build_datasets(cfg)
        model = task.build_model(cfg, device=resolve_device(run.device, setting="run.device"))
        return registry.get_runner_class(run.runner)(cfg, task, model, datasets, run=run)

    def __init__(self, cfg, task, model, datasets, job_id: str | None = None, run: RunConfig | None = None):
        self.config, self.task = cfg, task
        self.run = run = run or build_run_config(cfg)
        self.rank, self.world_size = dist_utils.get_rank(), dist_utils.get_world_size()
        self.job_id, self.output_dir = job_id, None  # the job folder is made when training starts
        self.max_epoch, self.iters_per_epoch = run.max_epoch, run.iters_per_epoch

        # placement and DDP wrapping happen once, here
        self.device = resolve_device(run.device, setting="run.device")
        self.unwrapped_model = model.place(self.device) if hasattr(model, "place") else model.to(self.device)
        self.model = self.unwrapped_model
        if run.llm_grad_checkpoint:
            self.enable_llm_grad_checkpoint()
        if self.world_size > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            # llama_proj and LoRA adapters all get a gradient every step: DDP need not look for unused ones
            unused = bool(getattr(self.unwrapped_model, "ddp_find_unused_parameters", False))
            self.model = DistributedDataParallel(self.unwrapped_model, device_ids=ids, find_unused_parameters=unused)

        self.optimizer = build_optimizer(self.model, run.init_lr, run.weight_decay, run.beta2, fused=run.fused_adamw)
        self.amp_dtype, self.scaler = self.precision_policy()
        self.datasets = datasets  # the validation splits are read from here after each epoch
        check_valid_splits(run, datasets, cfg.origin)
        self.sample_count = samples.check_samples(run, self.unwrapped_model, datasets, cfg.origin)
        self.best = None  # {"metric", "value", "epoch"} of checkpoint_best.pth (task.best_metric)
        self.train_loader = build_train_loader(
            datasets, run.batch_size_train, run.num_workers, run.seed, self.rank, self.world_size,
            pin_memory=self.device.type == "cuda",
        )
        self.lr_scheduler = registry.get_lr_scheduler_class(run.lr_sched)(
            optimizer=self.optimizer,
            max_epoch=run.max_epoch,
            iters_per_epoch=run.iters_per_epoch,
            min_lr=run.min_lr,
            init_lr=run.init_lr,
            decay_rate=run.lr_decay_rate,
            warmup_start_lr=run.warmup_lr,
            warmup_steps=run.warmup_steps,
        )
        self.start_epoch, self.start_iter = 0, 0
        self.log: RunLog | None = None

    def enable_llm_grad_checkpoint(self) -> None:
        """``run.llm_grad_checkpoint``: recompute the LLM's activations in the backward (non-reentrant)."""
        llm = getattr(self.unwrapped_model, "llama_model", None)
        if llm is None:
            raise ConfigError("run.llm_grad_checkpoint: this model has no language model to checkpoint; remove the key.")
        if hasattr(llm, "activation_checkpointing_enable"):  # its name in newer transformers
            llm.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        logger.info("Activation checkpointing of the language model is on (run.llm_grad_checkpoint).")

    def precision_policy(self):
        """fp16 autocast + GradScaler on CUDA when ``run.amp``; bf16 autocast (no scaler) with
        ``run.amp_dtype: bfloat16``; float32 otherwise (and on CPU unless bf16 is asked for)."""
        if not self.run.amp:
            return None, None
        if self.run.amp_dtype in ("bfloat16", "bf16"):
            return torch.bfloat16, None
        if self.device.type != "cuda":
            logger.info("run.amp with float16 needs CUDA; training in float32 on %s.", self.device)
            return None, None
        return torch.float16, torch.amp.GradScaler("cuda")

    def autocast(self):
        enabled = self.amp_dtype is not None
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype, enabled=enabled)

    # -- training ----------------------------------------------------------------------------------
    def train(self) -> Path | None:
        """Train from the start (or the resume point) to ``run.max_epoch``; returns the job folder."""
        start = time.time()
        if self.run.evaluate:
            logger.warning("run.evaluate is set: nothing to train (the task's evaluation is a no-op).")
            return None
        if self.run.resume_ckpt_path:
            self.resume(self.run.resume_ckpt_path)
        self.open_job()
        for epoch in range(self.start_epoch, self.max_epoch):
            logger.info("Start training")
            stats = self.train_epoch(epoch, self.start_iter if epoch == self.start_epoch else 0)
            self.end_epoch(epoch, stats)
        self.log.close()
        logger.info("Training time %s", datetime.timedelta(seconds=int(time.time() - start)))
        return self.output_dir

    def open_job(self) -> None:
        """The job folder (only now: a run that fails to start leaves none) and its ``log.txt``."""
        if self.job_id is None:
            self.job_id, self.output_dir = job.create_job_dir(self.run.output_dir)
        else:
            self.output_dir = Path(self.run.output_dir) / self.job_id
            self.output_dir.mkdir(parents=True, exist_ok=True)
        global_batch = self.run.batch_size_train * self.world_size
        self.log = RunLog(self.output_dir, self.job_id, global_batch, self.iters_per_epoch, self.run.tensorboard)
        self.log.config(self.config.to_dict())

    def train_epoch(self, epoch: int, first_iter: int = 0) -> dict:
        """One epoch = ``iters_per_epoch`` batches (REFERENCE 6.2); returns global-average lr and loss."""
        n, accum = self.iters_per_epoch, self.run.accum_grad_iters
        self.model.train()  # frozen parts stay in eval mode (the model's train() override)
        metric_logger = MetricLogger(delimiter="  ")
        metric_logger.add_meter("lr", SmoothedValue(window_size=1, fmt="{value:.6f}"))
        metric_logger.add_meter("loss", SmoothedValue(window_size=1, fmt="{value:.4f}"))
        logger.info("Start training epoch %d, %d iters per inner epoch.", epoch, n)
        for i in metric_logger.log_every(range(first_iter, n), self.run.log_freq, f"Train: data epoch: [{epoch}]"):
            samples = prepare_sample(next(self.train_loader), self.device)
            self.lr_scheduler.step(cur_epoch=epoch, cur_step=i)
            with self.autocast():
                loss = self.task.train_step(self.model, samples)
            loss, extra = (loss["loss"], loss.get("log", {})) if isinstance(loss, dict) else (loss, {})
            # as the original, the loss is not divided by accum_grad_iters
            (self.scaler.scale(loss) if self.scaler else loss).backward()
            logged = i % self.run.log_freq == 0 or i == n - 1
            grad_norm = None
            if (i + 1) % accum == 0:
                if logged and self.run.tensorboard:
                    grad_norm = self.grad_norm()
                if self.scaler:
                    self.scaler.step(self.optimizer)
                    self.scaler.update()
                else:
                    self.optimizer.step()
                self.optimizer.zero_grad()
            lr = self.optimizer.param_groups[0]["lr"]
            loss_value, *extra_values = torch.stack([loss.detach().float(), *extra.values()]).tolist()  # one sync
            extra = dict(zip(extra, extra_values))
            metric_logger.update(loss=loss_value, lr=lr, **extra)
            if logged:
                self.log.step(epoch, i, loss_value, lr, extra, grad_norm)
            if self.is_mid_epoch_save_point(i):
                self.save_checkpoint(epoch, iters_done=i + 1)
        metric_logger.synchronize_between_processes()
        logger.info("Averaged stats: %s", metric_logger.global_avg())
        return {name: meter.global_avg for name, meter in metric_logger.meters.items()}

    def grad_norm(self) -> float:
        """The L2 norm of the trainable parameters' gradients (unscaled), over all of them."""
        norms = [p.grad.detach().float().norm() for p in self.unwrapped_model.parameters() if p.grad is not None]
        scale = self.scaler.get_scale() if self.scaler else 1.0
        return float(torch.stack(norms).norm()) / scale if norms else 0.0

    def end_epoch(self, epoch: int, stats: dict) -> None:
        """After each epoch: the task's validation numbers (``run.valid_splits``), its line in
        ``log.txt``, its checkpoint, ``checkpoint_best.pth`` when the task's ``best_metric`` improved,
        the sample captions (``run.sample_captions``), older checkpoints removed
        (``run.keep_checkpoints``), the redrawn plot."""
        validation = {}
        if self.run.valid_splits:
            validation = self.task.validate(self.unwrapped_model, self.datasets, self.run.valid_splits,
                                            self.run.batch_size_eval or self.run.batch_size_train)
        self.log.epoch(epoch, stats, validation)
        improved = self.update_best(epoch, validation)
        self.save_checkpoint(epoch, iters_done=self.iters_per_epoch)
        if improved and dist_utils.is_main_process():
            path = job.checkpoint_path(self.output_dir, epoch)
            job.copy_checkpoint(path, job.checkpoint_path(self.output_dir, "best"))
        if self.run.sample_captions and dist_utils.is_main_process():
            self.write_sample_captions(epoch)
        if dist_utils.is_main_process():
            job.prune_checkpoints(self.output_dir, self.run.keep_checkpoints, epoch)
        self.log.plot()
        dist_utils.barrier()

    def write_sample_captions(self, epoch: int) -> None:
        """Greedy captions of the first ``run.sample_captions`` validation images, from this epoch's weights."""
        dataset = samples.sample_dataset(self.datasets, self.run.valid_splits)
        info = {**model_info(self.config, self.device), "ckpt": str(job.checkpoint_path(self.output_dir, epoch)),
                "epoch": epoch}
        records = samples.caption_samples(self.unwrapped_model, dataset, self.sample_count,
                                          self.run.batch_size_eval or self.run.batch_size_train, info)
        path = samples.write_samples(self.output_dir, epoch, records)
        self.log.samples(epoch, records)
        logger.info("Sample captions of epoch %d: %s", epoch, path)

    def update_best(self, epoch: int, validation: dict) -> bool:
        """Whether ``validation`` beats the best so far on the task's ``best_metric``."""
        name, mode = self.task.best_metric or (None, None)
        if name is None or validation.get(name) is None:
            return False
        value = float(validation[name])
        if self.best is not None and not (value > self.best["value"] if mode == "max" else value < self.best["value"]):
            return False
        self.best = {"metric": name, "value": value, "epoch": epoch}
        logger.info("Best %s so far: %.4f (epoch %d) -> checkpoint_best.pth", name, value, epoch)
        return True

    def is_mid_epoch_save_point(self, i: int) -> bool:
        done, every = i + 1, self.run.save_every_iters
        return (
            every > 0
            and done % every == 0
            and done < self.iters_per_epoch  # the end of the epoch has its own checkpoint
            and done % self.run.accum_grad_iters == 0  # no half-accumulated gradients in flight
        )

    # -- checkpoints -------------------------------------------------------------------------------
    def save_checkpoint(self, epoch: int, iters_done: int) -> None:
        """The original's five keys (``model`` = trainable tensors only) plus what exact resume needs:
        ``iters_done`` in ``epoch``, the data-loader position and every rank's RNG states."""
        rng_states = dist_utils.all_gather_object(job.get_rng_state())  # every rank takes part
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
            "best": self.best,
        }
        mid_epoch = iters_done < self.iters_per_epoch
        job.save_checkpoint(state, job.checkpoint_path(self.output_dir, epoch, iters_done if mid_epoch else None))

    def resume(self, path_or_url: str) -> None:
        """Restore model, optimizer, scaler and -- when the checkpoint has them (ours) -- the position
        in the epoch, the data order and the RNG states. An original checkpoint resumes at the next
        epoch with a fresh data order, as the original does."""
        path, ckpt = job.read_resume_checkpoint(path_or_url)
        loaded = set(self.unwrapped_model.load_checkpoint(str(path)))
        missing = set(self.unwrapped_model.trainable_state_dict()) - loaded
        if missing:
            raise CheckpointError(f"{job.RESUME_KEY} {str(path)!r} lacks trainable tensors {sorted(missing)}: it was "
                                  "written for another model config (freeze_vit / freeze_qformer).")
        try:
            self.optimizer.load_state_dict(ckpt["optimizer"])
        except (ValueError, KeyError) as err:
            raise CheckpointError(f"{job.RESUME_KEY} {str(path)!r}: its optimizer state does not fit this model's "
                                  f"trainable parameters ({err}).") from None
        if self.scaler is not None and ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        self.warn_changed_run_keys(path, ckpt)
        self.best = ckpt.get("best")
        epoch, iters_done = int(ckpt["epoch"]), int(ckpt.get("iters_done", self.iters_per_epoch))
        if iters_done >= min(int(ckpt.get("iters_per_epoch", self.iters_per_epoch)), self.iters_per_epoch):
            self.start_epoch, self.start_iter = epoch + 1, 0
        else:
            self.start_epoch, self.start_iter = epoch, iters_done
        if self.start_epoch >= self.max_epoch:
            raise ConfigError(
                f"{job.RESUME_KEY} {str(path)!r} ends epoch {epoch}, the last of run.max_epoch={self.max_epoch}: "
                f"nothing is left to train. Raise run.max_epoch (e.g. --options run.max_epoch={self.max_epoch + 5}) "
                "to train on."
            )
        same_world = ckpt.get("world_size") == self.world_size
        if "data_state" in ckpt and same_world:
            self.train_loader.load_state_dict(ckpt["data_state"])
        if "rng_states" in ckpt and same_world:
            job.set_rng_state(ckpt["rng_states"][self.rank])
        elif "rng_states" in ckpt:
            logger.warning("Checkpoint written by %s process(es), now %d: data order and RNG states start afresh.",
                           ckpt.get("world_size"), self.world_size)
        logger.info("Resume checkpoint from %s (epoch %d, iteration %d).", path, self.start_epoch, self.start_iter)

    def warn_changed_run_keys(self, path: Path, ckpt: dict) -> None:
        config = ckpt.get("config")
        saved_run = config.get("run") if isinstance(config, dict) else None
        changes = changed_run_keys(saved_run, self.run) if isinstance(saved_run, dict) else []
        if changes:
            logger.warning("Resuming from %s with run keys that differ from its run: %s. Training goes on with the "
                           "new values, so it will not match an uninterrupted run.", path, "; ".join(changes))
