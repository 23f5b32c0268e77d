"""Console logging set-up and the original's ``MetricLogger`` / ``SmoothedValue`` (REFERENCE 6.9),
device-agnostic: meters are synchronised on whatever device the process group uses."""

from __future__ import annotations

import datetime
import logging
import sys
import time
from collections import deque

import torch
import torch.distributed as dist

from minigpt4.common import dist_utils

LOG_FORMAT = "%(asctime)s [%(levelname)s] %(message)s"


class _CurrentStderr(logging.StreamHandler):
    """A console handler that writes to whatever ``sys.stderr`` is when a record is emitted (a plain
    ``StreamHandler`` keeps the stream it was made with, which may be closed by then: a redirected or
    captured stderr)."""

    def __init__(self):
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        """Ignored (``StreamHandler.__init__`` assigns it): records always go to the current stderr."""


def console_logging(level=logging.INFO, fmt: str = LOG_FORMAT, force: bool = False) -> None:
    """Log records of ``level`` and above to the current stderr (the entry points' console)."""
    logging.basicConfig(level=level, format=fmt, handlers=[_CurrentStderr()], force=force)


def setup_logger() -> None:
    """INFO on rank 0, WARNING elsewhere, to the console (as the original)."""
    console_logging(logging.INFO if dist_utils.is_main_process() else logging.WARNING, force=True)


class SmoothedValue:
    """A window of recent values plus a running total/count (for global averages)."""

    def __init__(self, window_size: int = 20, fmt: str | None = None):
        self.deque = deque(maxlen=window_size)
        self.total = 0.0
        self.count = 0
        self.fmt = fmt or "{median:.4f} ({global_avg:.4f})"

    def update(self, value: float, n: int = 1) -> None:
        self.deque.append(value)
        self.count += n
        self.total += value * n

    def synchronize_between_processes(self) -> None:
        """All-reduce count and total (not the window), as the original."""
        if not dist_utils.is_dist_avail_and_initialized():
            return
        device = "cuda" if dist.get_backend() == "nccl" else "cpu"
        t = torch.tensor([self.count, self.total], dtype=torch.float64, device=device)
        dist.barrier()
        dist.all_reduce(t)
        self.count, self.total = int(t[0].item()), t[1].item()

    @property
    def median(self) -> float:
        return torch.tensor(list(self.deque)).median().item()

    @property
    def avg(self) -> float:
        return torch.tensor(list(self.deque), dtype=torch.float32).mean().item()

    @property
    def global_avg(self) -> float:
        return self.total / max(self.count, 1)

    @property
    def max(self) -> float:
        return max(self.deque)

    @property
    def value(self) -> float:
        return self.deque[-1]

    def __str__(self) -> str:
        return self.fmt.format(median=self.median, avg=self.avg, global_avg=self.global_avg, max=self.max, value=self.value)


class MetricLogger:
    def __init__(self, delimiter: str = "\t"):
        self.meters: dict[str, SmoothedValue] = {}
        self.delimiter = delimiter

    def add_meter(self, name: str, meter: SmoothedValue) -> None:
        self.meters[name] = meter

    def update(self, **kwargs) -> None:
        for name, value in kwargs.items():
            if isinstance(value, torch.Tensor):
                value = value.item()
            self.meters.setdefault(name, SmoothedValue()).update(float(value))

    def __str__(self) -> str:
        return self.delimiter.join(f"{name}: {meter}" for name, meter in self.meters.items())

    def global_avg(self) -> str:
        return self.delimiter.join(f"{name}: {meter.global_avg:.4f}" for name, meter in self.meters.items())

    def synchronize_between_processes(self) -> None:
        for meter in self.meters.values():
            meter.synchronize_between_processes()

    def log_every(self, iterable, print_freq: int, header: str = ""):
        """Yield from ``iterable``; log a progress line every ``print_freq`` items and on the last."""
        log = logging.getLogger(__name__)
        total = len(iterable)
        iter_time, data_time = SmoothedValue(fmt="{avg:.4f}"), SmoothedValue(fmt="{avg:.4f}")
        width = len(str(total))
        start = end = time.time()
        for i, obj in enumerate(iterable):
            data_time.update(time.time() - end)
            yield obj
            iter_time.update(time.time() - end)
            if i % print_freq == 0 or i == total - 1:
                eta = datetime.timedelta(seconds=int(iter_time.global_avg * (total - i)))
                fields = [header, f"[{i:>{width}}/{total}]", f"eta: {eta}", str(self), f"time: {iter_time}", f"data: {data_time}"]
                if torch.cuda.is_available():
                    fields.append(f"max mem: {torch.cuda.max_memory_allocated() / 2**20:.0f}")
                log.info(self.delimiter.join(fields))
            end = time.time()
        elapsed = time.time() - start
        log.info(f"{header} Total time: {datetime.timedelta(seconds=int(elapsed))} ({elapsed / max(total, 1):.4f} s / it)")
