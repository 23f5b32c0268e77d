"""What a training job records in its folder, written by rank 0 only:

* ``log.txt``: the full config (JSON, indent 4), then one JSON line per epoch (``epoch``,
  ``train_lr``, ``train_loss``: global averages over processes), as the original;
* ``metrics.jsonl``: one row every ``run.log_freq`` iterations and at the end of each epoch
  (``epoch``, ``iter``, ``step``, rank 0's ``loss``, ``lr``, ``samples_per_s`` over all processes);
* ``loss_lr.png``: loss and LR against the global step, redrawn at the end of each epoch.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from minigpt4.common import dist_utils
from minigpt4.common.plots import new_figure, save_png


class RunLog:
    def __init__(self, job_dir: Path, job_id: str, global_batch: int, iters_per_epoch: int):
        self.job_dir, self.job_id = Path(job_dir), job_id
        self.global_batch, self.iters_per_epoch = global_batch, iters_per_epoch
        self.main = dist_utils.is_main_process()
        self._last = None  # (time, global step) of the last metrics row

    def _append(self, name: str, text: str) -> None:
        if self.main:
            with open(self.job_dir / name, "a", encoding="utf-8") as f:
                f.write(text + "\n")

    def config(self, config: dict) -> None:
        self._append("log.txt", json.dumps(config, indent=4))

    def epoch(self, epoch: int, stats: dict, validation: dict | None = None) -> None:
        record = {"epoch": epoch, **{f"train_{k}": v for k, v in stats.items()}, **(validation or {})}
        self._append("log.txt", json.dumps(record))

    def step(self, epoch: int, i: int, loss: float, lr: float, extra: dict | None = None) -> None:
        if not self.main:
            return
        now, step = time.time(), epoch * self.iters_per_epoch + i
        rate = None
        if self._last is not None and step > self._last[1]:
            rate = (step - self._last[1]) * self.global_batch / max(now - self._last[0], 1e-9)
        self._last = (now, step)
        row = {"epoch": epoch, "iter": i, "step": step, "loss": loss, "lr": lr, "samples_per_s": rate, **(extra or {})}
        self._append("metrics.jsonl", json.dumps(row))

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
