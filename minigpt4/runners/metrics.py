"""What a training job records in its folder, written by rank 0 only:

* ``log.txt``: the full config (JSON, indent 4), then one JSON line per epoch (``epoch``,
  ``train_lr``, ``train_loss``: global averages over processes), as the original;
* ``metrics.jsonl``: one row every ``run.log_freq`` iterations and at the end of each epoch
  (``epoch``, ``iter``, ``step``, rank 0's ``loss``, ``lr``, ``samples_per_s`` over all processes);
* ``loss_lr.png``: loss and LR against the global step, redrawn at the end of each epoch;
* ``tb/`` (``run.tensorboard``): TensorBoard event files with the same numbers against the global step
  (``train/loss``, ``train/lr``, ``train/grad_norm``, ``train/samples_per_s``, the validation numbers
  as ``val/<name>`` at the step that ends each epoch) and each epoch's sample captions as text.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from minigpt4.common import dist_utils
from minigpt4.common.plots import new_figure, save_png


class RunLog:
    def __init__(self, job_dir: Path, job_id: str, global_batch: int, iters_per_epoch: int, tensorboard: bool = False):
        self.job_dir, self.job_id = Path(job_dir), job_id
        self.global_batch, self.iters_per_epoch = global_batch, iters_per_epoch
        self.main = dist_utils.is_main_process()
        self._last = None  # (time, global step) of the last metrics row
        self.tb = None
        if tensorboard and self.main:
            from torch.utils.tensorboard import SummaryWriter  # the optional tensorboard extra

            self.tb = SummaryWriter(log_dir=str(self.job_dir / "tb"))

    def _scalars(self, prefix: str, values: dict, step: int) -> None:
        if self.tb is None:
            return
        for name, value in values.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self.tb.add_scalar(f"{prefix}/{name}", value, step)
        self.tb.flush()

    def _append(self, name: str, text: str) -> None:
        if self.main:
            with open(self.job_dir / name, "a", encoding="utf-8") as f:
                f.write(text + "\n")

    def config(self, config: dict) -> None:
        self._append("log.txt", json.dumps(config, indent=4))

    def epoch(self, epoch: int, stats: dict, validation: dict | None = None) -> None:
        record = {"epoch": epoch, **{f"train_{k}": v for k, v in stats.items()}, **(validation or {})}
        self._append("log.txt", json.dumps(record))
        self._scalars("val", validation or {}, (epoch + 1) * self.iters_per_epoch - 1)

    def step(self, epoch: int, i: int, loss: float, lr: float, extra: dict | None = None,
             grad_norm: float | None = None) -> None:
        if not self.main:
            return
        now, step = time.time(), epoch * self.iters_per_epoch + i
        rate = None
        if self._last is not None and step > self._last[1]:
            rate = (step - self._last[1]) * self.global_batch / max(now - self._last[0], 1e-9)
        self._last = (now, step)
        row = {"epoch": epoch, "iter": i, "step": step, "loss": loss, "lr": lr, "samples_per_s": rate, **(extra or {})}
        if grad_norm is not None:
            row["grad_norm"] = grad_norm
        self._append("metrics.jsonl", json.dumps(row))
        self._scalars("train", {k: v for k, v in row.items() if k not in ("epoch", "iter", "step")}, step)

    def samples(self, epoch: int, records: list) -> None:
        """The sample captions of an epoch, as a Markdown table in TensorBoard's text tab."""
        if self.tb is None or not records:
            return
        rows = "\n".join(f"| {r.image_id} | {' '.join(r.caption.split()).replace('|', '/')} |" for r in records)
        self.tb.add_text("samples", f"epoch {epoch}\n\n| image | caption |\n|---|---|\n{rows}",
                         (epoch + 1) * self.iters_per_epoch - 1)
        self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
            self.tb = None

    def plot(self) -> None:
        path = self.job_dir / "metrics.jsonl"
        if not self.main or not path.exists():
            return
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        steps = [r["step"] for r in rows]
        fig, (ax_loss, ax_lr) = new_figure(2, 1, sharex=True)
        ax_loss.plot(steps, [r["loss"] for r in rows])
        ax_loss.set_ylabel("loss")
        ax_loss.set_title(f"{self.job_id}: training loss and learning rate")
        ax_lr.plot(steps, [r["lr"] for r in rows], color="tab:orange")
        ax_lr.set_ylabel("learning rate")
        ax_lr.set_xlabel("step")
        save_png(fig, self.job_dir / "loss_lr.png")
